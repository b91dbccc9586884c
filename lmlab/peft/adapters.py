"""Bottleneck adapters: Houlsby et al. 2019 (after attention and after the MLP) or Pfeiffer et al.
2020 (after the MLP only). Each adapter is x + up(act(down(x))) with a near-zero `up`, so the
model starts almost exactly where it was; they attach with forward hooks (no model edits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


class Adapter(nn.Module):
    """x -> x + up(gelu(down(x))) with bottleneck d_model // reduction_factor."""

    def __init__(self, d_model: int, reduction_factor: int, init_std: float = 1e-4):
        super().__init__()
        hidden = max(1, d_model // reduction_factor)
        self.down = nn.Linear(d_model, hidden)
        self.up = nn.Linear(hidden, d_model)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x))).to(x.dtype)


def apply_adapters(
    model: nn.Module,
    reduction_factor: int = 16,
    placement: str = "houlsby",
    train_norms: bool = False,
    freeze_base: bool = True,
) -> list[Adapter]:
    """Add an adapter after each block's attention and/or MLP output (registered as `<sub>.adapter`)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; choose one of {sorted(PLACEMENTS)}")
    if not isinstance(reduction_factor, int) or not 1 <= reduction_factor <= model.cfg.d_model:
        raise ValueError(
            f"reduction_factor={reduction_factor!r} must be an integer in 1..d_model={model.cfg.d_model}"
        )
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    ref = next(model.parameters())
    added = []
    for blk in model.blocks:
        for where in PLACEMENTS[placement]:
            sub = getattr(blk, where)
            if sub is None:  # attention-only blocks have no MLP
                continue
            if hasattr(sub, "adapter"):
                raise ValueError(
                    "this model already has adapters; call remove_adapters(model) first"
                )
            sub.adapter = Adapter(model.cfg.d_model, reduction_factor).to(ref.device, ref.dtype)
            sub.adapter_handle = sub.register_forward_hook(lambda m, a, out: m.adapter(out))
            added.append(sub.adapter)
        if train_norms:
            for name in ("ln1", "ln2"):
                if getattr(blk, name, None) is not None:
                    for p in getattr(blk, name).parameters():
                        p.requires_grad_(True)
    model.adapter_placement = placement
    return added


def remove_adapters(model: nn.Module) -> None:
    """Take every adapter off."""
    for blk in model.blocks:
        for where in ("attn", "mlp"):
            sub = getattr(blk, where)
            if sub is not None and hasattr(sub, "adapter"):
                sub.adapter_handle.remove()
                del sub.adapter
                sub.__dict__.pop("adapter_handle", None)
    model.__dict__.pop("adapter_placement", None)
