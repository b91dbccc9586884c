"""Shared plumbing for methods that add context before the tokens (prompt and prefix tuning).

A forward pre-hook on the model sees `tokens`, `attention_mask`, `position_ids` and `cache`;
these helpers shift positions so the real tokens sit after the added context, as they would
after a real prompt of that length.
"""

from __future__ import annotations

from typing import Any

import torch


def call_parts(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The tokens [B, T] and the keyword arguments of a `Transformer.forward` call."""
    kwargs = dict(kwargs)
    tokens = args[0] if args else kwargs.pop("tokens")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    return tokens, kwargs


def shifted_positions(tokens: torch.Tensor, kwargs: dict[str, Any], offset: int) -> torch.Tensor:
    """Position ids of the tokens when `offset` context positions come first."""
    if kwargs.get("position_ids") is not None:
        return kwargs["position_ids"] + offset
    mask = kwargs.get("attention_mask")
    if mask is None:
        return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) + offset
    return (mask.long().cumsum(-1) - 1).clamp(min=0) + offset


def set_prefixes(
    model: torch.nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]] | None
) -> None:
    """Give every attention layer its prefix keys/values (or clear them)."""
    for i, blk in enumerate(model.blocks):
        blk.attn.prefix = None if kv is None else kv[i]


def check_free(model: torch.nn.Module, name: str) -> None:
    """One context method at a time: prompt and prefix tuning both own the prefix slots."""
    for other in ("prompt_tuning", "prefix_tuning"):
        if hasattr(model, other):
            raise ValueError(f"this model already has {other}; remove it before adding {name}")
