"""Ablations: replace heads, whole MLPs or single neurons with their mean (or zero) and rerun.

A component "matters" for a behaviour when replacing its output by its average over a
reference batch (mean ablation) breaks the behaviour; zero ablation is the cruder variant.
Components are named as strings: "L0H1" (head 1 of layer 0), "L0MLP" (layer 0's MLP output),
"L0N17" (neuron 17 of layer 0's MLP).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from lmlab.hooks import HookPoint
from lmlab.interp.activation_cache import run_with_cache
from lmlab.model import Transformer

_NAME = re.compile(r"^L(\d+)(?:H(\d+)|N(\d+)|(MLP))$")
MODES = ("mean", "zero")


def parse_component(name: str, model: Transformer) -> tuple[str, int, int | None]:
    """'L0H1' -> ("head", 0, 1); 'L0MLP' -> ("mlp", 0, None); 'L0N17' -> ("neuron", 0, 17)."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(
            f"component {name!r} is not understood; write 'L<layer>H<head>', 'L<layer>MLP' or "
            "'L<layer>N<neuron>', e.g. 'L0H1'"
        )
    layer = int(m.group(1))
    cfg = model.cfg
    if layer >= cfg.n_layers:
        raise ValueError(f"component {name!r}: layer {layer} >= n_layers={cfg.n_layers}")
    if m.group(2) is not None:
        head = int(m.group(2))
        if head >= cfg.n_heads:
            raise ValueError(f"component {name!r}: head {head} >= n_heads={cfg.n_heads}")
        return "head", layer, head
    if model.blocks[layer].mlp is None:
        raise ValueError(f"component {name!r}: layer {layer} has no MLP (attention-only model)")
    if m.group(4):
        return "mlp", layer, None
    neuron = int(m.group(3))
    if neuron >= cfg.d_ff:
        raise ValueError(f"component {name!r}: neuron {neuron} >= d_ff={cfg.d_ff}")
    return "neuron", layer, neuron


def _hook_name(kind: str, layer: int) -> str:
    return {
        "head": f"blocks.{layer}.attn.hook_z",
        "mlp": f"blocks.{layer}.hook_mlp_out",
        "neuron": f"blocks.{layer}.mlp.hook_post",
    }[kind]


def mean_activations(
    model: Transformer, tokens: torch.Tensor, components: list[str]
) -> dict[str, torch.Tensor]:
    """Mean over batch and positions of the hook activations the components live in."""
    names = sorted({_hook_name(*parse_component(c, model)[:2]) for c in components})
    with torch.no_grad():
        _, cache = run_with_cache(model, tokens, names_filter=names)
    return {n: cache[n].float().mean((0, 1)) for n in names}


def ablation_hooks(
    model: Transformer,
    components: list[str],
    *,
    mode: str = "mean",
    means: dict[str, torch.Tensor] | None = None,
) -> list[tuple[str, object]]:
    """Forward hooks that ablate `components` (for `run_with_hooks` / `model.hooks`)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose 'mean' or 'zero'")
    if mode == "mean" and means is None:
        raise ValueError(
            "mode='mean' needs means=mean_activations(model, reference_tokens, components)"
        )
    targets: dict[str, list[int | None]] = defaultdict(list)
    for c in components:
        kind, layer, idx = parse_component(c, model)
        name = _hook_name(kind, layer)
        if mode == "mean" and name not in means:
            raise ValueError(f"means has no entry for {name} (component {c!r}); recompute them")
        targets[name].append(idx)

    def make(name: str, idxs: list[int | None]):
        def hook(act: torch.Tensor, h: HookPoint) -> torch.Tensor:
            fill = means[name].to(act.dtype) if mode == "mean" else torch.zeros_like(act[0, 0])
            act = act.clone()
            for i in idxs:
                if i is None:
                    act[:] = fill
                elif act.dim() == 4:  # hook_z [B, T, H, D]
                    act[:, :, i] = fill[i]
                else:  # hook_post [B, T, d_ff]
                    act[..., i] = fill[i]
            return act

        return hook

    return [(name, make(name, idxs)) for name, idxs in targets.items()]


def run_ablated(
    model: Transformer,
    tokens: torch.Tensor,
    components: list[str],
    *,
    mode: str = "mean",
    means: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of `tokens` with `components` ablated."""
    with torch.no_grad():
        if not components:
            return model(tokens)
        return model.run_with_hooks(
            tokens, fwd_hooks=ablation_hooks(model, components, mode=mode, means=means)
        )
