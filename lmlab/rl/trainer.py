"""GRPOTrainer: rollouts -> rewards -> group advantages -> mu clipped-surrogate passes, with resume."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmlab.config import ConfigError
from lmlab.errors import CheckpointError, DataError, InputError, MissingFileError, OverwriteError
from lmlab.generate.generate import check_context
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
from lmlab.runs import atomic_write
from lmlab.train import checkpoint as ckpt
from lmlab.train.optimizers import can_fuse

PREFIX = "grpo_ckpt"  # grpo_ckpt_NNNNNN.pt with sha256s in grpo_checkpoints.json
KEEP = 2  # newest GRPO checkpoints kept
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
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.lora = False
        if cfg.lora_rank > 0:
            from lmlab.peft import apply_lora

            apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha,
                       target_modules=["attn.q", "attn.k", "attn.v", "attn.o"])  # fmt: skip
            self.lora = True
        elif cfg.trainable != "all":
            self._freeze_below(int(cfg.trainable.split(":")[1]))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(
                f"no trainable parameters with trainable={cfg.trainable!r}, lora_rank={cfg.lora_rank}; "
                "use trainable=all, last:N or lora_rank > 0"
            )
        # beta = 0 keeps no reference; with LoRA the reference is the model with adapters off
        self.ref = None
        if cfg.beta > 0 and not self.lora:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=can_fuse(self.params)
        )
        device = next(model.parameters()).device.type
        # float32 master weights; bf16 matmuls in rollouts and forwards (AMX / tensor cores)
        self.autocast = torch.autocast(device, torch.bfloat16, enabled=cfg.dtype == "bfloat16")
        warm = max(cfg.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.sampler = torch.Generator().manual_seed(cfg.seed)  # which prompts
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 1)  # which tokens
        self.step_no = 0
        self.history: list[dict[str, Any]] = []
        self.stop_ids = sorted(
            {
                i
                for i in (getattr(tokenizer, "eos_id", None), model.cfg.eos_token_id)
                if i is not None
            }
        )
        self.out = Path(cfg.out_dir)
        self._resumed = False  # load() was called: out_dir may hold this run's files
        self._owns_out = False  # out_dir was checked (and metrics trimmed) before a first write

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
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
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
        idx = torch.randint(
            len(self.task.train), (self.cfg.prompts_per_step,), generator=self.sampler
        )
        return [self.task.train[i] for i in idx.tolist()]

    def step(self) -> dict[str, Any]:
        """One GRPO step: sample, score, then `num_iterations` optimizer passes; returns metrics."""
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.perf_counter()
        rows = self.sample_rows()
        with self.autocast:
            ro = rollout(
                self.model, self.encode(rows), G, cfg.max_new_tokens, temperature=cfg.temperature,
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
            stats = self.optimize(ro, adv.values)
        n_tok = int(ro.lengths.sum())
        rec = {
            "step": self.step_no + 1,
            "reward": float(rewards.mean()),
            "reward_std": float(adv.group_std.mean()),
            **{f"reward/{k}": float(v.nanmean()) for k, v in per_fn.items()},
            "frac_zero_std": adv.frac_zero_std,
            "completion_length": float(ro.lengths.mean()),
            "truncated": float(ro.truncated.float().mean()),
            **stats,
            "lr": self.sched.get_last_lr()[0],
            "rollout_tokens": n_tok,
            "rollout_tok_s": n_tok / max(t_roll, 1e-9),
            "seconds": time.perf_counter() - t0,
            "sample": texts[0][:200],
        }
        self.sched.step()
        self.step_no += 1
        self.history.append(rec)
        return rec

    def optimize(self, ro: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mu passes over the rollouts in micro-batches; loss normalized over the whole batch."""
        cfg = self.cfg
        N, L = ro.completion_mask.shape
        total_tokens = int(ro.completion_mask.sum())
        ref_logps = self._ref_logps(ro) if cfg.beta > 0 else None
        losses, kls, clips, ents = [], [], [], []
        self.model.train()
        for _ in range(cfg.num_iterations):
            self.opt.zero_grad(set_to_none=True)
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
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            losses.append(loss_sum)
        out = {"loss": sum(losses) / len(losses), "clip_frac": sum(clips) / len(clips),
               "entropy": sum(ents) / max(len(ents), 1), "grad_norm": float(gnorm)}  # fmt: skip
        if kls:
            out["kl"] = sum(kls) / len(kls)
        return out

    @torch.no_grad()
    def _ref_logps(self, ro: Rollout) -> torch.Tensor:
        if self.lora:
            from lmlab.peft import set_lora_enabled

            set_lora_enabled(self.model, False)
        ref = self.ref if self.ref is not None else self.model
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
            if self.lora:
                from lmlab.peft import set_lora_enabled

                set_lora_enabled(self.model, True)
        return torch.cat(parts)

    # ---------------------------------------------------------------- loop, eval, state
    def fit(self, steps: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
        """Train until `steps` (default cfg.max_steps) total steps or `cfg.max_minutes` of wall time;
        checkpoints every save_every."""
        steps = self.cfg.max_steps if steps is None else steps
        t0 = time.perf_counter()
        self._claim_out()
        bar = tqdm(total=steps, initial=self.step_no, disable=not progress, desc="grpo")
        log = self.out / METRICS
        while self.step_no < steps:
            rec = self.step()
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(reward=f"{rec['reward']:.2f}", len=f"{rec['completion_length']:.0f}")
            if self.cfg.save_every and self.step_no % self.cfg.save_every == 0:
                self.save()
            if self.cfg.max_minutes and time.perf_counter() - t0 > 60 * self.cfg.max_minutes:
                break
        bar.close()
        return self.history

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

    def state_dict(self) -> dict[str, Any]:
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {
            "model": {k: v for k, v in self.model.state_dict().items() if k in trainable},
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "sampler": self.sampler.get_state(),
            "sample_gen": self.sample_gen.get_state(),
            "rng": ckpt.rng_state(),
            "step": self.step_no,
            "history": json.dumps(self.history),
        }

    def _claim_out(self) -> None:
        """Before the first write to out_dir: refuse a folder holding another GRPO run (unless this
        trainer resumed it) and drop metrics newer than the resumed step, so no step repeats."""
        if self._owns_out:
            return
        if not self._resumed:
            check_out_dir(self.out, resume=False)
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / METRICS
        if log.is_file():
            keep = [r for r in _records(log) if r.get("step", 0) <= self.step_no]
            atomic_write(log, "".join(json.dumps(r) + "\n" for r in keep))
        self._owns_out = True

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write the trainable weights, optimizer, schedule, RNGs and step: to `path`,
        or by default as out_dir/grpo_ckpt_<step>.pt with its sha256 (the newest 2 are kept)."""
        if path is not None:
            return ckpt.save(path, self.state_dict())
        self._claim_out()
        return ckpt.save_step(self.out, self.state_dict(), self.step_no, KEEP, PREFIX)

    def load(self, path: str | Path | None = None) -> None:
        """Continue exactly where `save` left off (same model, config and task); by default from
        the newest out_dir checkpoint whose checksum matches (an older one if it is damaged)."""
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise MissingFileError(f"no GRPO checkpoint at {path}; check the path")
            state = ckpt.load(path)
        else:
            check_out_dir(self.out, resume=True)
            path, state = ckpt.load_latest(self.out, PREFIX)
        missing = set(state["model"]) - set(self.model.state_dict())
        if missing:
            raise CheckpointError(
                f"checkpoint {path} has weights this model lacks: {sorted(missing)[:3]}"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.sampler.set_state(state["sampler"])
        self.sample_gen.set_state(state["sample_gen"])
        ckpt.set_rng_state(state["rng"])
        self.step_no = int(state["step"])
        self.history = json.loads(state["history"])
        self._resumed, self._owns_out = True, False  # the next fit/save trims metrics to this step


def check_out_dir(out: str | Path, resume: bool) -> None:
    """Refuse a rerun into a folder holding a GRPO run (`OverwriteError`) unless resuming, and a
    resume from a folder without a GRPO checkpoint (`MissingFileError`)."""
    out = Path(out)
    if resume and not ckpt.exists(out, PREFIX):
        raise MissingFileError(
            f"no GRPO checkpoint in {out}; check out_dir, or drop --resume to start a new run"
        )
    if not resume and (ckpt.exists(out, PREFIX) or (out / METRICS).is_file()):
        raise OverwriteError(
            f"{out} already holds a GRPO run (checkpoint or {METRICS}); continue it with --resume "
            "(GRPOTrainer.load()), or choose another out_dir"
        )


def _records(log: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a metrics log (a line cut off by a kill is dropped)."""
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def reward_names(funcs: Sequence[RewardFn]) -> list[str]:
    return [reward_name(f) for f in funcs]
