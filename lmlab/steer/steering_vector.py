"""`SteeringVector`: vectors added to (or ablated from) hook points at chosen token positions.

A vector lives at a hook point (`blocks.6.hook_resid_pre` [d_model], `blocks.3.attn.hook_z`
[n_heads, head_dim], ...). It is applied with a multiplier at the positions a `Positions` rule
selects, as a context manager or permanently, and stays live during cached generation: a decode
step (T=1) knows its absolute position, so "all", "prompt" and "new" (generated tokens only) mean
the same with and without a KV cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# "all" | "prompt" | "new" | int (absolute; negative = from the end of each forward's input) |
# list of ints | slice (absolute, e.g. slice(3, None)) | fn(tokens [B, T], pos [B, T]) -> bool [B, T]
Positions = str | int | Sequence[int] | slice | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OPERATORS = ("add", "ablate", "ablate_add")

# Trailing activation shape per hook kind (checked before any forward runs).
_SHAPES: dict[str, Callable[[Any], tuple[int, ...]]] = {
    "hook_resid_pre": lambda c: (c.d_model,),
    "hook_resid_mid": lambda c: (c.d_model,),
    "hook_resid_post": lambda c: (c.d_model,),
    "hook_attn_out": lambda c: (c.d_model,),
    "hook_mlp_out": lambda c: (c.d_model,),
    "attn.hook_z": lambda c: (c.n_heads, c.head_dim),
    "attn.hook_q": lambda c: (c.n_heads, c.head_dim),
    "attn.hook_k": lambda c: (c.n_kv_heads, c.head_dim),
    "attn.hook_v": lambda c: (c.n_kv_heads, c.head_dim),
}


def hook_for(layer: int, hook: str = "resid_pre") -> str:
    """Full hook name: `hook_for(6)` -> `blocks.6.hook_resid_pre`, `hook_for(3, "z")` -> `...attn.hook_z`."""
    if hook.startswith("blocks.") or hook.startswith("hook_"):
        return hook
    from lmlab.interp.activation_cache import act_name

    return act_name(hook, layer)


class _Tracker:
    """Forward pre-hook on the model: remembers the current forward's tokens and positions."""

    def __init__(self) -> None:
        self.tokens: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # [B, T] absolute position of each token in its row
        self.real: torch.Tensor | None = None  # [B, T] not padding
        self.decoding = False  # a cached step after the prefill

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs["tokens"]
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        B, T = tokens.shape
        mask, cache = kwargs.get("attention_mask"), kwargs.get("cache")
        real = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        if mask is not None:
            real = mask.bool()
        if cache is not None:
            pos = cache.next_pos[:, None] + real.long().cumsum(-1) - 1
        elif kwargs.get("position_ids") is not None:
            pos = kwargs["position_ids"].expand(B, T)
        else:
            pos = real.long().cumsum(-1) - 1
        self.tokens, self.pos, self.real = tokens, pos.clamp(min=0), real
        self.decoding = cache is not None and cache.length > 0

    def select(self, positions: Positions, T: int, device: torch.device) -> torch.Tensor:
        """bool [B, T] of the positions to steer in the current forward."""
        if self.pos is None or self.pos.shape[1] != T:  # a block called on its own
            pos = torch.arange(T, device=device)[None]
            real, tokens, decoding = torch.ones_like(pos, dtype=torch.bool), None, False
        else:
            pos, real, tokens, decoding = self.pos, self.real, self.tokens, self.decoding
        if isinstance(positions, str):
            keep = {"all": True, "prompt": not decoding, "new": decoding}[positions]
            return real & keep
        if callable(positions):
            if tokens is None:
                raise ValueError("a positions function needs the model's forward (tokens unknown)")
            return real & positions(tokens, pos).bool().to(real.device)
        if isinstance(positions, slice):
            lo = positions.start if positions.start is not None else 0
            hi = positions.stop if positions.stop is not None else torch.iinfo(torch.long).max
            return real & (pos >= lo) & (pos < hi)
        wanted = [positions] if isinstance(positions, int) else list(positions)
        out = torch.zeros_like(real)
        for p in wanted:
            if p >= 0:
                out |= pos == p
            elif not decoding and -p <= T:  # from the end of this forward's input
                out[:, T + p] = True
        return real & out


def check_positions(positions: Positions) -> None:
    """Raise on a positions rule that selects nothing meaningful."""
    if isinstance(positions, str) and positions not in ("all", "prompt", "new"):
        raise ValueError(
            f"positions={positions!r} is not a known rule; use 'all', 'prompt', 'new' (generated "
            "tokens only), an int, a list of ints, a slice or a function(tokens, pos) -> mask"
        )
    if isinstance(positions, Sequence) and not isinstance(positions, str) and not positions:
        raise ValueError("positions=[] selects no token; pass 'all' or at least one position")


@dataclass
class SteeringHandle:
    """A permanent application; `remove()` detaches it."""

    removers: list[Callable[[], None]] = field(default_factory=list)

    def remove(self) -> None:
        """Detach every hook this application attached."""
        for fn in self.removers:
            fn()
        self.removers.clear()


@dataclass
class SteeringVector:
    """Vectors keyed by hook name; `aligned` vectors are [P, *shape]: row p steers position p."""

    vectors: dict[str, torch.Tensor]
    aligned: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("SteeringVector needs at least one vector; got an empty mapping")
        self.vectors = {k: v.detach().float().cpu() for k, v in self.vectors.items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layers(
        cls, vectors: Mapping[int, torch.Tensor], hook: str = "resid_pre", **kw: Any
    ) -> SteeringVector:
        """One vector per layer at hook kind `hook` (resid_pre, resid_post, z, ...)."""
        return cls({hook_for(int(i), hook): v for i, v in vectors.items()}, **kw)

    @property
    def layers(self) -> list[int]:
        """Block indices this vector touches."""
        return sorted(
            {int(m.group(1)) for k in self.vectors if (m := re.match(r"blocks\.(\d+)\.", k))}
        )

    def __mul__(self, c: float) -> SteeringVector:
        return SteeringVector(
            {k: v * c for k, v in self.vectors.items()}, self.aligned, dict(self.meta)
        )

    __rmul__ = __mul__

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if self.aligned != other.aligned:
            raise ValueError("cannot add a position-aligned steering vector to a plain one")
        out = dict(self.vectors)
        for k, v in other.vectors.items():
            if k in out and out[k].shape != v.shape:
                raise ValueError(
                    f"vectors at {k} differ in shape: {tuple(out[k].shape)} vs {tuple(v.shape)}"
                )
            out[k] = out[k] + v if k in out else v
        return SteeringVector(out, self.aligned, {**self.meta, **other.meta})

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a safetensors file (vectors by hook name, `aligned` and `meta` as metadata).

        Atomic (temporary file + rename); an existing `path` is refused unless `overwrite=True`.
        """
        from safetensors.torch import save

        from lmlab.runs import atomic_write

        meta = {"lmlab_steer": json.dumps({"aligned": self.aligned, "meta": self.meta})}
        data = save({k: v.detach().cpu().contiguous() for k, v in self.vectors.items()}, meta)
        return atomic_write(path, data, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by `save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("lmlab_steer", "{}"))
            vectors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls(vectors, bool(info.get("aligned", False)), info.get("meta", {}))

    # ------------------------------------------------------------------ checks
    def check(self, model: Any) -> None:
        """Raise a clear error when a hook name, layer or vector shape does not fit `model`."""
        cfg, n = model.cfg, len(model.blocks)
        for name, v in self.vectors.items():
            m = re.match(r"blocks\.(\d+)\.(.+)$", name)
            if m and int(m.group(1)) >= n:
                raise ValueError(
                    f"steering vector targets layer {m.group(1)} ({name}) but {cfg.name} has {n} "
                    f"layers (0..{n - 1}); pick a layer below {n}"
                )
            model.match_hooks(name, what="steering hook")
            want = _SHAPES.get(m.group(2) if m else name, lambda c: None)(cfg)
            got = tuple(v.shape[1:] if self.aligned else v.shape)
            if want is not None and got != want:
                raise ValueError(
                    f"steering vector at {name} has shape {got} but {cfg.name} expects {want} there "
                    f"(d_model={cfg.d_model}); was it built for another model?"
                )

    # ------------------------------------------------------------------ application
    def _attach(
        self, model: Any, multiplier: float, positions: Positions, operator: str
    ) -> SteeringHandle:
        if operator not in OPERATORS:
            raise ValueError(f"operator={operator!r} is unknown; use one of {', '.join(OPERATORS)}")
        check_positions(positions)
        self.check(model)
        tracker = _Tracker()
        handle = SteeringHandle([model.register_forward_pre_hook(tracker, with_kwargs=True).remove])
        for name, vec in self.vectors.items():
            fn = self._hook_fn(vec, tracker, multiplier, positions, operator)
            hp = model.hook_dict[name]
            hp.add_hook(fn)
            handle.removers.append(lambda hp=hp, fn=fn: fn in hp.fwd_fns and hp.fwd_fns.remove(fn))
        return handle

    def _hook_fn(
        self, vec: torch.Tensor, tracker: _Tracker, mult: float, positions: Positions, operator: str
    ) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        aligned = self.aligned

        def steer(act: torch.Tensor, hook: Any) -> torch.Tensor:
            B, T = act.shape[:2]
            sel = tracker.select(positions, T, act.device)  # [B, T]
            v = vec.to(act.device, act.dtype)
            if aligned:  # row p of the vector steers absolute position p
                pos = tracker.pos if tracker.pos is not None and tracker.pos.shape[1] == T else (
                    torch.arange(T, device=act.device)[None].expand(B, T))  # fmt: skip
                sel = sel & (pos < v.shape[0])
                v = v[pos.clamp(max=v.shape[0] - 1)]  # [B, T, *shape]
            w = sel.to(act.dtype).view(B, T, *([1] * (act.dim() - 2)))
            out = act
            if operator in ("ablate", "ablate_add"):
                unit = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)
                out = out - w * (act * unit).sum(-1, keepdim=True) * unit
            if operator in ("add", "ablate_add"):
                out = out + w * mult * v
            return out

        return steer

    @contextmanager
    def apply(
        self,
        model: Any,
        multiplier: float = 1.0,
        positions: Positions = "all",
        operator: str = "add",
    ) -> Iterator[Any]:
        """Context manager: steer every forward (and generation step) inside the block."""
        handle = self._attach(model, multiplier, positions, operator)
        try:
            yield model
        finally:
            handle.remove()

    def apply_permanently(
        self,
        model: Any,
        multiplier: float = 1.0,
        positions: Positions = "all",
        operator: str = "add",
    ) -> SteeringHandle:
        """Steer until `handle.remove()` (or `model.reset_hooks()` plus removing the handle)."""
        return self._attach(model, multiplier, positions, operator)
