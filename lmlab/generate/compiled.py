"""Compiled decoding: one `torch.compile`d forward replayed over a static KV cache.

Eager decoding pays Python and dispatch costs for ~50 small ops per layer per token; compiling the
one-token forward fuses them. Shapes must stay fixed for the compiled code to be reused, so the
cache is static (`KVCache(static=True)`) and its length is rounded up to a bucket: generations of
similar length share one compilation.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.cache import KVCache

BUCKET = 128


def static_cache_len(model: nn.Module, needed: int, bucket: int = BUCKET) -> int:
    """`needed` rounded up to a multiple of `bucket`, but never past the model's context."""
    return max(needed, min(-(-needed // bucket) * bucket, model.cfg.max_seq_len))


def compiled_forward(model: nn.Module) -> nn.Module:
    """The model's forward under `torch.compile` with fixed shapes.

    The first call with a new batch size or cache bucket compiles (tens of seconds on a CPU); later
    calls replay, also through a fresh wrapper (dynamo keeps the compiled code with the forward's
    code and guards), so nothing is stored on the model and it still copies and pickles. Hooks
    still run: attaching or removing one triggers a recompile.
    """
    return torch.compile(model, dynamic=False)


def decoding_cache(
    model: nn.Module, batch_size: int, needed: int, compile: bool
) -> tuple[KVCache, nn.Module]:
    """A cache for `needed` tokens and the forward that decodes into it: the model itself on a
    growing cache, or its compiled forward on a static, bucketed one."""
    if not compile:
        return KVCache(model, batch_size, needed), model
    cache = KVCache(model, batch_size, static_cache_len(model, needed), static=True)
    return cache, compiled_forward(model)
