"""Shared by the circuit recipes (max-circuit, trigram, induction-formation): the training
settings of their tiny models and a fit on the one training core that returns eval records."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.interp.toy_train import BatchFn, EvalFn, ToyLMTask
from lmlab.train import TrainConfig
from lmlab.train.trainer import Trainer

# the circuit papers' setup: AdamW with beta2 0.98 decaying every parameter, no clipping, cosine
# to 0 after warmup, a record per step, an evaluation after step 1 too, nothing kept on disk
TOY = {
    "min_lr": 0.0, "beta2": 0.98, "grad_clip": 0.0, "schedule": "cosine", "eval_first": True,
    "log_interval": 1, "out_dir": "", "tensorboard": False, "device": "cpu", "threads": 1,
}  # fmt: skip


def toy_train_config(**changes: Any) -> TrainConfig:
    """A `TrainConfig` with the circuit recipes' defaults (`TOY`) and `changes` on top."""
    return TrainConfig(**{**TOY, **changes})


def fit(
    model: torch.nn.Module, batch: BatchFn, cfg: TrainConfig, evaluate: EvalFn, name: str
) -> list[dict[str, Any]]:
    """Train `model` on `batch(generator)` with `cfg`; records {step, loss, **evaluate(step)}
    at each evaluation (after step 1, every `cfg.eval_interval` steps and at the end)."""
    task = ToyLMTask(batch, cfg.weight_decay, evaluate, name)
    history = Trainer(model, cfg, task).fit()
    model.eval()
    losses = {r["step"]: r["loss"] for r in history if "loss" in r}
    return [{"step": s, "loss": losses[s], **ev} for s, ev in task.evals.items()]
