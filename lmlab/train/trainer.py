"""The one training core: `Trainer(model, cfg, task).fit()` serves every kind of training.

Interface (what other modules code against):

    Trainer(model, cfg: TrainConfig, task, callbacks=()) -> .fit() -> history (list of records)
        task: a `lmlab.train.task.Task` (batch / count / loss, optional evaluate, param_groups,
              train_step, state_dict...; see that module), or a data source with `get_batch`
              (wrapped in `LMTask`: language modelling, what `lmlab train` runs).
        callbacks: callback(trainer, record) at each evaluation; may add keys; True stops training.
    trainer.model / .net (wrapped, maybe compiled) / .optimizer / .schedule / .generator / .step
    trainer.optimizer_step()   clip, step, zero_grad -> grad norm or None (for `train_step` tasks)
    trainer.evaluate()         the task's evaluation in eval mode under no_grad ({} without one)
    trainer.shard(batch)       a global batch -> this rank's slice on its device
    trainer.autocast           the bf16 autocast context (off for float32)

The core owns: AdamW groups (fused where possible) or a registered optimizer (Muon), the one
schedule (`lmlab.train.schedule`), gradient accumulation, clipping, autocast, torch.compile,
DDP/FSDP, evaluation cadence (HellaSwag every `eval_hellaswag_every` steps joins the
evaluation record: `lmlab.train.hellaswag`), atomic checksummed checkpoints with exact resume
(model, optimizer, schedule, RNG streams, the batch generator, task state, history), metrics.jsonl + TensorBoard
(records past the resumed step are dropped), progress (loss, tokens/s, ETA), MFU, and the run
folder (`cfg.out_dir`; "" keeps nothing on disk; an existing run is refused unless `cfg.resume`).

Each step draws the *global* micro-batches from one seeded generator (identical on every rank),
and each rank trains on its slice, so N processes follow the curve of one. The loss is the sum
over the global batch divided by its count (tokens with labels != -100 for language modelling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmlab import checkpoints as ckpt
from lmlab.config import ConfigError
from lmlab.errors import CheckpointError, LmlabError, OverwriteError
from lmlab.train import distributed as dist
from lmlab.train import optimizers
from lmlab.train.config import TrainConfig
from lmlab.train.lm import LMTask
from lmlab.train.logging import MetricsLog, Progress, peak_flops
from lmlab.train.plots import plot_loss
from lmlab.train.schedule import Schedule
from lmlab.train.task import is_task, to_device


class TrainingError(LmlabError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where and what to try."""


class DataSource(Protocol):
    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# callback(trainer, record) at each evaluation; may add keys to `record`; returning True stops training
Callback = Callable[["Trainer", dict[str, Any]], bool | None]


class Trainer:
    """Trains `model` on `task` as `cfg` says; `fit()` returns the history of logged records."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, task: Any, callbacks: list[Callback] = ()
    ) -> None:
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.task = task if is_task(task) else LMTask(task)
        self.data = getattr(self.task, "data", task)  # the data source of language modelling
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = dist.setup(cfg.device)
        if cfg.batch_size % self.dist.world:
            raise ConfigError(
                f"batch_size={cfg.batch_size} must be divisible by the {self.dist.world} processes"
            )
        # the plain module: state dicts and evaluation helpers
        self.model = model.to(self.dist.device)
        self.wrapped = dist.wrap(self.model, self.dist, cfg.parallel)
        self.optimizer = self._build_optimizer()
        self.schedule = Schedule(self.optimizer, cfg)
        self.net = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.ckpt_path: Path | None = None  # the checkpoint last written or resumed from
        # training batches, same on all ranks
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.autocast = torch.autocast(
            self.dist.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"
        )
        if self.dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _build_optimizer(self) -> torch.optim.Optimizer:
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(
                "nothing to train: every parameter is frozen; unfreeze some (e.g. train_blocks, "
                "or apply LoRA/PEFT) before training"
            )
        groups = (
            self.task.param_groups(self.model, self.cfg)
            if hasattr(self.task, "param_groups")
            else None
        )
        if groups is None:
            opt = optimizers.build(self.model, self.cfg)
        elif self.cfg.optimizer != "adamw":
            raise ConfigError(
                f"optimizer={self.cfg.optimizer!r}: this kind of training sets its own parameter "
                "groups, which only optimizer='adamw' takes; use adamw"
            )
        else:
            opt = optimizers.adamw_groups(groups, self.cfg)
        return opt

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically."""
        if self.cfg.parallel == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model_sd, optim_sd = get_state_dict(
                self.model,
                self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        else:
            model_sd, optim_sd = self._model_state(), self.optimizer.state_dict()
        state = {
            "step": self.step,
            "model": model_sd,
            "optimizer": optim_sd,
            "schedule": self.schedule.state_dict(),
            "rng": dist.all_gather_object(ckpt.rng_state(), self.dist),
            "generator": self.generator.get_state(),
            "train_config": self.cfg.to_dict(),
            "model_config": _model_config(self.model),
            "history": self.history,
        }
        if hasattr(self.task, "state_dict"):
            state["data"] = self.task.state_dict()
        return state

    def save_checkpoint(self) -> None:
        """Write `out_dir/ckpt_<step>.pt` and its manifest entry, keeping `keep_checkpoints`."""
        if self.out_dir is None:
            return
        state = self.state_dict()
        self.ckpt_path = self.out_dir / ckpt.step_name(self.step)
        if self.dist.main:
            ckpt.save_step(self.out_dir, state, self.step, self.cfg.keep_checkpoints)
        dist.barrier(self.dist)

    def _frozen_names(self) -> set[str]:
        """State-dict names of the parameters that do not train (fixed for the whole run)."""
        named = self.model.named_parameters(remove_duplicate=False)
        return {n for n, p in named if not p.requires_grad}

    def _model_state(self) -> dict[str, torch.Tensor]:
        """The model's state without its frozen parameters: they never change, and with PEFT
        they are nearly all the weights (a LoRA checkpoint of a 135M model stays a few MB)."""
        frozen = self._frozen_names()
        return {k: v for k, v in self.model.state_dict().items() if k not in frozen}

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore a training state written by `save_checkpoint`; the model config must match and
        every setting must equal the checkpoint's unless it is in `cfg.allow_change`."""
        state = ckpt.load(path) if state is None else state
        ckpt.check_settings(self.cfg.resume_changes(state["train_config"]), path)
        ckpt.check_model_config(state["model_config"], _model_config(self.model), path)
        if self.cfg.parallel == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(
                self.model,
                self.optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            frozen = self._frozen_names()
            missing, unexpected = self.model.load_state_dict(state["model"], strict=not frozen)
            if unexpected or set(missing) - frozen:
                raise CheckpointError(
                    f"cannot resume from {path}: its weights do not fit this model (missing "
                    f"{sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]}); set up the "
                    "model (LoRA/PEFT, frozen blocks) as in the run that wrote it"
                )
            self.optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self.generator.set_state(state["generator"])
        if "data" in state and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(state["data"])
        self.step, self.history = state["step"], list(state["history"])
        self.ckpt_path = Path(path)

    # ------------------------------------------------------------------ steps and evaluation
    def shard(self, batch: Any) -> Any:
        """This rank's slice of a global batch, on this rank's device."""
        return to_device(batch, self.dist.device, self.dist.rank, self.dist.world)

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip the gradients (`grad_clip` > 0), step the optimizer and clear the gradients;
        returns the gradient norm before clipping (None when not clipping)."""
        norm = None
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _accumulated_step(self) -> tuple[torch.Tensor, int]:
        """`grad_accum` micro-batches, backward on each, one optimizer step: (mean loss, tokens)."""
        cfg, d, task = self.cfg, self.dist, self.task
        micro = [task.batch("train", cfg.batch_size, self.generator) for _ in range(cfg.grad_accum)]
        n = max(sum(task.count(b) for b in micro), 1)
        tokens = sum(task.tokens(b) for b in micro) if hasattr(task, "tokens") else 0
        loss = torch.zeros((), device=d.device)
        for i, b in enumerate(micro):
            with dist.grad_sync(self.wrapped, i == len(micro) - 1):
                with self.autocast:
                    part = task.loss(self.net, self.shard(b))
                (part * (d.world / n)).backward()
            loss += part.detach()
        self.optimizer_step()
        return dist.all_reduce_sum(loss, d) / n, tokens

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation (nothing when it has none), in eval mode."""
        if not hasattr(self.task, "evaluate"):
            return {}
        self.net.eval()
        try:
            with torch.no_grad():
                return self.task.evaluate(self)
        finally:
            self.net.train()

    # ------------------------------------------------------------------ the loop
    def _start(self) -> None:
        """Resume from the newest good checkpoint, or refuse a folder that holds a run."""
        cfg, d = self.cfg, self.dist
        if self.step or self.ckpt_path is not None:
            return  # continuing: this trainer already trained, or loaded a checkpoint
        if self.out_dir is None:
            if cfg.resume:
                raise ConfigError("resume=True needs an out_dir to resume from; set out_dir")
        else:
            ckpt.clean_tmp(self.out_dir) if d.main and self.out_dir.is_dir() else None
            if cfg.resume:
                self.load_checkpoint(*ckpt.load_latest(self.out_dir, warn=d.main))
                return
            if ckpt.exists(self.out_dir):
                raise OverwriteError(
                    f"{self.out_dir} holds checkpoints of an earlier run; pass --resume to "
                    "continue it, or choose another out_dir"
                )
        torch.manual_seed(cfg.seed + d.rank)

    def fit(self) -> list[dict[str, Any]]:
        """Train until `max_steps` (or a callback says stop); returns the history of records."""
        cfg, d, task = self.cfg, self.dist, self.task
        self._start()
        hellaswag = self._hellaswag()
        log = MetricsLog(
            self.out_dir or ".", d.main and self.out_dir is not None, cfg.tensorboard, self.step
        )
        bar = Progress(cfg.max_steps, self.step, cfg.progress and d.main, _name(task), d.main)
        mfu = hasattr(task, "flops_per_token")
        peak = (cfg.peak_flops or peak_flops(d.device, cfg.dtype)) * d.world if mfu else 0.0
        self.net.train()
        run_loss = torch.zeros((), device=d.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=d.device)
        t_log, tokens, steps_since, stop = time.perf_counter(), 0, 0, False
        extra: dict[str, float] = {}
        try:
            while self.step < cfg.max_steps and not stop:
                lr = self.schedule.set(self.step)
                if hasattr(task, "train_step"):
                    out = dict(task.train_step(self))
                    loss = torch.as_tensor(out.pop("loss"), device=d.device).float()
                    tokens += int(out.pop("tokens", 0))
                    for k, v in out.items():  # mean of each metric over the logged steps
                        extra[k] = extra.get(k, 0.0) + float(v)
                else:
                    loss, n_tok = self._accumulated_step()
                    tokens += n_tok
                first_bad = torch.where(  # 1-based step number, like the logs
                    (first_bad < 0) & ~torch.isfinite(loss), self.step + 1, first_bad
                )
                run_loss += loss
                self.step += 1
                steps_since += 1
                last = self.step == cfg.max_steps
                due_eval = (
                    (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                    or (cfg.eval_first and self.step == 1)
                    or last
                )
                due_hellaswag = hellaswag is not None and (
                    self.step % cfg.eval_hellaswag_every == 0 or last
                )
                due_ckpt = (
                    cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0
                ) or last
                if self.step % cfg.log_interval == 0 or due_eval or due_ckpt:
                    self._check_finite(first_bad, lr)
                    dt = time.perf_counter() - t_log
                    rec = {"step": self.step, "loss": float(run_loss) / steps_since, "lr": lr}
                    rec.update({k: v / steps_since for k, v in extra.items()})
                    if tokens:
                        rec["tok_s"] = tokens / dt
                        fpt = task.flops_per_token(self.model) if peak else 0.0
                        rec["mfu"] = tokens * fpt / dt / peak if peak else 0.0
                    self.history.append(rec)
                    log.write(rec)
                    bar.update(steps_since, rec["loss"], rec.get("tok_s"), rec.get("mfu"))
                    run_loss.zero_()
                    extra.clear()
                    t_log, tokens, steps_since = time.perf_counter(), 0, 0
                if due_eval or due_hellaswag:
                    rec = {"step": self.step, **(self.evaluate() if due_eval else {})}
                    if due_hellaswag:
                        rec.update(hellaswag(self))
                    for cb in self.callbacks if due_eval else ():
                        stop = bool(cb(self, rec)) or stop
                    if len(rec) > 1:
                        self.history.append(rec)
                        log.write(rec)
                        bar.write(
                            " ".join(
                                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in rec.items()
                                if isinstance(v, int | float | str)
                            )
                        )
                    t_log = time.perf_counter()  # evaluation time is not training throughput
                if due_ckpt or stop:
                    self.save_checkpoint()
        finally:
            bar.close()
            log.close()
        if d.main and self.history and self.out_dir is not None:
            plot_loss(
                self.history, self.out_dir / "loss.png", title=f"{_title(self.model)} training"
            )
        return self.history

    def _hellaswag(self) -> Callable[[Trainer], dict[str, float]] | None:
        """The HellaSwag evaluation `cfg.eval_hellaswag_every` asks for, set up before step 1."""
        if not self.cfg.eval_hellaswag_every:
            return None
        from lmlab.train.hellaswag import HellaSwagEval

        return HellaSwagEval.from_config(self.cfg, self.data, self.model, self.dist.main)

    def _check_finite(self, first_bad: torch.Tensor, lr: float) -> None:
        bad = int(first_bad)
        if bad < 0:
            return
        if self.ckpt_path is not None:
            kept = f"the last good checkpoint is {self.ckpt_path} (not overwritten)"
            then = "continue from it with --resume --allow-change SETTING (e.g. --allow-change lr)"
        else:
            kept, then = "no checkpoint was written yet", "start again"
        raise TrainingError(
            f"loss became non-finite (nan/inf) at step {bad}; {kept}. Try a lower lr (now "
            f"{lr:.3g}), more warmup_steps, grad_clip > 0 or dtype=float32, then {then}"
        )


def _model_config(model: nn.Module) -> dict[str, Any]:
    """The lmlab model config of `model` (or of the model it wraps) as a dict; {} for others."""
    for m in (model, getattr(model, "model", None)):
        cfg = getattr(m, "cfg", None)
        if hasattr(cfg, "to_dict"):
            return cfg.to_dict()
    return {}


def _title(model: nn.Module) -> str:
    return _model_config(model).get("name") or type(model).__name__


def _name(task: Any) -> str:
    return getattr(task, "name", "train")
