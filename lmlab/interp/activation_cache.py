"""`run_with_cache` and `ActivationCache`: activations recorded at hook points, TransformerLens style.

`run_with_cache(model, tokens)` records the selected hook points during one forward. The cache is
indexed by full hook name (`cache["blocks.0.hook_resid_post"]`) or by a short name and a layer
(`cache["pattern", 3]`, `cache["normalized", 2, "ln2"]`); short names are read off the model's own
hook names (`blocks.{layer}.[module.]hook_{short}`), so every hook the model has is reachable
without a table of where each one lives. The residual-stream algebra (decompositions, per-head
outputs, direct logit attribution) applies the model's own norm modules.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from lmlab.hooks import HookError, HookPoint, NameFilter

ALIASES = {"attn": "pattern"}  # TransformerLens's second name for the attention pattern
_HOOK = re.compile(r"(?:blocks\.(?P<layer>\d+)\.)?(?:(?P<sub>.+)\.)?hook_(?P<short>\w+)")
# Where a short name with no sub-module given points when several modules have it (TransformerLens's
# choice): a norm activation means the block's first norm, or the final norm outside the blocks.
_DEFAULT_SUB = {"normalized": ("ln1", "ln_final"), "scale": ("ln1", "ln_final")}
# TransformerLens's naming rule, for code that names a hook before it has a model (act_name).
_ATTN = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result")
_MLP = ("pre", "pre_linear", "post", "router_logits", "expert_weights", "expert_indices")


class HookNames:
    """Index of hook names by (layer, short name): resolves `("pattern", 3)` to its full name."""

    def __init__(self, names: Iterable[str]) -> None:
        self.by_short: dict[tuple[int | None, str], list[tuple[str, str]]] = {}
        for full in names:
            m = _HOOK.fullmatch(full)
            if m is None:
                continue
            layer = int(m["layer"]) if m["layer"] is not None else None
            self.by_short.setdefault((layer, m["short"]), []).append((m["sub"] or "", full))

    def resolve(self, name: str, layer: int | None = None, sub: str | None = None) -> str:
        """The full hook name a short `name` (with its layer, and sub-module when ambiguous) means."""
        short = ALIASES.get(name, name)
        found = self.by_short.get((layer, short), [])
        if sub is not None:
            found = [f for f in found if f[0] == sub]
        if len(found) > 1:
            for default in _DEFAULT_SUB.get(short, ()):
                found = [f for f in found if f[0] == default] or found
        if len(found) == 1:
            return found[0][1]
        if len(found) > 1:
            subs = [f[0] for f in found]
            raise HookError(
                f"{name!r} at layer {layer} is in several modules {subs}; name one, e.g. "
                f"({name!r}, {layer}, {subs[0]!r})"
            )
        shorts = {s for _, s in self.by_short}
        top_level = any(la is None and s == short for la, s in self.by_short)
        if short in shorts and layer is None and not top_level:
            raise HookError(
                f"activation {name!r} lives in every block; give a layer, e.g. ({name!r}, 0)"
            )
        if short in shorts:
            where = sorted(
                {
                    f"{s}" if la is None else f"{s} in block {la}"
                    for (la, s) in self.by_short
                    if s == short
                }
            )
            raise HookError(
                f"no {name!r}{'' if sub is None else f' in {sub!r}'} at layer {layer}; it exists "
                f"as {where[:4]}"
            )
        near = difflib.get_close_matches(short, sorted(shorts | set(ALIASES)), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise HookError(
            f"unknown activation {name!r}.{hint} Short names: {', '.join(sorted(shorts))}"
        )


def hook_name(model: Any, name: str, layer: int | None = None, sub: str | None = None) -> str:
    """Full name of one of `model`'s hook points: `hook_name(model, "z", 3)` -> `blocks.3.attn.hook_z`."""
    return HookNames(model.hook_names()).resolve(name, layer, sub)


def act_name(name: str, layer: int | None = None, sub: str | None = None) -> str:
    """TransformerLens's `get_act_name` rule, for naming a hook before there is a model.

    With a model at hand prefer `hook_name(model, ...)`, which reads the model's own names.
    """
    name = ALIASES.get(name, name)
    if name in ("normalized", "scale"):
        return (
            f"ln_final.hook_{name}"
            if layer is None
            else f"blocks.{layer}.{sub or 'ln1'}.hook_{name}"
        )
    if name in ("embed", "pos_embed", "token_type_embed"):
        return f"hook_{name}"
    if layer is None:
        raise HookError(
            f"activation {name!r} lives in every block; give a layer, e.g. ({name!r}, 0)"
        )
    module = sub or ("attn" if name in _ATTN else "mlp" if name in _MLP else "")
    return f"blocks.{layer}.{module + '.' if module else ''}hook_{name}"


# ------------------------------------------------------------------------------ recording


def run_with_cache(
    model: Any,
    *args: Any,
    names_filter: NameFilter = None,
    device: str | torch.device | None = None,
    stop_at_layer: int | str | None = None,
    grads: bool = False,
    **kwargs: Any,
) -> tuple[Any, ActivationCache]:
    """One forward of `model` that records the activations at the selected hook points.

    Only the selected hook points are touched, so caching one layer costs little; attention
    patterns are built (the explicit softmax path) only where a pattern is requested.
    `stop_at_layer=L` runs blocks 0..L-1 only and returns the residual stream entering block L;
    `"auto"` stops right after the last block that holds a requested hook. With `grads=False`
    the forward runs without autograd (less memory); with `grads=True` the cached tensors stay
    in the graph, so `torch.autograd.grad(metric, cache[name])` works.
    """
    names = model.match_hooks(names_filter)
    stop = _resolve_stop(len(model.blocks), stop_at_layer, names)
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
        out = model.run_with_hooks(*args, fwd_hooks=[(n, save) for n in names], **kwargs)
    return out, ActivationCache(store, model)


def _layer_of(name: str) -> int | None:
    """Block index of a hook name (`blocks.3.attn.hook_z` -> 3), None for embeddings / final norm."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _resolve_stop(n_layers: int, stop_at_layer: int | str | None, names: list[str]) -> int | None:
    """Validate `stop_at_layer` (int, negative int, "auto" or None) against the requested hooks."""
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
        if (layer is None and not n.startswith("hook_")) or (layer is not None and layer >= stop)
    ]
    if late and stop < n_layers:
        raise HookError(
            f"stop_at_layer={stop_at_layer} stops before hook point(s) {late[:3]}, which would never "
            f"fire; raise stop_at_layer or narrow names_filter"
        )
    return stop


# ------------------------------------------------------------------------------ the cache


class ActivationCache:
    """Activations recorded by `run_with_cache`, indexed by full name or `(short_name, layer[, sub])`."""

    def __init__(self, store: dict[str, torch.Tensor], model: Any = None) -> None:
        self.cache_dict = store
        self.model = model
        self._names: HookNames | None = None

    @property
    def names(self) -> HookNames:
        """Short-name index over the model's hook names (the cached ones when there is no model)."""
        if self._names is None:
            self._names = HookNames(
                self.model.hook_names() if self.model is not None else self.cache_dict
            )
        return self._names

    def _key(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return self.names.resolve(*key)
        if key in self.cache_dict or "." in key or key.startswith("hook_"):
            return key
        return self.names.resolve(key)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        full = self._key(key)
        if full not in self.cache_dict:
            near = difflib.get_close_matches(full, list(self.cache_dict), n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise HookError(
                f"{full!r} is not in this cache ({len(self.cache_dict)} entries).{hint} Pass a "
                "names_filter that includes it to run_with_cache (or names_filter=None)"
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
        """(full name, activation) pairs, in forward order."""
        return list(self.cache_dict.items())

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor moved to `device`."""
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model)

    def layers(self, name: str, sub: str | None = None) -> list[torch.Tensor]:
        """The cached activation `name` from every block that has it, in layer order."""
        held = HookNames(self.cache_dict)
        found = sorted(
            (layer, held.resolve(name, layer, sub))
            for layer, short in held.by_short
            if layer is not None and short == ALIASES.get(name, name)
        )
        return [self.cache_dict[k] for _, k in found]

    def __repr__(self) -> str:
        return f"ActivationCache({len(self.cache_dict)} activations)"

    # ------------------------------------------------------------------ residual-stream algebra
    def _need_model(self, what: str) -> Any:
        if self.model is None:
            raise ValueError(
                f"ActivationCache.{what} needs the model; build the cache with run_with_cache(model, ...)"
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
        key = self.names.resolve(name, layer)
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

        Returns [components, B, T, d]. `apply_ln=True` passes each component through the model's
        final norm with its own scale (the logit lens view).
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
                key = self.names.resolve(name)
                if key in self.cache_dict:
                    parts.append(self.cache_dict[key])
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
        # pos_embed is [1, T, d]: broadcast it over the batch
        stack = _pos(torch.stack(torch.broadcast_tensors(*parts)), pos_slice)
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
            result_key = self.names.resolve("result", i)
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

        The model's own norm module does the maths (`Norm.linear`) with the scale of the full
        residual stream (`Norm.divisor` of the cached residual), so the normalized components sum
        to the normalized residual minus the norm's bias. `layer=None` is the final norm;
        otherwise `ln1` of block `layer` (`ln2` with `mlp_input=True`). `stack` is
        [..., B, (T,) d], already position-sliced by `pos_slice` when `sliced` is True.
        """
        model = self._need_model("apply_ln_to_stack")
        layer = self._layer_arg(layer)
        n = self._n_layers()
        if layer == n:
            norm, resid = model.ln_final, self._get("resid_post", n - 1, "apply_ln_to_stack")
            where = "final norm (post-norm encoder)"
        else:
            blk = model.blocks[layer]
            norm = blk.ln2 if mlp_input else blk.ln1
            resid = self._get("resid_mid" if mlp_input else "resid_pre", layer, "apply_ln_to_stack")
            where = f"norm before block {layer}'s {'MLP' if mlp_input else 'attention'}"
        if norm is None:
            raise ValueError(f"this model has no {where}; apply_ln_to_stack does not apply")
        resid = _pos(resid, pos_slice) if sliced else resid
        scale = norm.divisor(resid).to(stack.device)
        return norm.linear(stack, scale).to(stack.dtype)

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
