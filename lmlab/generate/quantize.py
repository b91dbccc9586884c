"""Int8 linear layers for faster CPU decoding (per-output-channel symmetric weight scales).

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth; int8
weights are a quarter of float32's bytes. Two kinds:
- "int8": weight-only; activations stay floating point (bfloat16 inside the fused kernel).
- "int8-dynamic": weights int8 and each input quantized to int8 on the fly (per tensor, 7-bit
  range), multiplied on fbgemm's int8 kernels: the fastest on AVX2 CPUs, at a quality cost that is
  large for models with attention-sink tokens (one scale per input matrix: SmolLM2's perplexity
  rises 209% vs 0.65% for weight-only; docs/BENCHMARKS.md).
Each kernel is used only where it works on this CPU and `LMLAB_KERNELS=plain` is unset
(`lmlab.kernels`): "int8" then dequantizes and multiplies instead; "int8-dynamic" has no fallback
and raises `DeviceError`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lmlab import kernels
from lmlab.errors import DeviceError


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (int8 [out, in], float32 scale [out]) with w ~= q * scale[:, None]."""
    wf = w.detach().float()
    scale = wf.abs().amax(1).clamp(min=1e-12) / 127.0
    q = (wf / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + b with int8 `q`; computes in bfloat16 on the fused CPU kernel
    where it works (`lmlab.kernels` when built), else dequantizes and multiplies."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        # decided once here, not per call: torch.compile cannot trace the probes
        self.kernel = kernels.available().int8_weight_only
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), False)
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (for code that reads `.weight`, e.g. hook_result)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.compute_dtype).contiguous()
        if self.kernel and x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        else:
            y = F.linear(x2, self.qweight.to(self.compute_dtype)) * self.scale
        y = y.to(x.dtype).view(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        how = "fused int8 kernel" if self.kernel else "dequantized matmul"
        sizes = f"in={self.in_features}, out={self.out_features}"
        return f"{sizes}, int8 weights, {self.compute_dtype}, {how}"


class DynamicInt8Linear(nn.Module):
    """int8 weights times int8-quantized-on-the-fly inputs (fbgemm), float32 in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not kernels.available().int8_dynamic:
            raise DeviceError(
                "quantize_int8(kind='int8-dynamic') needs fbgemm's int8 kernels, not usable here "
                f"({kernels.reasons()['int8_dynamic']}); use kind='int8' (weight-only, any CPU)"
            )
        q, scale = quantize_weight(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        zeros = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated (still works)
            warnings.simplefilter("ignore", UserWarning)
            wq = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.packed = torch.ops.quantized.linear_prepack(wq, bias)
        self.scale = scale

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


KINDS = ("int8", "int8-dynamic")


def quantize_int8(
    model: nn.Module,
    *,
    kind: str = "int8",
    include_unembed: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Replace the model's attention/MLP linears (and the unembedding) with int8 ones, in place.

    `kind`: "int8" (weight-only) or "int8-dynamic" (inputs quantized too). A tied unembedding
    gets its own int8 copy; the embedding table stays as it was.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown quantization kind {kind!r}; choose one of {', '.join(KINDS)}")
    targets = []
    for name, mod in model.named_modules():
        skip = name in ("pooler", "unembed" if not include_unembed else "") or name.endswith(
            "router"
        )
        if isinstance(mod, nn.Linear) and not skip:
            targets.append(name)
    if not targets:
        raise ValueError("quantize_int8 found no nn.Linear layers to quantize in this model")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        new = Int8Linear(lin, compute_dtype) if kind == "int8" else DynamicInt8Linear(lin)
        setattr(parent, child, new)
    return model
