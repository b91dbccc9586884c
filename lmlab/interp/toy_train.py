"""A plain training loop for the tiny models of circuit experiments (seconds to minutes on a CPU)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmlab.data.tokens import IGNORE_INDEX

# batch(generator) -> (inputs [B, T], labels [B, T] with IGNORE_INDEX where no loss is taken)
BatchFn = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
# evaluate(step) -> a record to log (e.g. held-out loss, head scores)
EvalFn = Callable[[int], dict[str, Any]]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labels that are not IGNORE_INDEX."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []

    def log(step: int, loss: float) -> None:
        rec: dict[str, Any] = {"step": step, "loss": loss}
        if evaluate is not None:
            model.eval()
            rec.update(evaluate(step))
            model.train()
        history.append(rec)

    model.train()
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False)
    for step in bar:
        scale = min(1.0, step / warmup) if warmup else 1.0
        if decay and step > warmup:
            scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x, y = batch(g)
        loss = lm_loss(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr={lr}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or (eval_every and step % eval_every == 0) or step == steps:
            value = loss.item()
            log(step, value)
            bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    return history
