"""Decoding with weights packed once for the CPU's matrix-multiply kernels.

On a CPU every `nn.Linear` call re-lays its weight out for the GEMM kernel (MKL for float32,
oneDNN for bfloat16) before multiplying. At decode shapes (a few rows per step) that repacking is
a large part of the matmul: packing each weight once per generation and reusing it makes a
16-row step's matmuls 1.3-1.5x faster with bit-identical outputs. Projections that read one input
(q/k/v, gate/up) are packed as one weight: fewer calls, and a wider GEMM streams the weights
faster. Batch 1 gains nothing (the kernel is then a matrix-vector product that reads the weight as
it is), so callers pack only for several rows. PyTorch's inductor uses the same packed kernels
when it freezes weights. Where a kernel does not work on this CPU (oneDNN's bf16 path needs
AVX-512 or AVX-NE-CONVERT) or `LMLAB_KERNELS=plain` is set, the linears keep the plain path
(`lmlab.kernels`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
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


# Linears of one module that read the same input, multiplied as one while packed: the module's
# attribute that takes the fused product -> the linears' names, in the order of the product's columns.
FUSABLE = {"fused_qkv": ("q", "k", "v"), "fused_gate_up": ("gate", "up")}


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[None]:
    """While active, each plain `nn.Linear` of `model` multiplies with a weight packed on entry:
    bf16 for oneDNN under bf16 autocast or for bf16 weights (any row count, e.g. a prefill before
    the decode steps), else float32 for MKL (inputs of `rows` rows; others take the usual path,
    where the packing would not apply). Projections that read the same input (attention's q/k/v, a
    gated MLP's gate/up) become one matmul over their stacked weights. Weights and hooks must not
    change inside the block. A no-op where `can_pack` says packing does not apply."""
    if not can_pack(model, rows):
        yield
        return
    low = _low()
    patched, fused = [], []
    try:
        groups = []
        for owner, attr, linears in _groups(model):
            dtype = _kernel_dtype(linears[0].weight.dtype, low)
            if _has_kernel(dtype):  # else (e.g. the bf16 linears of a mixed model): plain path
                groups.append((owner, attr, linears, dtype))
        # Weights are stacked / cast into one reused buffer per dtype before packing: fresh memory
        # for each would cost a page fault per 4 KiB, more than the copy itself.
        sizes: dict[torch.dtype, int] = {}
        for _, _, linears, dtype in groups:
            if len(linears) > 1 or linears[0].weight.dtype != dtype:
                n = sum(m.weight.numel() for m in linears)
                sizes[dtype] = max(sizes.get(dtype, 0), n)
        staging = {dtype: torch.empty(n, dtype=dtype) for dtype, n in sizes.items()}
        for owner, attr, linears, dtype in groups:
            matmul = _packed_matmul(linears, rows, dtype, staging)
            if attr is None:
                owner.forward = matmul
                patched.append(owner)
            else:
                setattr(owner, attr, matmul)
                fused.append((owner, attr))
        del staging
        yield
    finally:
        for m in patched:
            del m.forward
        for m, attr in fused:
            setattr(m, attr, None)


def _groups(model: nn.Module) -> list[tuple[nn.Module, str | None, list[nn.Linear]]]:
    """(owner, attribute taking the fused product, its linears) for each fusable set of
    projections, then (linear, None, [linear]) for every other plain linear."""
    groups = []
    for m in model.modules():
        for attr, names in FUSABLE.items():
            linears = [getattr(m, n, None) for n in names]
            if hasattr(m, attr) and _can_fuse(linears):
                groups.append((m, attr, linears))
    grouped = {id(m) for _, _, linears in groups for m in linears}
    return groups + [(m, None, [m]) for m in model.modules() if _plain(m) and id(m) not in grouped]


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
):
    """x -> the linears' outputs side by side, from one `dtype` weight packed for `rows` rows."""
    first = linears[0]
    if len(linears) == 1 and first.weight.dtype == dtype:
        w = first.weight.detach()
    else:
        w = staging[dtype][: sum(m.out_features for m in linears) * first.in_features]
        w = w.view(-1, first.in_features)
        for m, part in zip(linears, w.split([m.out_features for m in linears]), strict=True):
            part.copy_(m.weight.detach())
    b = None if first.bias is None else torch.cat([m.bias.detach() for m in linears]).to(dtype)
    bf16 = dtype == torch.bfloat16
    if bf16:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)

        def matmul(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(
                x.to(torch.bfloat16), packed, b, "none", [], ""
            )

    else:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        # on the packed path `_mkl_linear` reads only the unpacked weight's sizes: hand it a
        # zero-strided stand-in, not the staging buffer that the next weight overwrites
        sizes = w.new_zeros(()).expand(w.shape)

        def matmul(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkl._mkl_linear(x, packed, sizes, b, rows)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # oneDNN takes any row count with the same numbers; MKL's packing is for `rows` rows only
        if bf16 or (x.numel() == rows * x.shape[-1] and x.dtype == torch.float32):
            return matmul(x.contiguous())  # the kernels take [..., in] and keep the leading dims
        outs = [nn.Linear.forward(m, x) for m in linears]
        return outs[0] if len(outs) == 1 else torch.cat(outs, -1)

    return forward
