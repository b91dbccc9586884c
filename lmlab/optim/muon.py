"""Muon (MomentUm Orthogonalized by Newton–Schulz) for hidden matrices, AdamW for the rest, in one
optimizer object.

Muon step for a matrix W with gradient G (Keller Jordan, 2024):
    B <- μ B + (1 - μ) G;   U = G + μ (B - G) (Nesterov) or B
    O = NewtonSchulz5(U / ||U||_F)  (bf16; ≈ U V^T of U's SVD; Keller's quintic at every step, or
        `ns_coeffs="per-step"`: one minimax quintic per step, lmlab.optim.per_step)
    W <- (1 - lr·wd) W - lr · sqrt(max(1, rows/cols)) · O
3-D tensors [E, rows, cols] (stacked MoE experts) are orthogonalized per expert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lmlab.optim.newton_schulz import KELLER, Coeffs, orthogonalize, resolve_coeffs


class Muon(torch.optim.Optimizer):
    """One optimizer over param groups flagged `use_muon` (Muon) or not (AdamW).

    Plain parameter lists are split by shape: 2-D and larger -> Muon, the rest -> AdamW; use
    `muon_param_groups(model)` to keep embeddings and the output head on AdamW too.
    Under DDP each rank sees the same all-reduced gradients and computes the same update;
    `shard=True` splits the Newton–Schulz work across ranks and broadcasts the results.
    `ns_coeffs`: Keller's (a, b, c) at every step (default), "per-step" (one minimax quintic per
    step, `lmlab.optim.per_step`), any triple, or one triple per step (`ns_steps` of them).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coeffs: Coeffs | Sequence[Coeffs] | str = KELLER,
        weight_decay: float = 0.0,
        adamw_lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        shard: bool = False,
    ) -> None:
        if lr <= 0 or adamw_lr <= 0:
            raise ValueError(f"Muon lr={lr}, adamw_lr={adamw_lr}: learning rates must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon momentum={momentum} must be in [0, 1); Keller uses 0.95")
        if ns_steps < 1:
            raise ValueError(f"Muon ns_steps={ns_steps} must be >= 1 (5 is the default)")
        groups = _as_groups(params)
        for g in groups:
            if not g.get("use_muon", False):
                g.setdefault("lr", adamw_lr)
                g.setdefault("weight_decay", adamw_weight_decay)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coeffs=ns_coeffs,
            weight_decay=weight_decay,
            betas=betas,
            eps=eps,
            use_muon=False,
        )
        self.shard = shard
        super().__init__(groups, defaults)
        for g in self.param_groups:
            if g["use_muon"]:
                g["ns_coeffs"] = _group_coeffs(g["ns_coeffs"], g["ns_steps"])
                for p in g["params"]:
                    if p.ndim < 2:
                        raise ValueError(
                            f"Muon group has a {p.ndim}-D parameter of shape {tuple(p.shape)}; "
                            "put vectors (norms, biases) in a group with use_muon=False"
                        )
                    if type(p).__name__ == "DTensor":
                        raise ValueError(
                            "Muon needs whole matrices but got a DTensor (FSDP shard); "
                            "train Muon with parallel='ddp'"
                        )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            if g["use_muon"]:
                self._muon_group(g)
            else:
                self._adamw_group(g)
        return loss

    def _muon_group(self, g: dict[str, Any]) -> None:
        params = [p for p in g["params"] if p.grad is not None]
        rank, world = _dist_rank_world() if self.shard else (0, 1)
        updates: list[torch.Tensor | None] = [None] * len(params)
        buckets: dict[tuple, list[int]] = {}  # same-shaped matrices go through one batched call
        for i, p in enumerate(params):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - g["momentum"])
            if i % world == rank:
                buckets.setdefault((tuple(p.shape), p.dtype, p.device), []).append(i)
        for idx in buckets.values():
            u = torch.stack(
                [
                    params[i].grad.lerp(self.state[params[i]]["momentum_buffer"], g["momentum"])
                    if g["nesterov"]
                    else self.state[params[i]]["momentum_buffer"]
                    for i in idx
                ]
            )
            for i, o in zip(idx, orthogonalize(u, g["ns_steps"], g["ns_coeffs"]), strict=True):
                updates[i] = o
        if world > 1:
            import torch.distributed as dist

            for i, p in enumerate(params):
                if updates[i] is None:
                    updates[i] = torch.empty_like(p)
                dist.broadcast(updates[i], src=i % world)
        for p, o in zip(params, updates, strict=True):
            scale = math.sqrt(max(1.0, p.shape[-2] / p.shape[-1]))
            if g["weight_decay"]:
                p.mul_(1 - g["lr"] * g["weight_decay"])
            p.add_(o, alpha=-g["lr"] * scale)

    def _adamw_group(self, g: dict[str, Any]) -> None:
        beta1, beta2 = g["betas"]
        for p in g["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v / (1 - beta2**t)).sqrt_().add_(g["eps"])
            if g["weight_decay"]:
                p.mul_(1 - g["lr"] * g["weight_decay"])
            p.addcdiv_(m, denom, value=-g["lr"] / (1 - beta1**t))


def _group_coeffs(coeffs: Any, steps: int) -> Coeffs | tuple[Coeffs, ...]:
    """Validate a group's Newton–Schulz coefficients and store the numbers: one triple when every
    step uses the same (Keller's default, as torch.optim.Muon stores it), else one per step."""
    schedule = resolve_coeffs(coeffs, steps)
    return schedule[0] if len(set(schedule)) == 1 else schedule


def _as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params)
    if not items:
        raise ValueError(
            "Muon got no parameters; pass model.parameters() or muon_param_groups(model)"
        )
    if all(isinstance(x, dict) for x in items):
        for k, gr in enumerate(items):
            if "use_muon" not in gr:
                raise ValueError(
                    f"param group {k} has no 'use_muon' flag; set use_muon=True for hidden matrices "
                    "and False for the rest (muon_param_groups(model) does this)"
                )
        return [dict(gr) for gr in items]
    muon = [p for p in items if p.ndim >= 2]
    rest = [p for p in items if p.ndim < 2]
    return [
        gr
        for gr in ({"params": muon, "use_muon": True}, {"params": rest, "use_muon": False})
        if gr["params"]
    ]


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def muon_param_groups(
    model: nn.Module, weight_decay: float = 0.0, adamw_weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Split a model: 2-D+ weights inside `model.blocks` (attention, MLP, router, per-expert MoE
    matrices) -> Muon; embeddings, output head, norms, biases, sinks and everything outside the
    blocks -> AdamW (with `adamw_weight_decay` on its matrices only)."""
    has_blocks = hasattr(model, "blocks")
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    muon, adam_decay, adam_plain, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        hidden = name.startswith("blocks.") if has_blocks else id(p) not in embeds
        if hidden and p.ndim >= 2 and not name.endswith("bias") and id(p) not in embeds:
            muon.append(p)
        elif p.ndim >= 2 and id(p) not in embeds:
            adam_decay.append(p)
        else:
            adam_plain.append(p)
    groups = [
        {"params": muon, "use_muon": True, "weight_decay": weight_decay},
        {"params": adam_decay, "use_muon": False, "weight_decay": adamw_weight_decay},
        {"params": adam_plain, "use_muon": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
