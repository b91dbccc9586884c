"""LoRA (Hu et al. 2021), rsLoRA (Kalajdzievski 2023) and DoRA (Liu et al. 2024) on `nn.Linear` layers.

Each target Linear keeps its weight and gains child modules `lora_A` [r, in] and `lora_B`
[out, r] (and `lora_magnitude_vector` [out] for DoRA); a forward hook adds the update, so hook
names, state-dict names of the base and the KV cache are untouched. `lora_B` starts at zero:
the model is unchanged until training moves it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.config import ConfigError
from lmlab.errors import InputError
from lmlab.weights.hf import hf_renames

# PEFT LoraConfig fields that lmlab accepts only at these values (what lmlab always does)
_PEFT_DEFAULTS: dict[str, Any] = {
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "inference_mode": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}


@dataclass(init=False)
class LoraConfig:
    """Which Linear layers get LoRA and how it is scaled (lora_alpha/r, or /sqrt(r) with rsLoRA).

    Field names are PEFT's (`r`, `lora_alpha`, `lora_dropout`, `target_modules`, `use_rslora`,
    `use_dora`); `alpha` and `dropout` are accepted as older spellings of the same two fields.
    `target_modules` takes lmlab names (`attn.q`), transformers names (`q_proj`), regexes over
    either, or "all-linear". PEFT's `task_type` is accepted and ignored; other PEFT fields only
    at the value lmlab implements.
    """

    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str] | str
    use_rslora: bool
    use_dora: bool

    def __init__(
        self,
        r: int = 8,
        lora_alpha: float | None = None,
        lora_dropout: float | None = None,
        target_modules: list[str] | str | None = None,
        use_rslora: bool = False,
        use_dora: bool = False,
        *,
        alpha: float | None = None,
        dropout: float | None = None,
        task_type: str | None = None,
        **peft_fields: Any,
    ) -> None:
        self.r = r
        self.lora_alpha = float(_one_of("lora_alpha", lora_alpha, "alpha", alpha, 16.0))
        self.lora_dropout = float(_one_of("lora_dropout", lora_dropout, "dropout", dropout, 0.0))
        self.target_modules = ["attn.q", "attn.v"] if target_modules is None else target_modules
        self.use_rslora, self.use_dora = use_rslora, use_dora
        for k, v in peft_fields.items():
            if k not in _PEFT_DEFAULTS:
                raise InputError(
                    f"LoraConfig got an unknown field {k}={v!r}; lmlab's LoraConfig takes r, "
                    "lora_alpha, lora_dropout, target_modules, use_rslora, use_dora"
                )
            if v != _PEFT_DEFAULTS[k] and not (k == "inference_mode" and isinstance(v, bool)):
                raise InputError(
                    f"LoraConfig({k}={v!r}) is a PEFT option lmlab does not implement; leave it "
                    f"at {_PEFT_DEFAULTS[k]!r}"
                )

    @property
    def alpha(self) -> float:
        """Older name of `lora_alpha`."""
        return self.lora_alpha

    @property
    def dropout(self) -> float:
        """Older name of `lora_dropout`."""
        return self.lora_dropout

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _one_of(name: str, value: Any, old: str, old_value: Any, default: float) -> Any:
    if value is not None and old_value is not None and value != old_value:
        raise InputError(
            f"LoraConfig got {name}={value!r} and {old}={old_value!r}, two names for one "
            f"setting; pass only {name}"
        )
    return next((v for v in (value, old_value) if v is not None), default)


def module_name_maps(cfg: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(lmlab -> HF, HF -> lmlab) names of Linear modules that map one to one (from the family)."""
    to_hf = {}
    for hf, ours in hf_renames(cfg).items():
        if hf.endswith(".weight") and ours.endswith(".weight"):
            to_hf[ours[: -len(".weight")]] = hf[: -len(".weight")]
    return to_hf, {v: k for k, v in to_hf.items()}


def linear_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in the model (what LoRA can target)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _matches(target: str, name: str | None) -> bool:
    if name is None:
        return False
    if name == target or name.endswith("." + target):
        return True
    try:
        return re.fullmatch(target, name) is not None
    except re.error:
        return False


def match_targets(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Linear layers a target names: equal to, ending with (`attn.q`, `q_proj`) or fully matching
    as a regex an lmlab name or its transformers name; "all-linear" is every Linear but `unembed`.
    A target that matches nothing is an error listing the names this model has."""
    if isinstance(targets, str):
        targets = [targets]
    names = [n for n in linear_names(model) if not re.search(r"\.lora_[AB]$", n)]
    to_hf = _hf_names(model)
    found, unmatched = [], []
    for t in targets:
        if t == "all-linear":
            hits = [n for n in names if n != "unembed"]
        else:
            hits = [n for n in names if _matches(t, n) or _matches(t, to_hf.get(n))]
        if not hits:
            unmatched.append(t)
        found += [n for n in hits if n not in found]
    if unmatched:
        ours = sorted({re.sub(r"^blocks\.\d+\.", "", n) for n in names})
        theirs = sorted({to_hf[n].rsplit(".", 1)[-1] for n in names if n in to_hf})
        raise InputError(
            f"LoRA target_modules {unmatched} match no Linear layer of this model; its Linear "
            f"layers are {ours} inside blocks.0..{_n_blocks(model) - 1}"
            + (f", in transformers' names {theirs}" if theirs else "")
            + (
                ""
                if set(theirs) - {"lm_head"}
                else "; this family's transformers layers do not map one to one to lmlab's "
                "(e.g. GPT-2's Conv1D c_attn fuses q|k|v), so use lmlab's names"
            )
            + r" (e.g. 'attn.q', 'q_proj', 'blocks.0.mlp.up', 'all-linear', or a regex like "
            r"'blocks\.[0-3]\.attn\.(q|v)')"
        )
    return [n for n in names if n in found]


def _hf_names(model: nn.Module) -> dict[str, str]:
    """lmlab -> transformers Linear names of an lmlab model ({} for a custom or foreign module)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "family"):
        return {}
    try:
        return module_name_maps(cfg)[0]
    except ConfigError:  # a custom Config that fits no family has no transformers names
        return {}


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
    if not isinstance(cfg.r, int) or isinstance(cfg.r, bool) or cfg.r < 1:
        raise InputError(f"LoRA rank r={cfg.r!r} must be a positive integer (e.g. r=8)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise InputError(f"LoRA lora_dropout={cfg.lora_dropout} must be in [0, 1)")
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
        lin.lora_dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
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
