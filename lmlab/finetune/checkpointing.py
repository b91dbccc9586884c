"""Gradient (activation) checkpointing per block: recompute each block's activations in backward."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Wrap (or unwrap) every block's forward in non-reentrant checkpointing. LoRA, adapters and
    prefixes keep working: their hooks and attributes are used inside the recomputed block."""
    for blk in model.blocks:
        blk.__dict__.pop("forward", None)
        if enabled:
            blk.forward = _checkpointed(blk)


def _checkpointed(blk: nn.Module):
    plain = type(blk).forward.__get__(blk)

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return plain(*args, **kwargs)
        return checkpoint(plain, *args, use_reentrant=False, **kwargs)

    return forward
