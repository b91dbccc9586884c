"""Compiled decoding: one `torch.compile`d forward replayed over a static KV cache.

Eager decoding pays Python and dispatch costs for ~50 small ops per layer per token; compiling the
one-token forward fuses them. Shapes must stay fixed for the compiled code to be reused, so the
cache is static (`KVCache(static=True)`) and its length is rounded up to a bucket: generations of
similar length share one compilation.

Before each replay dynamo checks guards on everything the forward read: every module attribute,
parameter and hook list, ~1.5 ms a token on SmolLM2 (15% of a quantized decode step). The model
cannot change during one generation, so those checks are done here once per generation instead:
`signature(model)` records the modules, their plain attributes and hooks, and every tensor's
identity, shape and dtype; the model's compiled step skips dynamo's module guards, and belongs to
that model and signature alone (its own code object, so its compiled code is never reused for
another model or a changed one; a changed model compiles anew).
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from dataclasses import is_dataclass
from typing import Any

import torch
from torch import nn

from lmlab.cache import KVCache

BUCKET = 128
_SIMPLE = (bool, int, float, str, type(None), torch.dtype, torch.device)
_STEPS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Callable]] = weakref.WeakKeyDictionary()


def static_cache_len(model: nn.Module, needed: int, bucket: int = BUCKET) -> int:
    """`needed` rounded up to a multiple of `bucket`, but never past the model's context."""
    return max(needed, min(-(-needed // bucket) * bucket, model.cfg.max_seq_len))


def signature(model: nn.Module) -> tuple:
    """What the compiled forward depends on besides its inputs: mode, config, every module's type,
    plain attributes, hook functions and torch hooks, every tensor's identity, shape and dtype."""
    parts: list[Any] = []
    for name, mod in model.named_modules():
        attrs = []
        for key, value in vars(mod).items():
            if isinstance(value, _SIMPLE):
                attrs.append((key, value))
            elif isinstance(value, torch.Tensor):  # e.g. a prefix's keys and values
                attrs.append((key, id(value), value.shape, value.dtype))
            elif is_dataclass(value):  # e.g. the config
                attrs.append((key, repr(value)))
            elif isinstance(value, list | tuple) and not key.startswith("_"):
                attrs.append((key, tuple(map(id, value))))  # e.g. a HookPoint's hook functions
        hooks = tuple(len(d) for d in (mod._forward_hooks, mod._forward_pre_hooks))
        parts.append((name, type(mod), tuple(attrs), hooks))
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        parts.append((name, id(t), t.shape, t.dtype, t.device, t.requires_grad))
    return tuple(parts)


def _step_function() -> Callable:
    """A new function (with a code object of its own, so dynamo's cache for it is its own) that
    runs `model(tokens, **kwargs)`."""

    def step(model: nn.Module, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return model(tokens, **kwargs)

    return types.FunctionType(step.__code__.replace(), step.__globals__, "compiled_step")


def compiled_forward(model: nn.Module, cuda_graphs: bool = False) -> Callable[..., torch.Tensor]:
    """The model's forward under `torch.compile` with fixed shapes, `forward(tokens, **kwargs)`.

    The first call with a new batch size or cache bucket compiles (tens of seconds on a CPU); later
    calls replay, also in later generations while the model's `signature` is unchanged. Hooks still
    run: attaching or removing one changes the signature, and the next generation compiles anew.
    `cuda_graphs`: inductor records each step as a CUDA graph and replays it (one launch instead
    of hundreds); the tensors it mutates must have static addresses (`decoding_cache` marks the
    cache's), and each output is cloned (the next replay overwrites the graph's own).
    """
    sig = (signature(model), cuda_graphs)
    known = _STEPS.get(model)
    if known is None or known[0] != sig:
        options: dict[str, Any] = {
            "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe
        }
        if cuda_graphs:
            options["triton.cudagraphs"] = True
        fn = torch.compile(_step_function(), dynamic=False, options=options)
        known = _STEPS[model] = (sig, fn)
    fn = known[1]
    if cuda_graphs:
        return lambda tokens, **kwargs: fn(model, tokens, **kwargs).clone()
    return lambda tokens, **kwargs: fn(model, tokens, **kwargs)


def _cache_tensors(cache: KVCache) -> list[torch.Tensor]:
    """Every tensor a static cache holds (its keys and values per layer, masks, counters)."""
    found: list[torch.Tensor] = []
    for value in vars(cache).values():
        items = value if isinstance(value, list | tuple) else [value]
        found += [t for t in items if isinstance(t, torch.Tensor)]
    return found


def decoding_cache(
    model: nn.Module, batch_size: int, needed: int, compile: bool
) -> tuple[KVCache, Callable[..., torch.Tensor]]:
    """A cache for `needed` tokens and the forward that decodes into it: the model itself on a
    growing cache, or its compiled forward on a static, bucketed one (replayed as a CUDA graph
    on a GPU)."""
    if not compile:
        return KVCache(model, batch_size, needed), model
    cache = KVCache(model, batch_size, static_cache_len(model, needed), static=True)
    graphs = next(model.parameters()).device.type == "cuda"
    if graphs:
        for t in _cache_tensors(cache):
            torch._dynamo.mark_static_address(t)
    return cache, compiled_forward(model, cuda_graphs=graphs)
