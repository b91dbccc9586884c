"""ActAdd (Turner et al. 2023): the activation difference of a prompt pair, added at the front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmlab.interp.activation_cache import run_with_cache
from lmlab.steer.steering_vector import SteeringVector, hook_for


def _encode(text: str | Sequence[int], tokenizer: Any) -> list[int]:
    if isinstance(text, str):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer: actadd(..., tokenizer=tok)")
        text = tokenizer.encode(text)
    if len(text) == 0:
        raise ValueError("an ActAdd prompt is empty; both prompts need at least one token")
    return list(text)


@torch.no_grad()
def actadd(
    model: Any,
    pos: str | Sequence[int],
    neg: str | Sequence[int],
    layer: int,
    coeff: float,
    *,
    tokenizer: Any = None,
    hook: str = "resid_pre",
    pad_text: str = " ",
) -> SteeringVector:
    """coeff * (act(pos) - act(neg)) at `layer`, one row per prompt position: steers positions 0..P-1.

    The shorter prompt is padded at the end with `pad_text` tokens, as in the paper. Apply it with
    `sv.apply(model)` (positions="all": the rows land on each prompt's first P real tokens).
    """
    n = len(model.blocks)
    if not 0 <= layer < n:
        raise ValueError(f"layer={layer} is outside 0..{n - 1} for this {n}-layer model")
    a, b = _encode(pos, tokenizer), _encode(neg, tokenizer)
    if len(a) != len(b):
        filler = tokenizer.encode(pad_text) if tokenizer is not None else [model.cfg.pad_id]
        short = a if len(a) < len(b) else b
        while len(short) < max(len(a), len(b)):
            short.append(filler[0])
    name = hook_for(layer, hook)
    dev = next(model.parameters()).device
    _, cache = run_with_cache(
        model, torch.tensor([a, b], device=dev), names_filter=name, stop_at_layer="auto"
    )
    acts = cache[name].float()
    diff = coeff * (acts[0] - acts[1])  # [P, d]
    return SteeringVector({name: diff}, aligned=True, meta={"method": "actadd", "coeff": coeff})
