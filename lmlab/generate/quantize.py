"""Quantize a model's linear layers for faster CPU decoding: `quantize(model, kind=...)`.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth; int8
weights are a quarter of float32's bytes, int4 an eighth. Three kinds:
- "int4": weight-only, group-wise asymmetric int4 (`lmlab.quantized.Int4Linear`, groups of
  `group_size` input columns); activations bfloat16 inside the packed kernel.
- "int8": weight-only, per-output-channel int8 (`lmlab.quantized.Int8Linear`).
- "int8-dynamic": weights int8 and each input quantized to int8 on the fly (per tensor, 7-bit
  range), multiplied on fbgemm's int8 kernels: the fastest on AVX2 CPUs, at a quality cost that is
  large for models with attention-sink tokens (one scale per input matrix: SmolLM2's perplexity
  rises 209% vs 0.65% for weight-only; docs/BENCHMARKS.md).
Each kernel is used only where it works on this CPU and `LMLAB_KERNELS=plain` is unset
(`lmlab.kernels`): "int4" and "int8" then dequantize and multiply instead; "int8-dynamic" has no
fallback and raises `DeviceError`. Training and interpretability keep full precision: nothing is
quantized unless asked, and hooks on a quantized model still read activations in its dtype.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lmlab import kernels
from lmlab.errors import DeviceError, InputError
from lmlab.quantized import GROUP_SIZES, Int4Linear, Int8Linear, check_refill, quantize_weight

__all__ = [
    "KINDS",
    "DynamicInt8Linear",
    "Int4Linear",
    "Int8Linear",
    "dequantized",
    "quantize",
    "quantize_int8",
    "quantize_weight",
    "requantize_",
]


class DynamicInt8Linear(nn.Module):
    """int8 weights times int8-quantized-on-the-fly inputs (fbgemm), float32 in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not kernels.available().int8_dynamic:
            raise DeviceError(
                "quantize_int8(kind='int8-dynamic') needs fbgemm's int8 kernels, not usable here "
                f"({kernels.reasons()['int8_dynamic']}); use kind='int8' (weight-only, any CPU)"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._pack(linear.weight, linear.bias)

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        q, scale = quantize_weight(weight)
        zeros = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated (still works)
            warnings.simplefilter("ignore", UserWarning)
            wq = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
        bias = None if bias is None else bias.detach().float().clone()
        self.packed = torch.ops.quantized.linear_prepack(wq, bias)
        self.scale = scale

    @torch.no_grad()
    def refill_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> DynamicInt8Linear:
        """Quantize a new float `weight` (and `bias`) into this layer (packed anew: fbgemm's
        packing is opaque, so this one layer does not keep its tensors)."""
        check_refill(self, weight, bias)
        self._pack(weight, bias)
        return self

    @property
    def bias(self) -> torch.Tensor | None:
        """The float32 bias held in the packed weight (None without one)."""
        _, b = torch.ops.quantized.linear_unpack(self.packed)
        return b

    @property
    def weight(self) -> torch.Tensor:
        w, _ = torch.ops.quantized.linear_unpack(self.packed)
        return w.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit inputs, so AVX2's 16-bit intermediate sums cannot overflow
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.packed, True)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weights and inputs"


KINDS = ("int4", "int8", "int8-dynamic")


def quantize(
    model: nn.Module,
    *,
    kind: str = "int4",
    group_size: int = 32,
    include_unembed: bool = True,
    unembed_kind: str | None = None,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Replace the model's attention/MLP linears (and the unembedding) with quantized ones, in place.

    `kind`: "int4" (weight-only, groups of `group_size` = 32, 64 or 128 input columns), "int8"
    (weight-only, per output channel) or "int8-dynamic" (inputs quantized too). Routers and the
    pooler stay float. A tied unembedding gets its own quantized copy; the embedding table stays
    as it was. An "int4" layer whose input size `group_size` does not divide gets "int8".
    `unembed_kind` (default: `kind`, but "int8" under "int4") quantizes the unembedding
    differently: its error goes straight into the logits (SmolLM2 from its Q4_1 GGUF, perplexity
    on tinyshakespeare[:20000]: int4 g32 everywhere +4.88%, with an int8 head +0.30%, 2026-12-04;
    llama.cpp's Q4 files likewise keep a Q6_K / Q8_0 head).
    """
    if kind not in KINDS:
        raise InputError(f"unknown quantization kind {kind!r}; choose one of {', '.join(KINDS)}")
    head = unembed_kind or ("int8" if kind == "int4" else kind)
    if head not in KINDS:
        raise InputError(f"unknown unembed_kind {head!r}; choose one of {', '.join(KINDS)}")
    targets = []
    for name, mod in model.named_modules():
        skip = name in ("pooler", "unembed" if not include_unembed else "") or name.endswith(
            "router"
        )
        if isinstance(mod, nn.Linear) and not skip:
            targets.append(name)
    if not targets:
        raise InputError(f"quantize found no nn.Linear layers to quantize in this model ({kind})")
    if kind == "int4" and group_size not in GROUP_SIZES:
        raise InputError(f"int4 group_size={group_size}: use one of {GROUP_SIZES}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        how = head if name == "unembed" else kind
        setattr(parent, child, _quantized(getattr(parent, child), how, group_size, compute_dtype))
    return model


@torch.no_grad()
def requantize_(quantized: nn.Module, source: nn.Module) -> nn.Module:
    """Refill a model made by `quantize` from `source`, the float model it was quantized from,
    after `source` changed (an optimizer step): every quantized layer re-quantizes the matching
    float weight into its own tensors and every other parameter is copied, so the model keeps its
    tensors (a compiled decode replays without recompiling). ~3x faster than quantizing a copy anew
    (SmolLM2-135M int4: docs/BENCHMARKS.md)."""
    layers = dict(source.named_modules())
    tensors = {**dict(source.named_parameters(remove_duplicate=False)),
               **dict(source.named_buffers(remove_duplicate=False))}  # fmt: skip
    for name, mod in quantized.named_modules():
        if isinstance(mod, (Int4Linear, Int8Linear, DynamicInt8Linear)):
            lin = layers.get(name)
            if not isinstance(lin, nn.Linear):
                raise InputError(
                    f"requantize_: the source model has no linear layer {name!r} for this "
                    "quantized one; pass the float model this one was quantized from"
                )
            mod.refill_(lin.weight, lin.bias)
            continue
        for key, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            full = f"{name}.{key}" if name else key
            src = tensors.get(full)
            if src is None or src.shape != t.shape:
                raise InputError(
                    f"requantize_: the source model has no {full!r} of shape {tuple(t.shape)}; "
                    "pass the float model this one was quantized from"
                )
            if t.data_ptr() != src.data_ptr():  # (not where the two share the tensor)
                t.copy_(src)
    return quantized


def _quantized(lin: nn.Linear, kind: str, group_size: int, dtype: torch.dtype) -> nn.Module:
    if kind == "int8-dynamic":
        return DynamicInt8Linear(lin)
    if kind == "int4" and lin.in_features % group_size == 0:
        return Int4Linear(lin, group_size, dtype)
    return Int8Linear(lin, dtype)


def dequantized(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` whose weight-only quantized linears (`Int4Linear`, `Int8Linear`)
    are `nn.Linear`s holding their `.weight`: the weights the quantized model computes with, a
    reference for its outputs."""
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        if isinstance(mod, (Int4Linear, Int8Linear)):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            lin.weight = nn.Parameter(mod.weight.detach().float())
            if mod.bias is not None:
                lin.bias = nn.Parameter(mod.bias.detach().float().clone())
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, lin)
    return out


def quantize_int8(
    model: nn.Module,
    *,
    kind: str = "int8",
    include_unembed: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """`quantize` with kind "int8" (weight-only) or "int8-dynamic" (inputs quantized too)."""
    if kind not in ("int8", "int8-dynamic"):
        raise InputError(
            f"unknown quantization kind {kind!r}; choose one of int8, int8-dynamic "
            "(int4: lmlab.generate.quantize.quantize)"
        )
    return quantize(model, kind=kind, include_unembed=include_unembed, compute_dtype=compute_dtype)
