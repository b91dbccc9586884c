"""Weight-only quantized linear layers a model can hold: `Int8Linear` and `Int4Linear`.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth; int8
weights are a quarter of float32's bytes, int4 an eighth (plus one scale and zero per group).
- `Int8Linear`: symmetric int8 with one scale per output channel (w = q * scale).
- `Int4Linear`: asymmetric int4 in groups of `group_size` (32, 64, 128) input columns, one scale
  and zero per group and row: w = (q - 8) * scale + zero with q in 0..15 (the convention of torch's
  packed int4 CPU kernel; GGUF's Q4_0 / Q4_1 / Q4_K blocks map onto it without a float round trip).
Scales and zeros are held in bfloat16, as the kernels take them; `.weight` is exactly the float32
weight the layer computes with. On the CPU, each layer multiplies with the first kernel
`lmlab.kernels` found working (decided once, when the layer is built: torch.compile cannot trace
the probes): lmlab's own AVX2 kernels (`lmlab.native`: int8 multiplies float32 inputs as they are;
int4 rounds them to int16 per 32 columns, 2**-16 of the largest, against bfloat16's 2**-9 each),
else torch's packed kernels (bfloat16 inputs), else dequantize and multiply in float32 (also the
path on other devices). Where torch's kernels run their AVX-512 code they take batches of more
than `NATIVE_ROWS` rows and lmlab's the decoding steps; where bfloat16 products are native too
(AVX512-BF16, AMX), an int4 layer multiplies prompts of more than `BF16_ROWS` rows by its weight
dequantized to bfloat16 (2x faster than torch's int4 kernel at 96 rows). Outputs come back in
the input's dtype. `refill_(weight)` re-quantizes a changed float weight into a layer's own
tensors (GRPO's quantized rollouts after each optimizer step). Only used when asked
(`lmlab.generate.quantize`, `lmlab.load(..., keep_quantized=True)`); training and
interpretability keep full-precision layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab import kernels
from lmlab.errors import InputError

GROUP_SIZES = (32, 64, 128)
_KERNEL_ROWS = 16  # torch's int4 packing needs a multiple of 16 output rows
NATIVE_ROWS = 4  # up to this many input rows, lmlab's kernel; above, torch's where it is fast
BF16_ROWS = 32  # above this many, a bf16 GEMM on the dequantized weight where bf16 is native
_NATIVE_MAX_GROUPS = 1024  # int4 groups per row lmlab's kernel takes (kMaxGroups there)
_SLICE_BYTES = 1 << 21  # float32 weight bytes quantize_weight takes at a time (in cache: 10x)


def quantize_weight(
    w: torch.Tensor, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (int8 [out, in], float32 scale [out]) with w ~= q * scale[:, None].

    The scale is first rounded to `scale_dtype` (the dtype a layer holds it in) and the codes are
    chosen against the rounded scale, so the held weight is within half a step of `w`.
    """
    w = w.detach()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], device=w.device)
    step = max(1, _SLICE_BYTES // (4 * w.shape[1]))
    for i in range(0, w.shape[0], step):
        wf = w[i : i + step].float()
        s = (wf.abs().amax(1).clamp_(min=1e-12) / 127.0).to(scale_dtype).float()
        q[i : i + step] = wf.div(s[:, None]).round_().clamp_(-127, 127)
        scale[i : i + step] = s
    return q, scale


def _bias(bias: torch.Tensor | None) -> nn.Parameter | None:
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + b with int8 `q` and one bfloat16 scale per output channel."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight, compute_dtype)
        self._set(q, scale, linear.bias, compute_dtype)

    @classmethod
    def from_quantized(
        cls,
        q: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> Int8Linear:
        """A layer holding int8 `q` [out, in] and per-row `scale` [out] as they are."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._set(q.to(torch.int8), scale, bias, compute_dtype)
        return self

    def _set(
        self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> None:
        self.out_features, self.in_features = q.shape
        self.compute_dtype = dtype
        # decided once here, not per call: torch.compile cannot trace the probes
        self.native = kernels.available().native_gemv
        self.kernel = kernels.available().int8_weight_only and (
            not self.native or kernels.torch_batches_fast()
        )
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", scale.detach().to(dtype).contiguous())
        self.bias = _bias(bias)

    @torch.no_grad()
    def refill_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Quantize a new float `weight` [out, in] (and `bias`) into this layer's own tensors."""
        check_refill(self, weight, bias)
        q, scale = quantize_weight(weight, self.compute_dtype)
        self.qweight.copy_(q)
        self.scale.copy_(scale)
        if bias is not None:
            self.bias.copy_(bias)
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight (for code that reads `.weight`, e.g. hook_result)."""
        return self.dequantize()

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer multiplies by."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if _native_rows(self.native, self.kernel, x2):
            y = torch.ops.lmlab_native.int8_linear(
                x2.float().contiguous(), self.qweight, self.scale
            )
        elif self.kernel and x.device.type == "cpu":
            x2 = x2.to(self.compute_dtype).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        else:
            y = (
                F.linear(x2.to(self.compute_dtype), self.qweight.to(self.compute_dtype))
                * self.scale
            )
        y = y.to(x.dtype).view(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        how = _kernels_used(self.native, self.kernel, "fused int8 kernel", self.compute_dtype)
        return f"in={self.in_features}, out={self.out_features}, int8 weights, {how}"


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 [n, k] (k even) -> [n, k/2] bytes: column 2i low nibble, 2i+1 high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(b: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Inverse of `pack_nibbles`: bytes [n, k/2] -> codes [n, k] (uint8, or `dtype`)."""
    out = torch.empty(b.shape[0], 2 * b.shape[1], dtype=dtype, device=b.device)
    out[:, 0::2], out[:, 1::2] = b & 0x0F, b >> 4
    return out


def int4_params(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round float w [out, in] to int4 groups: (codes uint8 [out, in], scale, zero bf16 [out, G]).

    Each group spans its min..max in 15 steps: scale = (max - min) / 15, zero = min + 8 * scale
    (both rounded to bfloat16 first, then the codes chosen against the rounded values).
    """
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    q = ((wg - zero.float()[..., None]) / scale.float()[..., None] + 8).round().clamp(0, 15)
    return q.to(torch.uint8).reshape(n, k), scale, zero


class Int4Linear(nn.Module):
    """y = x @ W^T + b with W = (q - 8) * scale + zero per group of `group_size` input columns.

    Holds `scales_and_zeros` bfloat16 [groups, out, 2] (stored [out, groups, 2] for lmlab's
    kernel) and the 4-bit codes: as `qweight`, two codes a byte in `pack_nibbles`' portable layout
    (what lmlab's kernel reads), and/or as `packed`, torch's CPU-specific layout (never saved).
    Only where both kernels are used (AVX-512: lmlab's for decoding, torch's for batches) are the
    codes held twice. A state dict always holds `qweight` (recovered from `packed` exactly,
    `kernel_nibbles`), so it loads with or without the kernels, on any device; moving the layer
    off the CPU turns `packed` into `qweight`, moving it back packs it again.
    """

    def __init__(
        self, linear: nn.Linear, group_size: int = 32, compute_dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        _check_group(linear.in_features, group_size)
        codes, scale, zero = int4_params(linear.weight, group_size)
        self._set(codes, scale, zero, linear.bias, group_size, compute_dtype)

    @classmethod
    def from_blocks(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        mins: torch.Tensor,
        bias: torch.Tensor | None = None,
        group_size: int = 32,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> Int4Linear:
        """A layer from block data w = codes * scale + mins (GGUF's Q4_1 form; Q4_0 is
        mins = -8 * scale): codes 0..15 [out, in] (int32 is packed without a copy), scale and
        mins [out, in / group_size]."""
        out, k = codes.shape
        _check_group(k, group_size)
        groups = (out, k // group_size)
        if tuple(scale.shape) != groups or tuple(mins.shape) != groups:
            raise InputError(
                f"Int4Linear.from_blocks: scale {tuple(scale.shape)} and mins "
                f"{tuple(mins.shape)} must both be {groups} for codes {tuple(codes.shape)}"
            )
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        s = scale.float().to(torch.bfloat16)
        zero = (mins.float() + 8 * scale.float()).to(torch.bfloat16)
        self._set(codes, s, zero, bias, group_size, compute_dtype)
        return self

    def _set(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        dtype: torch.dtype,
    ) -> None:
        self.out_features, self.in_features = codes.shape
        self.group_size, self.compute_dtype = group_size, dtype
        # decided once here, not per call: torch.compile cannot trace the probes
        groups = self.in_features // group_size
        self.native = kernels.available().native_gemv and groups <= _NATIVE_MAX_GROUPS
        self.kernel_ok = (
            kernels.available().int4_weight_only
            and self.out_features % _KERNEL_ROWS == 0
            and (not self.native or kernels.torch_batches_fast())
        )
        # long prompts: the weight dequantized to bfloat16 by lmlab's kernel, then oneDNN's GEMM
        self.bf16_prompts = self.native and dtype == torch.bfloat16 and kernels.bf16_gemm_fast()
        packs = self.kernel_ok and codes.device.type == "cpu"
        sz = torch.stack((scale, zero), dim=-1).to(torch.bfloat16).transpose(0, 1)  # [G, out, 2]
        # the native kernel reads each row's groups in one stream: held [out, G, 2], seen
        # transposed; where torch's kernel runs too (batches), it gets a [G, out, 2] copy
        self.register_buffer("scales_and_zeros", sz if self.native else sz.contiguous())
        both = self.native and self.kernel_ok
        self.register_buffer("torch_scales", sz.contiguous() if both else None, False)
        self.register_buffer("qweight", None if packs and not self.native else pack_nibbles(codes))
        self.register_buffer("packed", kernel_layout(codes) if packs else None, False)
        self.bias = _bias(bias)

    @torch.no_grad()
    def refill_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
        """Quantize a new float `weight` [out, in] (and `bias`) into this layer's own tensors,
        every layout it holds (a compiled decode that captured them keeps working)."""
        check_refill(self, weight, bias)
        w = weight.detach()
        if self.native and w.device.type == "cpu":  # lmlab's kernel: the same codes, 3.5x faster
            nibbles, sz = torch.ops.lmlab_native.int4_quantize(
                w.float().contiguous(), self.group_size
            )
            codes = None if self.packed is None else unpack_nibbles(nibbles, torch.int32)
            sz = sz.transpose(0, 1)  # [G, out, 2]
        else:
            codes, scale, zero = int4_params(w, self.group_size)
            nibbles = None if self.qweight is None else pack_nibbles(codes)
            sz = torch.stack((scale, zero), dim=-1).transpose(0, 1)
        for held in (self.scales_and_zeros, self.torch_scales):
            if held is not None:
                held.copy_(sz)
        if self.qweight is not None:
            self.qweight.copy_(nibbles)
        if self.packed is not None:
            self.packed.copy_(kernel_layout(codes))
        if bias is not None:
            self.bias.copy_(bias)
        return self

    @property
    def kernel(self) -> bool:
        """Whether forward can run torch's packed int4 kernel: exactly when it holds `packed`."""
        return self.packed is not None

    def nibbles(self) -> torch.Tensor:
        """The codes in the portable layout, uint8 [out, in / 2] (`qweight`, or recovered)."""
        if self.qweight is not None:
            return self.qweight
        return kernel_nibbles(self.packed, self.out_features, self.in_features)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes as uint8 [out, in]."""
        return unpack_nibbles(self.nibbles())

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed is not None:  # the portable codes, whatever this layer holds
            destination[prefix + "qweight"] = self.nibbles()

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        args = (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.torch_scales is not None:
            with torch.no_grad():
                self.torch_scales.copy_(self.scales_and_zeros)
        key = prefix + "qweight"
        if self.packed is None:  # `qweight` is a buffer here: loaded above
            return
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        q, want = state_dict[key], (self.out_features, self.in_features // 2)
        if tuple(q.shape) != want or q.dtype != torch.uint8:
            error_msgs.append(
                f"size mismatch for {key}: copying uint8 codes of shape {tuple(q.shape)} "
                f"({q.dtype}) from checkpoint, the shape in current model is {want}."
            )
            return
        with torch.no_grad():  # repacked for this CPU, into the same tensor
            self.packed.copy_(kernel_layout(unpack_nibbles(q.cpu())))

    def _apply(self, fn: Any, recurse: bool = True) -> Int4Linear:
        """`.to(device)` and the like: `packed` lives on the CPU only, `qweight` anywhere; the
        scales stay bfloat16 (the kernel's) under `.to(dtype)`, `.float()`, `.half()`."""
        if self.packed is not None and fn(torch.zeros(0, dtype=torch.uint8)).device.type != "cpu":
            self.qweight, self.packed = self.nibbles(), None
        held = {"scales_and_zeros": self.scales_and_zeros, "torch_scales": self.torch_scales}
        super()._apply(fn, recurse)
        for name, before in held.items():
            now = getattr(self, name)
            if now is not None and now.dtype != before.dtype:
                setattr(self, name, before.to(now.device))
        if self.packed is None and self.kernel_ok and self.qweight.device.type == "cpu":
            self.packed = kernel_layout(unpack_nibbles(self.qweight))
            self.qweight = self.qweight if self.native else None
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight (for code that reads `.weight`: hooks, interp)."""
        return self.dequantize()

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer multiplies by."""
        n, k, g = self.out_features, self.in_features, self.group_size
        sz = self.scales_and_zeros.float().transpose(0, 1)  # [out, G, 2]
        q = self.codes().to(sz.device).float().view(n, k // g, g)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if _native_rows(self.native, self.kernel, x2):
            y = torch.ops.lmlab_native.int4_linear(
                x2.float().contiguous(), self.qweight, self._row_scales(), self.group_size
            )
        elif self.bf16_prompts and x2.shape[0] > BF16_ROWS and x.device.type == "cpu":
            w = torch.ops.lmlab_native.int4_dequantize(
                self.qweight, self._row_scales(), self.group_size, torch.bfloat16
            )
            y = F.linear(x2.to(torch.bfloat16), w)
        elif self.kernel and x.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(self.compute_dtype).contiguous(),
                self.packed,
                self.group_size,
                self.scales_and_zeros if self.torch_scales is None else self.torch_scales,
            )
        else:
            y = F.linear(x2.to(self.compute_dtype).float(), self.dequantize())
        y = y.to(x.dtype).view(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def _row_scales(self) -> torch.Tensor:
        """Scales and zeros [out, G, 2] for lmlab's kernels: a view of what the layer holds."""
        return self.scales_and_zeros.transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        how = _kernels_used(self.native, self.kernel, "packed int4 kernel", self.compute_dtype)
        if self.bf16_prompts:
            how += f", bf16 GEMM on the dequantized weight above {BF16_ROWS} rows"
        sizes = f"in={self.in_features}, out={self.out_features}"
        return f"{sizes}, int4 weights (group {self.group_size}), {how}"


def _native_rows(native: bool, torch_kernel: bool, x2: torch.Tensor) -> bool:
    """Whether a layer multiplies `x2` [rows, in] with lmlab's own kernel: on the CPU, always
    where it has no torch kernel, else for decoding-sized row counts (torch's batches faster)."""
    if not native or x2.device.type != "cpu":
        return False
    return not torch_kernel or x2.shape[0] <= NATIVE_ROWS


def _kernels_used(native: bool, torch_kernel: bool, name: str, dtype: torch.dtype) -> str:
    """How a quantized layer multiplies, for its repr."""
    ours = "lmlab AVX2 kernel, float32"
    theirs = f"{name}, {str(dtype).removeprefix('torch.')}"
    if native and torch_kernel:
        return f"{ours} up to {NATIVE_ROWS} rows, {theirs} above"
    return ours if native else theirs if torch_kernel else "dequantized matmul"


def kernel_layout(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [out, in] (CPU) in torch's CPU-specific int4 layout (`packed`)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 2)


_RECOVER_BYTES = 1 << 22  # bf16 inputs and outputs per kernel call while recovering codes


def kernel_nibbles(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The codes in `packed` (torch's CPU layout, any CPU) as `pack_nibbles` bytes [out, in / 2].

    Exact, by the kernel itself: with scale 1 and zero 8 every weight is (q - 8) + 8 = q, and an
    input row with 1 at column 2i and 16 at column 2i + 1 gives q[2i] + 16 * q[2i + 1], an
    integer 0..255 (exact in bfloat16, whatever order the kernel sums in): the portable byte.
    """
    n, k = out_features, in_features
    gs = 32  # every int4 group size is a multiple of 32: 32 divides `in_features`
    unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(k // gs, n, 2).contiguous()
    out = torch.empty(n, k // 2, dtype=torch.uint8)
    step = max(1, _RECOVER_BYTES // (2 * (k + n)))
    for i in range(0, k // 2, step):
        rows = torch.arange(i, min(i + step, k // 2))
        x = torch.zeros(len(rows), k, dtype=torch.bfloat16)
        x[torch.arange(len(rows)), 2 * rows] = 1.0
        x[torch.arange(len(rows)), 2 * rows + 1] = 16.0
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, gs, unit)  # [rows, n]
        out[:, i : i + len(rows)] = y.t()
    return out


def check_refill(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise unless `weight` and `bias` fit the quantized `layer` they are to refill."""
    want = (layer.out_features, layer.in_features)
    if tuple(weight.shape) != want:
        raise InputError(
            f"{type(layer).__name__}.refill_: weight of shape {tuple(weight.shape)}, the layer "
            f"holds {want}; refill from the model this one was quantized from"
        )
    if (bias is None) != (layer.bias is None):
        has = "has a bias" if layer.bias is not None else "has no bias"
        raise InputError(f"{type(layer).__name__}.refill_: the layer {has}; pass bias to match")


def _check_group(in_features: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise InputError(f"int4 group_size={group_size}: use one of {GROUP_SIZES}")
    if in_features % group_size:
        raise InputError(
            f"int4 group_size={group_size} does not divide in_features={in_features}; "
            "use a smaller group size (32) or int8"
        )
