"""Decode weights packed once for the CPU's matrix-multiply kernels: an object the decoder builds.

On a CPU every `nn.Linear` call re-lays its weight out for the GEMM kernel (MKL for float32,
oneDNN for bfloat16) before multiplying. At decode shapes (a few rows per step) that repacking is
a large part of the matmul: packing each weight once per generation and reusing it makes a
16-row step's matmuls 1.3-1.5x faster with bit-identical outputs. Projections that read one input
(q/k/v, gate/up) are packed as one weight: fewer calls, and a wider GEMM streams the weights
faster. Batch 1 gains nothing (the kernel is then a matrix-vector product that reads the weight as
it is), so callers pack only for several rows. PyTorch's inductor uses the same packed kernels
when it freezes weights. Where a kernel does not work on this CPU (oneDNN's bf16 path needs
AVX-512 or AVX-NE-CONVERT) or `LMLAB_KERNELS=plain` is set, nothing is packed (`lmlab.kernels`).

`PackedWeights(model, rows)` holds the packed weights; `run(...)` calls the model with them standing
in for the linears' weights during that call only (as `torch.func.functional_call` would, without
its per-call walk over every module), so no forward is replaced and nothing stays on the model.
Each packed weight is the plain weight's storage under a tensor type whose `F.linear` runs the
packed kernel; any other use of it (a hook reading the weight) sees the plain weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab import kernels


def can_pack(model: nn.Module, rows: int) -> bool:
    """Packing pays off: CPU weights, no gradients, several rows, and the packed kernel for the
    model's dtype (bf16 under bf16 autocast) works on this CPU (`lmlab.kernels`)."""
    p = next(model.parameters(), None)
    return (
        p is not None
        and p.device.type == "cpu"
        and rows > 1
        and not torch.is_grad_enabled()
        and _has_kernel(_kernel_dtype(p.dtype, _low()))
    )


# Linears of one module that read the same input, multiplied as one while packed, in the order of
# the product's columns (the module calls the first one first).
FUSABLE = (("q", "k", "v"), ("gate", "up"))


class PackedWeights:
    """Every plain, unhooked `nn.Linear` of `model` packed for `rows`-row inputs.

    bf16 for oneDNN under bf16 autocast or for bf16 weights (any row count, e.g. a prefill before
    the decode steps), else float32 for MKL (inputs of exactly `rows` rows; others take the plain
    path, where the packing would not apply). Build it after autocast is set, as `can_pack` was
    checked; weights and hooks must not change while it is used. Drop it to free the packed copies.
    """

    def __init__(self, model: nn.Module, rows: int) -> None:
        self.model, self.rows = model, rows
        self.tensors: dict[str, PackedWeight] = {}  # parameter name -> packed weight
        self._linears: list[tuple[nn.Linear, PackedWeight]] = []
        low, names = _low(), {id(m): n for n, m in model.named_modules()}
        groups = []
        for linears in _groups(model):
            dtype = _kernel_dtype(linears[0].weight.dtype, low)
            if _has_kernel(dtype):  # else (e.g. the bf16 linears of a mixed model): plain path
                groups.append((linears, dtype))
        # Weights are stacked / cast into one reused buffer per dtype before packing: fresh memory
        # for each would cost a page fault per 4 KiB, more than the copy itself.
        sizes: dict[torch.dtype, int] = {}
        for linears, dtype in groups:
            if len(linears) > 1 or linears[0].weight.dtype != dtype:
                n = sum(m.weight.numel() for m in linears)
                sizes[dtype] = max(sizes.get(dtype, 0), n)
        staging = {dtype: torch.empty(n, dtype=dtype) for dtype, n in sizes.items()}
        for linears, dtype in groups:
            group = _Group(linears, _packed_matmul(linears, rows, dtype, staging))
            for i, m in enumerate(linears):
                weight = PackedWeight.wrap(m.weight, group, i)
                self.tensors[f"{names[id(m)]}.weight"] = weight
                self._linears.append((m, weight))

    def run(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`model(*args, **kwargs)` with the packed weights."""
        return self._with(self.model, *args, **kwargs)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`model.to_logits(hidden)` with the packed head."""
        return self._with(self.model.to_logits, hidden)

    def _with(self, fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """fn(*args, **kwargs) with each packed weight standing in for its linear's weight."""
        plain = [m._parameters["weight"] for m, _ in self._linears]
        try:
            for m, weight in self._linears:
                m._parameters["weight"] = weight
            return fn(*args, **kwargs)
        finally:
            for (m, _), w in zip(self._linears, plain, strict=True):
                m._parameters["weight"] = w


class _Group:
    """Linears that read one input, multiplied as one packed GEMM; hands each member its columns."""

    def __init__(self, linears: list[nn.Linear], matmul: Callable) -> None:
        self.matmul, self.sizes = matmul, [m.out_features for m in linears]
        self.x: torch.Tensor | None = None
        self.parts: list[torch.Tensor] = []

    def output(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member i's output for input x, or None where the plain linear should run."""
        if i == 0:
            self.x, self.parts = None, []
            out = self.matmul(x)
            if out is None or len(self.sizes) == 1:
                return out
            self.x, self.parts = x, list(out.split(self.sizes, -1))
            return self.parts[0]
        if self.x is not x:  # not the input the first member saw
            return None
        out = self.parts[i]
        if i == len(self.sizes) - 1:
            self.x, self.parts = None, []
        return out


class PackedWeight(torch.Tensor):
    """A linear's weight whose `F.linear` runs its group's packed GEMM; elsewhere the plain weight."""

    group: _Group
    index: int

    @staticmethod
    def wrap(weight: torch.Tensor, group: _Group, index: int) -> PackedWeight:
        out = torch.Tensor._make_subclass(PackedWeight, weight.detach(), False)
        out.group, out.index = group, index
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and isinstance(args[1], PackedWeight):
            out = args[1].group.output(args[1].index, args[0])
            if out is not None:
                return out
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _groups(model: nn.Module) -> list[list[nn.Linear]]:
    """Each fusable set of projections, then every other plain linear alone."""
    groups = []
    for m in model.modules():
        for names in FUSABLE:
            linears = [getattr(m, n, None) for n in names]
            if _can_fuse(linears):
                groups.append(linears)
    grouped = {id(m) for linears in groups for m in linears}
    return groups + [[m] for m in model.modules() if _plain(m) and id(m) not in grouped]


def _low() -> bool:
    """bf16 autocast is on for the CPU."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _kernel_dtype(weight: torch.dtype, low: bool) -> torch.dtype:
    """bf16 (oneDNN) under bf16 autocast or for bf16 weights, else float32 (MKL)."""
    return torch.bfloat16 if low or weight == torch.bfloat16 else torch.float32


def _has_kernel(dtype: torch.dtype) -> bool:
    """The packed kernel for `dtype` works here (a missing one raised on AVX2-only CPUs)."""
    k = kernels.available()
    return k.packed_bf16 if dtype == torch.bfloat16 else k.packed_fp32


def _plain(m: object) -> bool:
    return (
        type(m) is nn.Linear
        and m.weight.dtype in (torch.float32, torch.bfloat16)
        and not (m._forward_hooks or m._forward_pre_hooks)
    )


def _can_fuse(group: list) -> bool:
    """Plain, unhooked linears of one dtype that all have a bias or none has (hooks would be skipped)."""
    return (
        all(_plain(m) for m in group)
        and len({m.weight.dtype for m in group}) == 1
        and len({m.bias is None for m in group}) == 1
    )


def _packed_matmul(
    linears: list[nn.Linear],
    rows: int,
    dtype: torch.dtype,
    staging: dict[torch.dtype, torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """x -> the linears' outputs side by side from one `dtype` weight packed for `rows` rows, or
    None where the packing does not apply to x (MKL's float32 packing is for `rows` rows only)."""
    first = linears[0]
    if len(linears) == 1 and first.weight.dtype == dtype:
        w = first.weight.detach()
    else:
        w = staging[dtype][: sum(m.out_features for m in linears) * first.in_features]
        w = w.view(-1, first.in_features)
        for m, part in zip(linears, w.split([m.out_features for m in linears]), strict=True):
            part.copy_(m.weight.detach())
    b = None if first.bias is None else torch.cat([m.bias.detach() for m in linears]).to(dtype)
    if dtype == torch.bfloat16:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)

        def matmul(x: torch.Tensor) -> torch.Tensor | None:
            # oneDNN takes any row count with the same numbers; the kernels keep the leading dims
            x = x.contiguous().to(torch.bfloat16)
            return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")

        return matmul
    packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
    # on the packed path `_mkl_linear` reads only the unpacked weight's sizes: hand it a
    # zero-strided stand-in, not the staging buffer that the next weight overwrites
    sizes = w.new_zeros(()).expand(w.shape)

    def matmul(x: torch.Tensor) -> torch.Tensor | None:
        if x.numel() != rows * x.shape[-1] or x.dtype != torch.float32:
            return None
        return torch.ops.mkl._mkl_linear(x.contiguous(), packed, sizes, b, rows)

    return matmul
