"""Optimizers beyond AdamW: Muon, and the Newton–Schulz iteration it is built on.

The trainer builds `optimizer = "muon"` with `muon_factory`: `TrainConfig.lr` is then the Muon
learning rate of the hidden matrices, and the AdamW part (embeddings, head, norms, biases) runs at
`ADAMW_LR_RATIO * lr` under the same schedule. `optimizer = "muon-per-step"` is the same with
per-step Newton–Schulz coefficients (`lmlab.optim.per_step`) instead of Keller's fixed quintic.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from lmlab.optim.muon import Muon, muon_param_groups
from lmlab.optim.newton_schulz import KELLER, SCHEDULES, orthogonalize
from lmlab.optim.per_step import per_step_schedule

__all__ = [
    "ADAMW_LR_RATIO",
    "KELLER",
    "SCHEDULES",
    "Muon",
    "muon_factory",
    "muon_param_groups",
    "muon_per_step_factory",
    "orthogonalize",
    "per_step_schedule",
]

ADAMW_LR_RATIO = 0.1  # AdamW lr / Muon lr when the trainer builds Muon from a TrainConfig


def muon_factory(model: nn.Module, cfg: Any, ns_coeffs: str = "keller") -> Muon:
    """Muon for the blocks' matrices at cfg.lr, AdamW for the rest at ADAMW_LR_RATIO * cfg.lr.

    `cfg` is a `TrainConfig`; the trainer's optimizer registry (`lmlab.train.optimizers`) builds
    `optimizer = "muon"` with this.
    """
    groups = muon_param_groups(model, cfg.weight_decay, cfg.weight_decay)
    for g in groups:
        g["lr_scale"] = 1.0 if g["use_muon"] else ADAMW_LR_RATIO
        g["lr"] = cfg.lr * g["lr_scale"]
    return Muon(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), ns_coeffs=ns_coeffs)


muon_per_step_factory = partial(muon_factory, ns_coeffs="per-step")
muon_per_step_factory.__doc__ = "`muon_factory` with per-step Newton–Schulz coefficients."
