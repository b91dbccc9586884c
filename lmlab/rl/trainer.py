"""GRPOTrainer: rollouts -> rewards -> group advantages -> mu clipped-surrogate passes, as the step
of the one training core (`lmlab.train.trainer.Trainer`), which owns the optimizer, the schedule,
checkpoints with exact resume (incl. the rollout RNG), metrics, progress and the run folder."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmlab import checkpoints as ckpt
from lmlab.config import ConfigError
from lmlab.errors import CheckpointError, DataError, InputError, MissingFileError, OverwriteError
from lmlab.generate.generate import check_context
from lmlab.generate.quantize import quantize, requantize_
from lmlab.rl.config import GRPOConfig
from lmlab.rl.grpo import (
    aggregate,
    clip_fraction,
    group_advantages,
    k3_kl,
    policy_loss,
    token_logprobs,
)
from lmlab.rl.rewards import RewardFn, combine_rewards, reward_name
from lmlab.rl.rollout import Rollout, rollout
from lmlab.rl.tasks.base import RLTask
from lmlab.train.trainer import Trainer

PREFIX = ckpt.PREFIX  # GRPO runs keep the core's checkpoints: ckpt_NNNNNN.pt, checkpoints.json
METRICS = "metrics.jsonl"


class GRPOTrainer:
    """Group Relative Policy Optimization on `model` with `task`'s prompts and reward functions."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        cfg: GRPOConfig,
        task: RLTask,
        reward_funcs: Sequence[RewardFn] | None = None,
    ) -> None:
        cfg.validate()
        if not task.train:
            raise DataError(
                f"the task {cfg.task!r} has no training rows; give it data (see its options)"
            )
        self.model, self.tokenizer, self.cfg, self.task = model, tokenizer, cfg, task
        self.reward_funcs = list(reward_funcs or task.reward_funcs)
        self.reward_weights = cfg.reward_weights or (
            task.reward_weights if reward_funcs is None else None
        )
        self.lora = False
        if cfg.lora_rank > 0:
            from lmlab.peft import apply_lora

            apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha,
                       target_modules=["attn.q", "attn.k", "attn.v", "attn.o"])  # fmt: skip
            self.lora = True
        elif cfg.trainable != "all":
            self._freeze_below(int(cfg.trainable.split(":")[1]))
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                f"no trainable parameters with trainable={cfg.trainable!r}, lora_rank={cfg.lora_rank}; "
                "use trainable=all, last:N or lora_rank > 0"
            )
        # the core: AdamW over the trainable parameters, the schedule, checkpoints, metrics; a
        # wall-time limit is a callback at each step (GRPO has no evaluation of its own there)
        tcfg = cfg.train
        if cfg.max_minutes:
            tcfg = dataclasses.replace(tcfg, eval_interval=1)
        self.core = Trainer(model, tcfg, _GRPOStep(self), [self._out_of_time])  # on its device
        # beta = 0 keeps no reference; with LoRA the reference is the model with adapters off
        self.ref = None
        if cfg.beta > 0 and not self.lora:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.autocast = self.core.autocast  # float32 master weights, bf16 matmuls when asked
        self._sampler_copy: tuple[int, torch.nn.Module] | None = None  # (step, quantized copy)
        # which tokens: on the model's device (sampling draws there)
        self.sample_gen = torch.Generator(self.core.dist.device).manual_seed(tcfg.seed + 1)
        self.stop_ids = sorted(
            {
                i
                for i in (getattr(tokenizer, "eos_id", None), model.cfg.eos_token_id)
                if i is not None
            }
        )
        self.out = Path(tcfg.out_dir)
        self._t0 = time.perf_counter()
        self._claimed = False  # out_dir was checked, or this trainer resumed the run there

    @property
    def step_no(self) -> int:
        """Optimizer steps taken (restored by `load`)."""
        return self.core.step

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metric records of every step so far (one per step with log_interval = 1)."""
        return self.core.history

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.core.optimizer

    # ---------------------------------------------------------------- prompts
    def _freeze_below(self, n: int) -> None:
        blocks = self.model.blocks
        if not 1 <= n <= len(blocks):
            raise ConfigError(
                f"trainable=last:{n} but the model has {len(blocks)} blocks; use 1..{len(blocks)}"
            )
        self.model.requires_grad_(False)
        for blk in list(blocks)[-n:]:
            blk.requires_grad_(True)
        if self.model.ln_final is not None:
            self.model.ln_final.requires_grad_(True)

    def prompt_text(self, row: dict[str, Any]) -> str:
        """The text the model sees: the instruction + problem, in the chat template when asked."""
        system = (
            self.cfg.system_prompt if self.cfg.system_prompt is not None else self.task.instruction
        )
        template = getattr(self.tokenizer, "chat_template", None)
        if self.cfg.chat and template:
            msgs = [{"role": "system", "content": system}] if system else []
            for q, a in self.task.shots:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": row["prompt"]})
            return self.tokenizer.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=False
            )
        shots = "".join(f"{q}\n{a}\n" for q, a in self.task.shots)
        return f"{system}\n{shots}{row['prompt']}\n" if system else shots + row["prompt"]

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        ids = [self.tokenizer.encode(self.prompt_text(r)) for r in rows]
        for r, p in zip(rows, ids, strict=True):
            try:
                check_context(self.model, len(p), self.cfg.max_new_tokens)
            except ValueError as e:
                raise InputError(f"{e} (prompt: {str(r['prompt'])[:60]!r})") from None
        return ids

    def decode(self, completions: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(c, skip_special=True) for c in completions]

    def columns(self, rows: Sequence[dict[str, Any]], repeat: int) -> dict[str, list[Any]]:
        keys = [k for k in rows[0] if k != "prompt"]
        return {k: [r[k] for r in rows for _ in range(repeat)] for k in keys}

    # ---------------------------------------------------------------- one step
    def sample_rows(self) -> list[dict[str, Any]]:
        """This step's prompts, drawn from the core's batch generator (checkpointed)."""
        idx = torch.randint(
            len(self.task.train), (self.cfg.prompts_per_step,), generator=self.core.generator
        )
        return [self.task.train[i] for i in idx.tolist()]

    def train_step(self) -> dict[str, Any]:
        """Sample, score, then `num_iterations` optimizer passes: the metrics of one core step
        (with "loss", and "tokens" for the core's tokens/s)."""
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.perf_counter()
        rows = self.sample_rows()
        sampler, precision = self.sampler()
        with precision:
            ro = rollout(
                sampler, self.encode(rows), G, cfg.max_new_tokens, temperature=cfg.temperature,
                top_p=cfg.top_p, top_k=cfg.top_k, stop_ids=self.stop_ids,
                mask_truncated=cfg.mask_truncated_completions, generator=self.sample_gen,
                compile=cfg.compile,
            )  # fmt: skip
        t_roll = time.perf_counter() - t0
        texts = self.decode(ro.completions)
        prompts = [r["prompt"] for r in rows for _ in range(G)]
        rewards, per_fn = combine_rewards(
            self.reward_funcs, prompts, texts, self.reward_weights, **self.columns(rows, G)
        )
        adv = group_advantages(rewards, G, cfg.scale_rewards)
        with self.autocast:
            stats = self.optimize(ro, adv.values.to(self.core.dist.device))
        n_tok = int(ro.lengths.sum())
        return {
            "loss": stats.pop("loss"),
            "reward": float(rewards.mean()),
            "reward_std": float(adv.group_std.mean()),
            **{f"reward/{k}": float(v.nanmean()) for k, v in per_fn.items()},
            "frac_zero_std": adv.frac_zero_std,
            "completion_length": float(ro.lengths.mean()),
            "truncated": float(ro.truncated.float().mean()),
            **stats,
            "rollout_tokens": n_tok,
            "rollout_tok_s": n_tok / max(t_roll, 1e-9),
            "tokens": n_tok,
        }

    def sampler(self) -> tuple[torch.nn.Module, contextlib.AbstractContextManager]:
        """The model that samples rollouts and the precision context it runs in
        (`rollout_precision`): the policy, the policy under bf16 autocast, or a weight-only
        quantized copy of it, re-quantized once per optimizer step into the same tensors (the
        cost counts as rollout time)."""
        kind = self.cfg.rollout_precision
        if kind == "policy":
            return self.model, self.autocast
        if kind == "bf16":
            return self.model, torch.autocast(self.core.dist.device.type, dtype=torch.bfloat16)
        if self._sampler_copy is None:  # its float tensors (embeddings, norms) are the policy's
            shared = {id(p): p for p in self.model.parameters()}
            plain = copy.deepcopy(self.model, memo=shared).eval()
            self._sampler_copy = (self.core.step, quantize(plain, kind=kind))
        elif self._sampler_copy[0] != self.core.step:  # into the same tensors: a compiled
            requantize_(self._sampler_copy[1], self.model)  # rollout replays, no recompile
            self._sampler_copy = (self.core.step, self._sampler_copy[1])
        return self._sampler_copy[1], contextlib.nullcontext()

    def step(self) -> dict[str, Any]:
        """One GRPO step outside `fit` (nothing written to out_dir); returns its record."""
        core = self.core
        lr = core.schedule.set(core.step)
        out = self.train_step()
        out.pop("tokens")
        core.step += 1
        rec = {"step": core.step, "loss": out.pop("loss"), "lr": lr, **out}
        core.history.append(rec)
        return rec

    def optimize(self, ro: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mu passes over the rollouts in micro-batches; loss normalized over the whole batch."""
        cfg = self.cfg
        N, L = ro.completion_mask.shape
        total_tokens = int(ro.completion_mask.sum())
        ref_logps = self._ref_logps(ro) if cfg.beta > 0 else None
        if cfg.num_iterations > 1 and cfg.rollout_precision != "policy":
            ro.logps = self._ref_logps(ro, self.model)  # ratios against the policy, not the sampler
        losses, kls, clips, ents, norms = [], [], [], [], []
        self.model.train()
        for _ in range(cfg.num_iterations):
            loss_sum = 0.0
            for s in range(0, N, cfg.micro_batch_size):
                sl = slice(s, s + cfg.micro_batch_size)
                mask = ro.completion_mask[sl]
                logp, ent = token_logprobs(
                    self.model, ro.tokens[sl], ro.attention_mask[sl], L, cfg.temperature, True,
                    prefix=ro.prefix,
                )  # fmt: skip
                # mu = 1: the sampling policy is the current one, ratio = 1 with the right gradient
                old = logp.detach() if cfg.num_iterations == 1 else ro.logps[sl]
                per_tok = policy_loss(logp, old, advantages[sl], cfg.epsilon, cfg.epsilon_high)
                if ref_logps is not None:
                    kl = k3_kl(logp, ref_logps[sl])
                    per_tok = per_tok + cfg.beta * kl
                    kls.append(float((kl.detach() * mask).sum() / mask.sum().clamp(min=1)))
                loss = aggregate(per_tok, mask, cfg.loss_type, cfg.max_new_tokens, N, total_tokens)
                loss.backward()
                loss_sum += float(loss.detach())
                clips.append(
                    clip_fraction(logp, old, advantages[sl], mask, cfg.epsilon, cfg.epsilon_high)
                )
                if mask.any():
                    ents.append(float(ent[mask.bool()].mean()))
            norm = self.core.optimizer_step()  # clip at train.grad_clip, AdamW step, zero grads
            if norm is not None:
                norms.append(float(norm))
            losses.append(loss_sum)
        out = {"loss": sum(losses) / len(losses), "clip_frac": sum(clips) / len(clips),
               "entropy": sum(ents) / max(len(ents), 1)}  # fmt: skip
        if norms:
            out["grad_norm"] = norms[-1]
        if kls:
            out["kl"] = sum(kls) / len(kls)
        return out

    @torch.no_grad()
    def _ref_logps(self, ro: Rollout, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Log-probs of the rollout's completions under the reference model (LoRA: the policy
        with its adapters off), or under `model` as it is."""
        lora_off = self.lora and model is None
        if lora_off:
            from lmlab.peft import set_lora_enabled

            set_lora_enabled(self.model, False)
        ref = model if model is not None else self.ref if self.ref is not None else self.model
        was = ref.training
        ref.eval()
        try:
            parts = [
                token_logprobs(ref, ro.tokens[s : s + self.cfg.micro_batch_size],
                               ro.attention_mask[s : s + self.cfg.micro_batch_size],
                               ro.n_completion, self.cfg.temperature, prefix=ro.prefix)[0]
                for s in range(0, ro.tokens.shape[0], self.cfg.micro_batch_size)
            ]  # fmt: skip
        finally:
            ref.train(was)
            if lora_off:
                from lmlab.peft import set_lora_enabled

                set_lora_enabled(self.model, True)
        return torch.cat(parts)

    # ---------------------------------------------------------------- loop, eval, state
    def fit(self, steps: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
        """Train until `steps` (default train.max_steps) total steps or `max_minutes` of wall time,
        checkpointing every train.checkpoint_interval steps and at the end; returns the history."""
        self._claim_out()
        core = self.core
        saved = core.cfg.max_steps, core.cfg.progress
        core.cfg.max_steps = saved[0] if steps is None else steps
        core.cfg.progress = progress
        self._t0 = time.perf_counter()
        try:
            core.fit()
        finally:
            core.cfg.max_steps, core.cfg.progress = saved
        return self.history

    def _out_of_time(self, core: Trainer, rec: dict[str, Any]) -> bool:
        return (
            bool(self.cfg.max_minutes)
            and time.perf_counter() - self._t0 > 60 * self.cfg.max_minutes
        )

    @torch.no_grad()
    def evaluate(
        self, rows: Sequence[dict[str, Any]] | None = None, n_samples: int = 4
    ) -> dict[str, Any]:
        """Greedy completions of held-out rows: mean of each reward function, plus a few samples."""
        rows = list(self.task.test[: self.cfg.eval_size] if rows is None else rows)
        max_new = self.cfg.eval_max_new_tokens or self.cfg.max_new_tokens
        texts: list[str] = []
        bs = self.cfg.eval_batch_size
        for s in tqdm(range(0, len(rows), bs), desc="eval", leave=False):
            with self.autocast:
                ro = rollout(self.model, self.encode(rows[s : s + bs]), 1, max_new,
                             temperature=0.0, stop_ids=self.stop_ids)  # fmt: skip
            texts += self.decode(ro.completions)
        _, per_fn = combine_rewards(
            self.reward_funcs, [r["prompt"] for r in rows], texts, self.reward_weights,
            **self.columns(rows, 1),
        )  # fmt: skip
        out: dict[str, Any] = {k: float(v.nanmean()) for k, v in per_fn.items()}
        out["samples"] = [
            {"prompt": r["prompt"], "answer": r["answer"], "completion": t}
            for r, t in zip(rows[:n_samples], texts[:n_samples], strict=True)
        ]
        return out

    def _claim_out(self) -> None:
        """Before the first write to out_dir: refuse a folder holding another run unless this
        trainer resumed it."""
        if not self._claimed:
            check_out_dir(self.out, resume=False)
            self._claimed = True

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint last written or resumed from."""
        return self.core.ckpt_path

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write the weights, optimizer, schedule, RNGs, step and GRPO settings: to
        `path`, or by default as out_dir/ckpt_<step>.pt with its sha256 (train.keep_checkpoints kept)."""
        if path is not None:
            return ckpt.save(path, self.core.state_dict())
        self._claim_out()
        self.core.save_checkpoint()
        return self.core.ckpt_path

    def load(self, path: str | Path | None = None) -> None:
        """Continue exactly where `save` left off: same model, task and settings (a changed setting
        is refused, as with `lmlab train --resume`); by default from the newest out_dir checkpoint
        whose checksum matches (an older one if it is damaged)."""
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise MissingFileError(f"no GRPO checkpoint at {path}; check the path")
            state = ckpt.load(path)
        else:
            check_out_dir(self.out, resume=True)
            ckpt.clean_tmp(self.out)
            path, state = ckpt.load_latest(self.out, PREFIX)
        check_settings(self.cfg, state.get("data", {}), path)  # before anything is loaded
        self.core.load_checkpoint(path, state)
        self._claimed = True


class _GRPOStep:
    """What GRPO supplies to the training core: its whole step and its state (rollout RNG,
    settings); the core's generator draws the prompts."""

    name = "grpo"

    def __init__(self, trainer: GRPOTrainer) -> None:
        self.trainer = trainer

    def train_step(self, core: Trainer) -> dict[str, Any]:
        return self.trainer.train_step()

    def state_dict(self) -> dict[str, Any]:
        tr = self.trainer
        return {"sample_gen": tr.sample_gen.get_state(), "grpo": tr.cfg.settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_settings(self.trainer.cfg, state, self.trainer.out)  # also when train.resume loads
        self.trainer.sample_gen.set_state(state["sample_gen"])


def check_settings(cfg: GRPOConfig, state: dict[str, Any], where: str | Path) -> None:
    """Refuse to resume from GRPO task `state` (a checkpoint's "data") when it is not a GRPO
    run's, or when a GRPO setting differs from the checkpoint's (`CheckpointError`)."""
    if "grpo" not in state:
        raise CheckpointError(
            f"{where} is not a GRPO checkpoint (it has no GRPO settings); resume it with "
            "lmlab train --resume, or choose the out_dir of a GRPO run"
        )
    changed = cfg.resume_changes(state["grpo"])
    if changed:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
        raise CheckpointError(
            f"cannot resume from {where}: GRPO settings differ from the checkpoint's ({listed}); "
            "resume with the checkpoint's values, or start a new run in another train.out_dir"
        )


def check_out_dir(out: str | Path, resume: bool) -> None:
    """Refuse a rerun into a folder holding a run (`OverwriteError`) unless resuming, and a
    resume from a folder without a checkpoint (`MissingFileError`)."""
    out = Path(out)
    if resume and not ckpt.exists(out, PREFIX):
        raise MissingFileError(
            f"no GRPO checkpoint in {out}; check out_dir (--train.out_dir), or drop --resume to "
            "start a new run"
        )
    if not resume and (ckpt.exists(out, PREFIX) or (out / METRICS).is_file()):
        raise OverwriteError(
            f"{out} already holds a GRPO run or another training run (checkpoint or {METRICS}); "
            "continue it with --resume (GRPOTrainer.load()), or choose another --train.out_dir"
        )


def reward_names(funcs: Sequence[RewardFn]) -> list[str]:
    return [reward_name(f) for f in funcs]
