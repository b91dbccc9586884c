"""Hook points with TransformerLens names, `run_with_hooks`, `run_with_cache` and `ActivationCache`.

Every interesting activation passes through a `HookPoint` (an identity module). With no hook
attached it returns its input untouched, so a plain forward pays nothing. Hook functions have
TransformerLens's signature `fn(activation, hook) -> activation | None`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]


class HookError(KeyError):
    """A hook name or filter that matches nothing; the message suggests near names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class HookPoint(nn.Module):
    """Identity module whose forward runs the hooks attached to it (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """Whether any hook is attached (callers use this to skip work nobody looks at)."""
        return bool(self.fwd_fns or self.bwd_fns)

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> None:
        """Attach `fn`; `dir` is "fwd" (sees and may replace the activation) or "bwd" (sees its gradient)."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"hook dir must be 'fwd' or 'bwd', got {dir!r}")
        (self.fwd_fns if dir == "fwd" else self.bwd_fns).append(fn)

    def remove_hooks(self) -> None:
        """Detach every hook."""
        self.fwd_fns.clear()
        self.bwd_fns.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fwd_fns and not self.bwd_fns:
            return x
        for fn in self.fwd_fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook on {self.name} returned {got}, expected a tensor of shape {tuple(x.shape)}; "
                        "return None to leave the activation unchanged"
                    )
                x = out
        if self.bwd_fns and x.requires_grad:
            fns = list(self.bwd_fns)

            def run_bwd(grad: torch.Tensor) -> None:
                for fn in fns:
                    fn(grad, self)

            x.register_hook(run_bwd)
        return x

    def extra_repr(self) -> str:
        return self.name


class HookedMixin:
    """Gives an `nn.Module` full of `HookPoint`s the TransformerLens hooking API."""

    def setup_hooks(self) -> None:
        """Name every HookPoint after its module path; call at the end of `__init__`."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, mod in self.named_modules():  # type: ignore[attr-defined]
            if isinstance(mod, HookPoint):
                mod.name = name
                self.hook_dict[name] = mod

    def hook_names(self) -> list[str]:
        """All hook point names, in forward order."""
        return list(self.hook_dict)

    def match_hooks(self, names: NameFilter, *, what: str = "names_filter") -> list[str]:
        """Hook names selected by a name, a list of names, a regex-free predicate, or None (all)."""
        if names is None:
            return self.hook_names()
        if callable(names):
            chosen = [n for n in self.hook_dict if names(n)]
            if not chosen:
                raise HookError(f"{what} matched no hook point; names look like {self.hook_names()[:6]} ...")
            return chosen
        wanted = [names] if isinstance(names, str) else list(names)
        for n in wanted:
            if n not in self.hook_dict:
                near = difflib.get_close_matches(n, self.hook_names(), n=4)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise HookError(f"unknown hook point {n!r}.{hint} See model.hook_names() for all names.")
        return wanted

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn, dir: str = "fwd") -> None:
        """Attach `fn` to the hook point(s) named or selected by `name` until `reset_hooks()`."""
        for n in self.match_hooks(name, what="hook name"):
            self.hook_dict[n].add_hook(fn, dir)

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        bwd_hooks: Sequence[tuple[Any, HookFn]] = (),
    ) -> Iterator[Any]:
        """Context manager: hooks are attached on entry and removed on exit, even after an error."""
        attached: list[tuple[HookPoint, HookFn, str]] = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, fn in pairs:
                    for n in self.match_hooks(name, what="hook name"):
                        hp = self.hook_dict[n]
                        hp.add_hook(fn, direction)
                        attached.append((hp, fn, direction))
            yield self
        finally:
            for hp, fn, direction in attached:
                fns = hp.fwd_fns if direction == "fwd" else hp.bwd_fns
                if fn in fns:
                    fns.remove(fn)

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        bwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        **kwargs: Any,
    ) -> Any:
        """One forward with temporary hooks (removed afterwards, also on error)."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)  # type: ignore[operator]

    def run_with_cache(
        self,
        *args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """One forward that records the activations at the selected hook points.

        Only the selected hook points are touched, so caching one layer costs little; attention
        patterns are built (the explicit softmax path) only where a pattern is requested.
        """
        names = self.match_hooks(names_filter)
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: HookPoint) -> None:
            act = act.detach()
            store[hook.name] = act.to(device) if device is not None else act

        out = self.run_with_hooks(*args, fwd_hooks=[(n, save) for n in names], **kwargs)
        return out, ActivationCache(store, self)


_LAYER_KEYS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "rot_q": "blocks.{}.attn.hook_rot_q",
    "rot_k": "blocks.{}.attn.hook_rot_k",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern",
    "attn": "blocks.{}.attn.hook_pattern",
    "z": "blocks.{}.attn.hook_z",
    "result": "blocks.{}.attn.hook_result",
    "pre": "blocks.{}.mlp.hook_pre",
    "pre_linear": "blocks.{}.mlp.hook_pre_linear",
    "post": "blocks.{}.mlp.hook_post",
    "router_logits": "blocks.{}.mlp.hook_router_logits",
    "expert_weights": "blocks.{}.mlp.hook_expert_weights",
    "expert_indices": "blocks.{}.mlp.hook_expert_indices",
}
_GLOBAL_KEYS = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "token_type_embed": "hook_token_type_embed",
}


def act_name(name: str, layer: int | None = None, sub: str | None = None) -> str:
    """Full hook name from a short one, TransformerLens style: `act_name("pattern", 3)`.

    Norm activations take the norm as `sub`: `act_name("normalized", 2, "ln1")`; with no layer
    they refer to the final norm (`ln_final.hook_normalized`).
    """
    if name in ("normalized", "scale"):
        if layer is None:
            return f"ln_final.hook_{name}"
        return f"blocks.{layer}.{sub or 'ln1'}.hook_{name}"
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    if name in _LAYER_KEYS:
        if layer is None:
            raise HookError(f"activation {name!r} lives in every block; give a layer, e.g. ({name!r}, 0)")
        return _LAYER_KEYS[name].format(layer)
    known = sorted({*_LAYER_KEYS, *_GLOBAL_KEYS, "normalized", "scale"})
    near = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise HookError(f"unknown activation {name!r}.{hint} Short names: {', '.join(known)}")


class ActivationCache:
    """Activations recorded by `run_with_cache`, indexed by full name or `(short_name, layer[, sub])`."""

    def __init__(self, store: dict[str, torch.Tensor], model: Any = None) -> None:
        self.cache_dict = store
        self.model = model

    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        if key in self.cache_dict or "." in key or key.startswith("hook_"):
            return key
        return act_name(key)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        full = self._key(key)
        if full not in self.cache_dict:
            near = difflib.get_close_matches(full, list(self.cache_dict), n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise HookError(f"{full!r} is not in this cache ({len(self.cache_dict)} entries).{hint}")
        return self.cache_dict[full]

    def __contains__(self, key: str | tuple) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except HookError:
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> list[str]:
        """Full hook names held, in forward order."""
        return list(self.cache_dict)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.cache_dict.items())

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor moved to `device`."""
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model)

    def layers(self, name: str) -> list[torch.Tensor]:
        """The activation `name` from every block that has it, in layer order."""
        pat = re.compile(rf"^blocks\.(\d+)\.{re.escape(_LAYER_KEYS[name].split('{}.', 1)[1])}$")
        found = sorted((int(m.group(1)), k) for k in self.cache_dict if (m := pat.match(k)))
        return [self.cache_dict[k] for _, k in found]

    def __repr__(self) -> str:
        return f"ActivationCache({len(self.cache_dict)} activations)"
