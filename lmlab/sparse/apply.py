"""Run a `Transformer` with a sparse pattern in chosen layers, masked or with the sparse kernel.

The mask is swapped in from outside with a forward pre-hook on each sparse layer's attention
(`Block` calls `attn(x, rope, mask)`), so hooks and caches keep working. With `kernel=True` the
sparse layers compute `local_sink_attention` instead of a masked dense softmax.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from lmlab.sparse.attention import local_sink_attention
from lmlab.sparse.masks import SparsePattern, layer_schedule


@contextmanager
def sparse_attention(
    model: nn.Module,
    tokens: torch.Tensor,
    pattern: SparsePattern,
    schedule: str | Sequence[bool] = "all",
    *,
    attention_mask: torch.Tensor | None = None,
    kernel: bool = False,
    block: int = 128,
) -> Iterator[tuple[bool, ...]]:
    """Within the block, forward passes on `tokens` use `pattern` in the layers `schedule` marks.

    attention_mask: the same [B, T] padding mask you pass to `model(...)`. Yields the schedule.
    """
    blocks = model.blocks
    sparse = layer_schedule(schedule, len(blocks))
    if pattern.causal != model.cfg.causal:
        raise ValueError(
            f"pattern.causal={pattern.causal} but the model is {'causal' if model.cfg.causal else 'bidirectional'}; "
            f"build SparsePattern(..., causal={model.cfg.causal})"
        )
    pad = attention_mask.bool() if attention_mask is not None else None
    mask = pattern.mask(tokens, pad)
    sinks = pattern.sinks(tokens, pad) if pattern.has_sinks else None
    with ExitStack() as stack:
        for blk, on in zip(blocks, sparse, strict=True):
            if not on:
                continue
            attn = blk.attn
            handle = attn.register_forward_pre_hook(_swap_mask(mask, tokens.shape))
            stack.callback(handle.remove)
            if kernel:
                if attn.sinks is not None or attn.cfg.attn_softcap is not None:
                    raise ValueError(
                        "kernel=True does not support learned attention sinks or softcapping; "
                        "use kernel=False (masked attention) for this model"
                    )
                # Stopgap until model.py takes an attention function: shadow `_fused` on this instance.
                attn._fused = _kernel(attn, pattern, sinks, pad, block)
                stack.callback(delattr, attn, "_fused")
        yield sparse


def _swap_mask(mask: torch.Tensor, shape: torch.Size):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x, rope, _ = args
        if x.shape[:2] != shape:
            raise ValueError(
                f"sparse_attention was set up for tokens of shape {tuple(shape)} but the model got "
                f"{tuple(x.shape[:2])}; enter the context again for each batch"
            )
        return x, rope, mask

    return hook


def _kernel(attn: nn.Module, pattern: SparsePattern, sinks, pad, block: int):
    def fused(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return local_sink_attention(
            q,
            k,
            v,
            window=pattern.window,
            sinks=sinks,
            pad=pad,
            causal=pattern.causal,
            scale=attn.scale,
            block=block,
        )

    return fused
