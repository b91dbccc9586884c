"""LoRA (Hu et al. 2021), rsLoRA (Kalajdzievski 2023) and DoRA (Liu et al. 2024) on `nn.Linear` layers.

Each target Linear keeps its weight and gains child modules `lora_A` [r, in] and `lora_B`
[out, r] (and `lora_magnitude_vector` [out] for DoRA); a forward hook adds the update, so hook
names, state-dict names of the base and the KV cache are untouched. `lora_B` starts at zero:
the model is unchanged until training moves it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoraConfig:
    """Which Linear layers get LoRA and how it is scaled (alpha/r, or alpha/sqrt(r) with rsLoRA)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["attn.q", "attn.v"])
    use_rslora: bool = False
    use_dora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def linear_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in the model (what LoRA can target)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def match_targets(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Linear layers whose name ends with a target (`attn.q`), equals it, or matches it as a regex."""
    if isinstance(targets, str):
        targets = [targets]
    names = [n for n in linear_names(model) if not re.search(r"\.lora_[AB]$", n)]
    found = []
    for n in names:
        for t in targets:
            if n == t or n.endswith("." + t) or re.fullmatch(t, n):
                found.append(n)
                break
    if not found:
        short = sorted({re.sub(r"^blocks\.\d+\.", "", n) for n in names})
        raise ValueError(
            f"LoRA target_modules {targets} match no Linear layer of this model; its Linear layers "
            f"are {short} inside blocks.0..{_n_blocks(model) - 1} (e.g. 'attn.q', "
            r"'blocks.0.mlp.up', or a regex like 'blocks\.[0-3]\.attn\.(q|v)')"
        )
    return found


def _n_blocks(model: nn.Module) -> int:
    return len(getattr(model, "blocks", [])) or 1


def _lora_hook(lin: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
    if getattr(lin, "lora_merged", False) or not getattr(lin, "lora_enabled", True):
        return out
    x = lin.lora_dropout(args[0])
    delta = lin.lora_B(lin.lora_A(x.to(lin.lora_A.weight.dtype))) * lin.lora_scaling
    if not hasattr(lin, "lora_magnitude_vector"):
        return out + delta.to(out.dtype)
    # DoRA: m * (W + s B A) x / ||W + s B A||_row (+ bias); the norm is not differentiated (paper 4.3)
    norm = dora_weight_norm(lin).detach()
    bias = lin.bias if lin.bias is not None else 0.0
    mag = lin.lora_magnitude_vector / norm
    return (mag * (out - bias + delta) + bias).to(out.dtype)


def dora_weight_norm(lin: nn.Linear) -> torch.Tensor:
    """Row norms [out] of the adapted weight W + s B A."""
    w = lin.weight.float() + lin.lora_scaling * (
        lin.lora_B.weight.float() @ lin.lora_A.weight.float()
    )
    return w.norm(dim=1).to(lin.weight.dtype)


def apply_lora(model: nn.Module, config: LoraConfig | None = None, **kwargs) -> list[str]:
    """Add LoRA to the matching Linear layers, freeze everything else; returns the adapted names."""
    cfg = config or LoraConfig(**kwargs)
    if not isinstance(cfg.r, int) or cfg.r < 1:
        raise ValueError(f"LoRA rank r={cfg.r!r} must be a positive integer (e.g. r=8)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"LoRA dropout={cfg.dropout} must be in [0, 1)")
    names = match_targets(model, cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for n in names:
        lin = modules[n]
        if hasattr(lin, "lora_A"):
            raise ValueError(f"{n} already has LoRA; call remove_lora(model) first")
        dev, dt = lin.weight.device, lin.weight.dtype
        lin.lora_A = nn.Linear(lin.in_features, cfg.r, bias=False, device=dev, dtype=dt)
        lin.lora_B = nn.Linear(cfg.r, lin.out_features, bias=False, device=dev, dtype=dt)
        nn.init.kaiming_uniform_(lin.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(lin.lora_B.weight)
        lin.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        lin.lora_scaling, lin.lora_merged, lin.lora_enabled = cfg.scaling, False, True
        if cfg.use_dora:
            with torch.no_grad():
                lin.lora_magnitude_vector = nn.Parameter(dora_weight_norm(lin).clone())
        lin.lora_handle = lin.register_forward_hook(_lora_hook)
    model.lora_config = cfg
    return names


def lora_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers that carry LoRA, by name."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "lora_A")
    }


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold each update into its weight (W <- W + s B A, DoRA: rescaled rows); outputs unchanged."""
    for lin in lora_layers(model).values():
        if lin.lora_merged:
            continue
        lin.lora_weight_backup = lin.weight.detach().clone()
        delta = lin.lora_scaling * (lin.lora_B.weight.float() @ lin.lora_A.weight.float())
        if hasattr(lin, "lora_magnitude_vector"):
            w = lin.weight.float() + delta
            new = w * (lin.lora_magnitude_vector.float() / w.norm(dim=1)).unsqueeze(1)
            lin.weight.copy_(new.to(lin.weight.dtype))
        else:
            lin.weight.add_(delta.to(lin.weight.dtype))
        lin.lora_merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`: the saved base weights come back bit for bit."""
    for lin in lora_layers(model).values():
        if lin.lora_merged:
            lin.weight.copy_(lin.lora_weight_backup)
            del lin.lora_weight_backup
            lin.lora_merged = False


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch the updates off (base model outputs) or back on without removing them."""
    for lin in lora_layers(model).values():
        lin.lora_enabled = enabled


def remove_lora(model: nn.Module, merge: bool = False) -> None:
    """Take LoRA off the model (merging it into the weights first when `merge`)."""
    if merge:
        merge_lora(model)
    else:
        unmerge_lora(model)
    for lin in lora_layers(model).values():
        lin.lora_handle.remove()
        for a in (
            "lora_A",
            "lora_B",
            "lora_dropout",
            "lora_magnitude_vector",
            "lora_weight_backup",
        ):
            if hasattr(lin, a):
                delattr(lin, a)
        for a in ("lora_handle", "lora_scaling", "lora_merged", "lora_enabled"):
            lin.__dict__.pop(a, None)
    if hasattr(model, "lora_config"):
        del model.lora_config
