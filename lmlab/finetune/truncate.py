"""Keep the first n blocks of a model: a shallower classifier backbone for cheap CPU experiments."""

from __future__ import annotations

import dataclasses

from torch import nn


def keep_blocks(model: nn.Module, n: int) -> nn.Module:
    """Drop blocks n.. in place (their parameters are freed); the config says n_layers=n."""
    total = model.cfg.n_layers
    if not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(
            f"keep_blocks n={n!r} must be an integer in 1..{total} (the model's blocks)"
        )
    if n == total:
        return model
    types = model.cfg.layer_types[:n] if model.cfg.layer_types is not None else None
    model.cfg = dataclasses.replace(model.cfg, n_layers=n, layer_types=types)
    model.blocks = nn.ModuleList(list(model.blocks)[:n])
    if hasattr(model, "setup_hooks"):
        model.setup_hooks()  # hook names of the dropped blocks go away
    return model
