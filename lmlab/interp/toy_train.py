"""Training the tiny models of circuit experiments on the one training core (seconds on a CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.data.tokens import IGNORE_INDEX
from lmlab.train.config import TrainConfig
from lmlab.train.trainer import Trainer

# batch(generator) -> (inputs [B, T], labels [B, T] with IGNORE_INDEX where no loss is taken)
BatchFn = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
# evaluate(step) -> a record to log (e.g. held-out loss, head scores)
EvalFn = Callable[[int], dict[str, Any]]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of given logits over the labels that are not IGNORE_INDEX (for
    evaluating slices of logits; training uses the model's fused `targets=` loss)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


class ToyLMTask:
    """Batches from `batch(generator)`; the model's fused LM loss summed over counted labels."""

    def __init__(
        self, batch: BatchFn, weight_decay: float, evaluate: EvalFn | None, name: str = "train"
    ) -> None:
        self.batch_fn, self.weight_decay, self.eval_fn, self.name = (
            batch,
            weight_decay,
            evaluate,
            name,
        )
        self.evals: dict[int, dict[str, Any]] = {}  # step -> what `evaluate(step)` returned

    def batch(self, split: str, batch_size: int, generator: torch.Generator):
        return self.batch_fn(generator)

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def loss(self, net: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return net(x, targets=y, loss_reduction="sum")

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        self.evals[trainer.step] = self.eval_fn(trainer.step) if self.eval_fn else {}
        return self.evals[trainer.step]

    def param_groups(self, model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
        """Every parameter decays (embeddings and norms included), as in the circuit papers."""
        return [{"params": list(model.parameters()), "weight_decay": self.weight_decay}]


def train(
    model: torch.nn.Module,
    batch: BatchFn,
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup: int = 0,
    decay: bool = False,
    seed: int = 0,
    eval_every: int = 0,
    evaluate: EvalFn | None = None,
    desc: str = "train",
) -> list[dict[str, Any]]:
    """AdamW on `batch()` for `steps` steps; returns records {step, loss, **evaluate(step)}.

    The learning rate warms up linearly for `warmup` steps, then stays (or, with `decay`,
    follows a cosine to 0). `evaluate` runs after step 1, every `eval_every` steps and at the end.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    cfg = TrainConfig(
        max_steps=steps, lr=lr, min_lr=0.0, warmup_steps=warmup,
        schedule="cosine" if decay else "constant", weight_decay=weight_decay, beta2=0.98,
        grad_clip=0.0, batch_size=1, eval_interval=eval_every, eval_first=True, log_interval=1,
        out_dir="", tensorboard=False, seed=seed, device=str(next(model.parameters()).device),
    )  # fmt: skip
    return fit(model, batch, cfg, evaluate, desc)


def fit(
    model: torch.nn.Module,
    batch: BatchFn,
    cfg: TrainConfig,
    evaluate: EvalFn | None = None,
    name: str = "train",
) -> list[dict[str, Any]]:
    """Train `model` on `batch(generator)` as `cfg` says on the training core; returns records
    {step, loss, **evaluate(step)} at each evaluation (`eval_interval`, the last step, and step 1
    with `eval_first`); `loss` is that step's training loss when `log_interval` is 1."""
    task = ToyLMTask(batch, cfg.weight_decay, evaluate, name)
    history = Trainer(model, cfg, task).fit()
    model.eval()
    losses = {r["step"]: r["loss"] for r in history if "loss" in r}
    return [{"step": s, "loss": losses[s], **ev} for s, ev in task.evals.items()]
