"""Learning-rate schedules as pure functions of the step (so resuming needs no scheduler state)."""

from __future__ import annotations

import math

from lmlab.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine to `min_lr`, warmup-stable-decay (linear), or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    total = max(cfg.max_steps - 1, 1)
    if cfg.schedule == "cosine":
        frac = min(max(step - cfg.warmup_steps, 0) / max(total - cfg.warmup_steps, 1), 1.0)
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)
    decay_start = cfg.max_steps - int(cfg.decay_fraction * cfg.max_steps)  # wsd
    if step < decay_start:
        return cfg.lr
    frac = min((step - decay_start) / max(total - decay_start, 1), 1.0)
    return cfg.lr + frac * (cfg.min_lr - cfg.lr)


class Schedule:
    """Applies `lr_at` to an optimizer; state is just the config (stored in checkpoints for checking)."""

    def __init__(self, optimizer, cfg: TrainConfig) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        for g in optimizer.param_groups:
            g.setdefault("lr_scale", 1.0)  # optimizers may scale groups (e.g. Muon vs AdamW parts)

    def set(self, step: int) -> float:
        lr = lr_at(step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        return lr

    def state_dict(self) -> dict:
        return {
            "schedule": self.cfg.schedule,
            "lr": self.cfg.lr,
            "min_lr": self.cfg.min_lr,
            "warmup_steps": self.cfg.warmup_steps,
            "max_steps": self.cfg.max_steps,
        }
