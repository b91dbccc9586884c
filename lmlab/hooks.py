"""Hook points with TransformerLens names and `run_with_hooks`.

Every interesting activation passes through a `HookPoint` (an identity module). With no hook
attached it returns its input untouched, so a plain forward pays nothing. Hook functions have
TransformerLens's signature `fn(activation, hook) -> activation | None`. Recording activations
(`run_with_cache`, `ActivationCache`) is interpretability and lives in `lmlab.interp`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookError(LmlabError, KeyError):
    """A hook name or filter that matches nothing; the message suggests near names."""


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
                raise HookError(
                    f"{what} matched no hook point; names look like {self.hook_names()[:6]} ..."
                )
            return chosen
        wanted = [names] if isinstance(names, str) else list(names)
        if not wanted:
            raise HookError(
                f"{what} is an empty list and selects no hook point; pass None to select all"
            )
        for n in wanted:
            if n not in self.hook_dict:
                near = difflib.get_close_matches(n, self.hook_names(), n=4)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise HookError(
                    f"unknown hook point {n!r}.{hint} See model.hook_names() for all names."
                )
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
