"""`Trainer(model, cfg, data).fit()`: the training loop, short enough to read in one sitting.

Each step draws the *global* micro-batches from one seeded generator (identical on every rank),
and each rank trains on its slice, so N processes follow the curve of one. The loss is the sum
of token losses over the global batch divided by its number of counted tokens (labels -100 skip).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmlab.config import ConfigError
from lmlab.data.tokens import IGNORE_INDEX
from lmlab.errors import LmlabError, OverwriteError
from lmlab.train import checkpoint as ckpt
from lmlab.train import distributed as dist
from lmlab.train import optimizers
from lmlab.train.config import TrainConfig
from lmlab.train.logging import MetricsLog, Progress, flops_per_token, peak_flops
from lmlab.train.plots import plot_loss
from lmlab.train.schedule import Schedule


class TrainingError(LmlabError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where and what to try."""


class DataSource(Protocol):
    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# callback(trainer, record) at each evaluation; may add keys to `record`; returning True stops training
Callback = Callable[["Trainer", dict[str, Any]], bool | None]


class Trainer:
    """Trains `model` on `data` as `cfg` says; `fit()` returns the history of logged records."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, data: DataSource, callbacks: list[Callback] = ()
    ) -> None:
        self.cfg, self.data, self.callbacks = cfg, data, list(callbacks)
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
        self.optimizer = optimizers.build(self.model, cfg)
        self.schedule = Schedule(self.optimizer, cfg)
        self.net = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self.out_dir = Path(cfg.out_dir)
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
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        state = {
            "step": self.step,
            "model": model_sd,
            "optimizer": optim_sd,
            "schedule": self.schedule.state_dict(),
            "rng": dist.all_gather_object(ckpt.rng_state(), self.dist),
            "generator": self.generator.get_state(),
            "train_config": self.cfg.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "history": self.history,
        }
        if hasattr(self.data, "state_dict"):
            state["data"] = self.data.state_dict()
        return state

    def save_checkpoint(self) -> None:
        """Write `out_dir/ckpt_<step>.pt` and its manifest entry, keeping `keep_checkpoints`."""
        state = self.state_dict()
        self.ckpt_path = self.out_dir / ckpt.step_name(self.step)
        if self.dist.main:
            ckpt.save_step(self.out_dir, state, self.step, self.cfg.keep_checkpoints)
        dist.barrier(self.dist)

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore a training state written by `save_checkpoint`; the model config must match and
        every setting must equal the checkpoint's unless it is in `cfg.allow_change`."""
        state = ckpt.load(path) if state is None else state
        ckpt.check_settings(self.cfg.resume_changes(state["train_config"]), path)
        ckpt.check_model_config(state["model_config"], self.model.cfg.to_dict(), path)
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
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self.generator.set_state(state["generator"])
        if "data" in state and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(state["data"])
        self.step, self.history = state["step"], list(state["history"])
        self.ckpt_path = Path(path)

    # ------------------------------------------------------------------ loss and evaluation
    def _loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast:  # the model's fused LM-head loss: no [batch, T, vocab] logits kept
            return self.net(x, targets=y, loss_reduction="sum")

    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0] // self.dist.world
        return t[self.dist.rank * n : (self.dist.rank + 1) * n].to(
            self.dist.device, non_blocking=True
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token loss on `eval_iters` fixed batches of each split (same batches every time)."""
        self.net.eval()
        out = {}
        for split in ("train", "val"):
            g = torch.Generator().manual_seed(self.cfg.seed + 1)
            total = torch.zeros((), device=self.dist.device)
            count = 0
            for _ in range(self.cfg.eval_iters):
                x, y = self.data.get_batch(split, self.cfg.batch_size, g)
                count += int((y != IGNORE_INDEX).sum())
                total += self._loss_sum(self._shard(x), self._shard(y))
            key = "train_eval_loss" if split == "train" else "val_loss"
            out[key] = float(dist.all_reduce_sum(total, self.dist)) / max(count, 1)
        self.net.train()
        return out

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, Any]]:
        """Train until `max_steps` (or a callback says stop); returns the history of records."""
        cfg, d = self.cfg, self.dist
        ckpt.clean_tmp(self.out_dir) if d.main and self.out_dir.is_dir() else None
        if cfg.resume:
            self.load_checkpoint(*ckpt.load_latest(self.out_dir, warn=d.main))
        elif ckpt.exists(self.out_dir):
            raise OverwriteError(
                f"{self.out_dir} holds checkpoints of an earlier run; pass --resume to continue "
                "it, or choose another out_dir"
            )
        else:
            torch.manual_seed(cfg.seed + d.rank)
        log = MetricsLog(self.out_dir, d.main, cfg.tensorboard, self.step)
        bar = Progress(cfg.max_steps, self.step, cfg.progress and d.main)
        n_params = sum(p.numel() for p in self.model.parameters())
        peak = (cfg.peak_flops or peak_flops(d.device, cfg.dtype)) * d.world
        self.net.train()
        run_loss = torch.zeros((), device=d.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=d.device)
        t_log, tokens, steps_since, stop = time.perf_counter(), 0, 0, False
        try:
            while self.step < cfg.max_steps and not stop:
                lr = self.schedule.set(self.step)
                micro = [
                    self.data.get_batch("train", cfg.batch_size, self.generator)
                    for _ in range(cfg.grad_accum)
                ]
                n_tok = max(sum(int((y != IGNORE_INDEX).sum()) for _, y in micro), 1)
                loss = torch.zeros((), device=d.device)
                for i, (x, y) in enumerate(micro):
                    with dist.grad_sync(self.wrapped, i == len(micro) - 1):
                        part = self._loss_sum(self._shard(x), self._shard(y))
                        (part * (d.world / n_tok)).backward()
                    loss += part.detach()
                    tokens += x.numel()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                loss = dist.all_reduce_sum(loss, d) / n_tok
                first_bad = torch.where(  # 1-based step number, like the logs
                    (first_bad < 0) & ~torch.isfinite(loss), self.step + 1, first_bad
                )
                run_loss += loss
                self.step += 1
                steps_since += 1
                last = self.step == cfg.max_steps
                due_eval = (cfg.eval_interval and (self.step % cfg.eval_interval == 0)) or last
                due_ckpt = (
                    cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0
                ) or last
                if self.step % cfg.log_interval == 0 or due_eval or due_ckpt:
                    self._check_finite(first_bad, lr)
                    dt = time.perf_counter() - t_log
                    rec = {
                        "step": self.step,
                        "loss": float(run_loss) / steps_since,
                        "lr": lr,
                        "tok_s": tokens / dt,
                        "mfu": tokens
                        * flops_per_token(self.model.cfg, n_params, x.shape[1])
                        / dt
                        / peak
                        if peak
                        else 0.0,
                    }
                    self.history.append(rec)
                    log.write(rec)
                    bar.update(steps_since, rec["loss"], rec["tok_s"], rec["mfu"])
                    run_loss.zero_()
                    t_log, tokens, steps_since = time.perf_counter(), 0, 0
                if due_eval:
                    rec = {"step": self.step, **self.evaluate()}
                    for cb in self.callbacks:
                        stop = bool(cb(self, rec)) or stop
                    self.history.append(rec)
                    log.write(rec)
                    bar.write(
                        " ".join(
                            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in rec.items()
                        )
                    )
                    t_log = time.perf_counter()  # evaluation time is not training throughput
                if due_ckpt or stop:
                    self.save_checkpoint()
        finally:
            bar.close()
            log.close()
        if d.main and self.history:
            plot_loss(
                self.history, self.out_dir / "loss.png", title=f"{self.model.cfg.name} training"
            )
        return self.history

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
