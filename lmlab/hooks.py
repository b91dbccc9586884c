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

    def run_with_cache(
        self,
        *args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        stop_at_layer: int | str | None = None,
        grads: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """One forward that records the activations at the selected hook points.

        Only the selected hook points are touched, so caching one layer costs little; attention
        patterns are built (the explicit softmax path) only where a pattern is requested.
        `stop_at_layer=L` runs blocks 0..L-1 only and returns the residual stream entering block L;
        `"auto"` stops right after the last block that holds a requested hook. With `grads=False`
        the forward runs without autograd (less memory); with `grads=True` the cached tensors stay
        in the graph, so `torch.autograd.grad(metric, cache[name])` works.
        """
        names = self.match_hooks(names_filter)
        stop = self._resolve_stop(stop_at_layer, names)
        if stop is not None:
            kwargs["stop_at_layer"] = stop
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
            if not grads:
                act = act.detach()
                store[hook.name] = act.to(device) if device is not None else act
                return None
            # A frozen model gives activations without a graph: make them leaves the rest depends on.
            replaced = not act.requires_grad and act.is_floating_point()
            if replaced:
                act = act.detach().requires_grad_()
            store[hook.name] = act
            return act if replaced else None

        with torch.set_grad_enabled(grads and torch.is_grad_enabled()):
            out = self.run_with_hooks(*args, fwd_hooks=[(n, save) for n in names], **kwargs)
        return out, ActivationCache(store, self)

    def _resolve_stop(self, stop_at_layer: int | str | None, names: list[str]) -> int | None:
        """Validate `stop_at_layer` (int, negative int, "auto" or None) against the requested hooks."""
        n_layers = len(self.blocks)  # type: ignore[attr-defined]
        layers = [_layer_of(n) for n in names]
        if stop_at_layer is None:
            return None
        if stop_at_layer == "auto":
            if any(
                layer is None and not n.startswith("hook_")
                for n, layer in zip(names, layers, strict=True)
            ):
                return None  # a hook after the last block (ln_final, ...) needs the whole forward
            deepest = max((layer for layer in layers if layer is not None), default=-1)
            return deepest + 1 if deepest + 1 < n_layers else None
        if not isinstance(stop_at_layer, int) or not -n_layers <= stop_at_layer <= n_layers:
            raise ValueError(
                f"stop_at_layer={stop_at_layer!r} must be an int in [-{n_layers}, {n_layers}], "
                '"auto" or None'
            )
        stop = stop_at_layer % n_layers if stop_at_layer < 0 else stop_at_layer
        late = [
            n
            for n, layer in zip(names, layers, strict=True)
            if (layer is None and not n.startswith("hook_"))
            or (layer is not None and layer >= stop)
        ]
        if late and stop < n_layers:
            raise HookError(
                f"stop_at_layer={stop_at_layer} stops before hook point(s) {late[:3]}, which would never "
                f"fire; raise stop_at_layer or narrow names_filter"
            )
        return stop


def _layer_of(name: str) -> int | None:
    """Block index of a hook name (`blocks.3.attn.hook_z` -> 3), None for embeddings / final norm."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


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
            raise HookError(
                f"activation {name!r} lives in every block; give a layer, e.g. ({name!r}, 0)"
            )
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
            raise HookError(
                f"{full!r} is not in this cache ({len(self.cache_dict)} entries).{hint}"
            )
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

    # ------------------------------------------------------------------ residual-stream algebra
    def _need_model(self, what: str) -> Any:
        if self.model is None:
            raise ValueError(
                f"ActivationCache.{what} needs the model; build the cache with model.run_with_cache"
            )
        return self.model

    def _n_layers(self) -> int:
        return len(self._need_model("this method").blocks)

    def _layer_arg(self, layer: int | None) -> int:
        n = self._n_layers()
        if layer is None:
            return n
        if not -n <= layer <= n:
            raise ValueError(f"layer={layer} is outside [-{n}, {n}] for this {n}-layer model")
        return layer % n if layer < 0 else layer

    def _get(self, name: str, layer: int | None = None, why: str = "") -> torch.Tensor:
        key = act_name(name, layer) if name in _LAYER_KEYS or name in _GLOBAL_KEYS else name
        if key not in self.cache_dict:
            raise HookError(
                f"{why} needs {key!r}, which is not in this cache; run run_with_cache with a "
                f"names_filter that includes it (or names_filter=None)"
            )
        return self.cache_dict[key]

    def _decomposable(self, what: str, heads: bool = False) -> None:
        cfg = self._need_model(what).cfg
        if cfg.post_norm or cfg.embed_norm:
            raise ValueError(
                f"{what}: {cfg.name} normalizes the residual stream itself (post-norm), so it is "
                "not a sum of components"
            )
        if heads and cfg.sandwich_norm:
            raise ValueError(
                f"{what}: {cfg.name} normalizes each attention output (sandwich norm), so per-head "
                "outputs do not add up to it; use decompose_resid for per-layer components"
            )

    def accumulated_resid(
        self,
        layer: int | None = None,
        *,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream entering blocks 0..layer (and the final one when `layer` is None).

        Returns [components, B, T, d]. `apply_ln=True` applies the final norm to each component
        with its own scale (the logit lens view).
        """
        layer = self._layer_arg(layer)
        n = self._n_layers()
        parts, labels = [], []
        for i in range(min(layer + 1, n)):
            parts.append(self._get("resid_pre", i, "accumulated_resid"))
            labels.append(f"{i}_pre")
            if incl_mid and i < layer:
                parts.append(self._get("resid_mid", i, "accumulated_resid"))
                labels.append(f"{i}_mid")
        if layer == n:
            parts.append(self._get("resid_post", n - 1, "accumulated_resid"))
            labels.append("final_post")
        stack = _pos(torch.stack(parts), pos_slice)
        if apply_ln:
            norm = self._need_model("accumulated_resid").ln_final
            if norm is None:
                raise ValueError(
                    "apply_ln=True needs a final norm; this model has none (post-norm encoder)"
                )
            stack = norm(stack)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        *,
        mode: str = "all",
        incl_embeds: bool = True,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream entering `layer` split into embeddings and each block's attn/mlp output.

        Returns [components, B, T, d]; the components sum to `resid_pre` of `layer` (the final
        residual when `layer` is None). `mode` is "all", "attn" or "mlp".
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode={mode!r} must be 'all', 'attn' or 'mlp'")
        self._decomposable("decompose_resid")
        layer = self._layer_arg(layer)
        s = self.model.cfg.residual_scale
        parts, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed", "token_type_embed"):
                if _GLOBAL_KEYS[name] in self.cache_dict:
                    parts.append(self.cache_dict[_GLOBAL_KEYS[name]])
                    labels.append(name)
            if not parts:
                self._get("embed", None, "decompose_resid")
        for i in range(layer):
            if mode in ("all", "attn"):
                parts.append(s * self._get("attn_out", i, "decompose_resid"))
                labels.append(f"{i}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(s * self._get("mlp_out", i, "decompose_resid"))
                labels.append(f"{i}_mlp_out")
        stack = _pos(
            torch.stack(torch.broadcast_tensors(*parts)), pos_slice
        )  # pos_embed is [1, T, d]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int | None = None,
        *,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Each head's output in blocks 0..layer-1 as [layers * heads, B, T, d], labels "L{l}H{h}".

        Computed on demand from the cached `hook_z` and W_O (or taken from `hook_result` when
        cached), so a plain `run_with_cache` never materializes per-head outputs.
        """
        self._decomposable("stack_head_results", heads=True)
        layer = self._layer_arg(layer)
        model = self.model
        parts, labels = [], []
        for i in range(layer):
            result_key = act_name("result", i)
            if result_key in self.cache_dict:
                r = _pos(self.cache_dict[result_key], pos_slice, 1)  # [B, (T,) H, d]
            else:
                z = _pos(self._get("z", i, "stack_head_results"), pos_slice, 1)  # [B, (T,) H, D]
                attn = model.blocks[i].attn
                w_o = attn.o.weight.view(-1, attn.n_heads, attn.head_dim)  # [d, H, D]
                r = torch.einsum("...hd,mhd->...hm", z, w_o.to(z.device, z.dtype))
            parts.append(r.movedim(-2, 0) * model.cfg.residual_scale)
            labels += [f"L{i}H{h}" for h in range(r.shape[-2])]
        if not parts:
            raise ValueError(
                "stack_head_results(layer=0) has no heads to stack; use layer >= 1 or None"
            )
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, sliced=True)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        stack: torch.Tensor,
        layer: int | None = None,
        *,
        mlp_input: bool = False,
        pos_slice: int | slice | None = None,
        sliced: bool = True,
    ) -> torch.Tensor:
        """Apply the norm that reads the residual at `layer` to each component of `stack` linearly.

        Uses the scale of the full residual stream (from the cache), so the normalized components
        sum to the normalized residual minus the norm's bias. `layer=None` is the final norm;
        otherwise `ln1` of block `layer` (`ln2` with `mlp_input=True`). Our weights are not folded,
        so the norm's weight is applied too. `stack` is [..., B, (T,) d] already position-sliced
        by `pos_slice` when `sliced` is True.
        """
        model = self._need_model("apply_ln_to_stack")
        layer = self._layer_arg(layer)
        n = self._n_layers()
        if layer == n:
            norm, resid = model.ln_final, self._get("resid_post", n - 1, "apply_ln_to_stack")
            if norm is None:
                raise ValueError(
                    "this model has no final norm (post-norm encoder); apply_ln_to_stack does not apply"
                )
        else:
            blk = model.blocks[layer]
            norm = blk.ln2 if mlp_input else blk.ln1
            resid = self._get("resid_mid" if mlp_input else "resid_pre", layer, "apply_ln_to_stack")
        resid = _pos(resid, pos_slice) if sliced else resid
        rf = resid.float()
        if norm.kind == "layernorm":
            scale = (rf.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            stack = stack - stack.float().mean(-1, keepdim=True).to(stack.dtype)
        else:
            scale = (rf.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        w = norm.weight.float() + (1.0 if norm.kind == "rmsnorm_gemma" else 0.0)
        return (stack.float() / scale * w.to(stack.device)).to(stack.dtype)

    def logit_attrs(
        self,
        stack: torch.Tensor,
        tokens: int | torch.Tensor,
        incorrect_tokens: int | torch.Tensor | None = None,
        *,
        pos_slice: int | slice | None = None,
    ) -> torch.Tensor:
        """Direct logit attribution: each component's contribution to the logit of `tokens`
        (minus that of `incorrect_tokens`), through the final norm's linear map.

        `stack` is [C, B, (T,) d] as returned by decompose_resid / stack_head_results with the same
        `pos_slice`; tokens is an int or a tensor broadcastable to [B] (or [B, T]). Returns [C, B, (T)].
        Summed over a full decomposition this is the logit (difference), minus the norm bias's share.
        """
        model = self._need_model("logit_attrs")
        if model.unembed is None:
            raise ValueError("logit_attrs needs an LM head; this model has none")
        normed = self.apply_ln_to_stack(stack, None, pos_slice=pos_slice)
        w_u = model.unembed.weight  # [V, d]
        direction = _unembed_dirs(w_u, tokens)
        if incorrect_tokens is not None:
            direction = direction - _unembed_dirs(w_u, incorrect_tokens)
        if direction.dim() == 2 and normed.dim() == 4:  # one token per sequence, every position
            direction = direction[:, None]
        return (normed * direction.to(normed.device, normed.dtype)).sum(-1)


def _pos(x: torch.Tensor, pos_slice: int | slice | None, dim: int = -2) -> torch.Tensor:
    """Select positions on the T axis (`dim`; the one before the last of [..., T, d])."""
    if pos_slice is None:
        return x
    index: list[Any] = [slice(None)] * x.dim()
    index[dim] = pos_slice
    return x[tuple(index)]


def _unembed_dirs(w_u: torch.Tensor, tokens: int | torch.Tensor) -> torch.Tensor:
    """Rows of the unembedding for `tokens`: [d] for an int, tokens.shape + [d] for a tensor."""
    if isinstance(tokens, int):
        return w_u[tokens]
    return w_u[torch.as_tensor(tokens, device=w_u.device).long()]
