"""Dequantize GGML block formats (as stored in GGUF files) to float32 with vectorized torch ops.

Each format stores a tensor row as fixed-size blocks of bytes; a dequantizer turns all blocks
at once, `uint8 [n_blocks, type_size]` -> `float32 [n_blocks, block_size]`. The layouts follow
ggml's reference (`ggml-quants.c`) and the float operations are done in the same order, so the
results are bit-identical to `gguf.quants.dequantize`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lmlab.weights.errors import WeightsError

QK_K = 256  # elements in a k-quant super-block
_CHUNK_BYTES = 1 << 22  # dequantize ~4 MiB of blocks at a time so temporaries stay in cache


def _f16(b: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 scalar at byte `start` of every block, as float32 [n, 1]."""
    return b[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Split bytes [n, ..., k] into [n, ..., 2, k]: low nibbles first, then high nibbles."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=-2)


def _bits(b: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Bits 0..n_bits-1 of bytes [n, ..., k] as [n, ..., n_bits, k] (bit index before byte index)."""
    shifts = torch.arange(n_bits, dtype=torch.uint8).view(n_bits, 1)
    return (b.unsqueeze(-2) >> shifts) & 1


def _le_bits32(b: torch.Tensor) -> torch.Tensor:
    """The 32 bits of a little-endian uint32 stored as bytes [n, 4], bit j at column j: [n, 32]."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((b.unsqueeze(-1) >> shifts) & 1).reshape(b.shape[0], 32)


def _float(b: torch.Tensor) -> torch.Tensor:
    return b.view(torch.float32).clone()


def _half(b: torch.Tensor) -> torch.Tensor:
    return b.view(torch.float16).float()


def _bfloat(b: torch.Tensor) -> torch.Tensor:
    return b.view(torch.bfloat16).float()


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # d: fp16, qs: 32 x int8
    return b[:, 2:].view(torch.int8).float().mul_(_f16(b, 0))


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # d: fp16, qs: 16 bytes; element j is the low nibble of qs[j], element j+16 the high one
    q = _nibbles(b[:, 2:]).reshape(b.shape[0], 32).to(torch.int8) - 8
    return q.float().mul_(_f16(b, 0))


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # d: fp16, m: fp16, qs: 16 bytes; y = d * q + m
    q = _nibbles(b[:, 4:]).reshape(b.shape[0], 32)
    return q.float().mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q5(b: torch.Tensor, qh_at: int) -> torch.Tensor:
    """5-bit codes of Q5_0/Q5_1: low nibbles from qs, the fifth bit of element j from qh bit j."""
    low = _nibbles(b[:, qh_at + 4 :]).reshape(b.shape[0], 32)
    return low | (_le_bits32(b[:, qh_at : qh_at + 4]) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # d: fp16, qh: uint32, qs: 16 bytes; y = d * (q - 16)
    return (_q5(b, 2).to(torch.int8) - 16).float().mul_(_f16(b, 0))


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # d: fp16, m: fp16, qh: uint32, qs: 16 bytes; y = d * q + m
    return _q5(b, 4).float().mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # scales: 16 bytes (low nibble scale, high nibble min), qs: 64 bytes of 2-bit codes, d, dmin
    n = b.shape[0]
    scales = b[:, :16]
    dl = (_f16(b, 80) * (scales & 0x0F).float()).view(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).view(n, 16, 1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    q = ((b[:, 16:80].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).view(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # hmask: 32 bytes, qs: 64 bytes of 2-bit codes, scales: 12 bytes of packed 6-bit values, d
    n = b.shape[0]
    packed = b[:, 96:108]
    low = _nibbles(packed[:, :8]).reshape(n, 16)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    high = ((packed[:, 8:12].reshape(n, 1, 4) >> shifts) & 3).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (_f16(b, 108) * scales).view(n, 16, 1)
    ql = ((b[:, 32:96].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16)
    hm = _bits(b[:, :32].reshape(n, 1, 32), 8).reshape(n, 16, 16)
    q = ql.to(torch.int8) - ((hm ^ 1) << 2).to(torch.int8)  # a clear hmask bit subtracts 4
    return (dl * q.float()).view(n, QK_K)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12 bytes of eight 6-bit (scale, min) pairs used by Q4_K and Q5_K: [n, 8] each."""
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scale, mins


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # d, dmin: fp16, scales: 12 bytes, qs: 128 bytes; 8 sub-blocks of 32: y = d*sc * q - dmin*m
    n = b.shape[0]
    sc, m = _k_scale_min(b[:, 4:16])
    d = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    dm = (_f16(b, 2) * m.float()).view(n, 8, 1)
    q = _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32).float()
    return (d * q - dm).view(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # d, dmin: fp16, scales: 12 bytes, qh: 32 bytes (bit i -> sub-block i), qs: 128 bytes
    n = b.shape[0]
    sc, m = _k_scale_min(b[:, 4:16])
    d = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    dm = (_f16(b, 2) * m.float()).view(n, 8, 1)
    low = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = _bits(b[:, 16:48], 8)  # [n, 8, 32]
    q = (low | (high << 4)).float()
    return (d * q - dm).view(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # ql: 128 bytes (low 4 bits), qh: 64 bytes (high 2 bits), scales: 16 x int8, d: fp16
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    low = _nibbles(b[:, :128].reshape(n, 2, 64)).reshape(n, 8, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    high = ((b[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).view(n, 16, 16).float()
    return (d * q).view(n, QK_K)


# E2M1 values doubled, with the E8M0 scale halved to match (ggml's MXFP4 convention): exact and
# finite for every scale byte.
_MXFP4_VALUES = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]).float()
_E8M0_HALF = torch.tensor([math.ldexp(1.0, e - 128) for e in range(256)], dtype=torch.float32)


def _mxfp4(b: torch.Tensor) -> torch.Tensor:
    # e: E8M0 exponent byte, qs: 16 bytes; element j is the low nibble of qs[j], j+16 the high one
    q = _nibbles(b[:, 1:]).reshape(b.shape[0], 32).long()
    return _MXFP4_VALUES[q].mul_(_E8M0_HALF[b[:, 0].long()].view(-1, 1))


_DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLQuantizationType.F32: _float,
    GGMLQuantizationType.F16: _half,
    GGMLQuantizationType.BF16: _bfloat,
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q5_0: _q5_0,
    GGMLQuantizationType.Q5_1: _q5_1,
    GGMLQuantizationType.Q2_K: _q2_k,
    GGMLQuantizationType.Q3_K: _q3_k,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
    GGMLQuantizationType.MXFP4: _mxfp4,
}

SUPPORTED_QTYPES: tuple[GGMLQuantizationType, ...] = tuple(_DEQUANTIZERS)


# ---------------------------------------------------- 4-bit blocks kept as codes, scales, mins
# Each fills codes [n, b] (0..15, any integer dtype) for blocks uint8 [n, type_size] and returns
# float32 scale and min [n, b // 32], one pair per 32 elements, with w = code * scale + min exactly
# as ggml's dequantization computes it (Q4_0: d * (q - 8) = q * d - 8d; Q4_K: d*sc * q - dmin*m).

Int4Blocks = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _split_nibbles(qs: torch.Tensor, out: torch.Tensor) -> None:
    """Bytes [..., m] -> out [..., 2, m]: low nibbles, then high ones (cast to out's dtype)."""
    out[..., 0, :].copy_(qs & 0x0F)
    out[..., 1, :].copy_(qs >> 4)


def _int4_q4_0(b: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _split_nibbles(b[:, 2:], codes.view(-1, 2, 16))
    d = _f16(b, 0)
    return d, -8 * d


def _int4_q4_1(b: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _split_nibbles(b[:, 4:], codes.view(-1, 2, 16))
    return _f16(b, 0), _f16(b, 2)


def _int4_q4_k(b: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.shape[0]
    sc, m = _k_scale_min(b[:, 4:16])
    _split_nibbles(b[:, 16:].reshape(n, 4, 32), codes.view(n, 4, 2, 32))
    return _f16(b, 0) * sc.float(), -(_f16(b, 2) * m.float())


_INT4_BLOCKS: dict[GGMLQuantizationType, Int4Blocks] = {
    GGMLQuantizationType.Q4_0: _int4_q4_0,
    GGMLQuantizationType.Q4_1: _int4_q4_1,
    GGMLQuantizationType.Q4_K: _int4_q4_k,
}
INT4_QTYPES: tuple[GGMLQuantizationType, ...] = tuple(_INT4_BLOCKS)


def int4_blocks(
    raw: torch.Tensor | np.ndarray,
    qtype: GGMLQuantizationType,
    shape: Sequence[int],
    dtype: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-D Q4_0 / Q4_1 / Q4_K tensor as (codes [out, in] of `dtype`, scale, min float32
    [out, in / 32]) with w = codes * scale + min per group of 32 (no float weight is built).

    The codes are written once, straight from the bytes (torch's int4 packing takes int32)."""
    qtype = GGMLQuantizationType(qtype)
    fn = _INT4_BLOCKS.get(qtype)
    if fn is None or len(shape) != 2:
        raise WeightsError(
            f"{qtype.name} {tuple(shape)} cannot be kept as int4 blocks; "
            f"int4 keeps 2-D {', '.join(q.name for q in INT4_QTYPES)} tensors"
        )
    out, k = (int(s) for s in shape)
    data = _as_uint8(raw)
    if data.numel() != quant_nbytes(qtype, shape):
        raise WeightsError(f"{qtype.name} data for shape {tuple(shape)} has the wrong size")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = data.view(-1, type_size)
    codes = torch.empty(out, k, dtype=dtype)
    flat = codes.view(-1, block_size)
    step = max(1, _CHUNK_BYTES // type_size)
    pairs = [fn(blocks[i : i + step], flat[i : i + step]) for i in range(0, len(blocks), step)]
    scale, mins = (torch.cat(p) if len(p) > 1 else p[0] for p in zip(*pairs, strict=True))
    return codes, scale.reshape(out, k // 32), mins.reshape(out, k // 32)


def supported_names() -> str:
    """The supported GGML type names, comma separated, for error messages."""
    return ", ".join(q.name for q in SUPPORTED_QTYPES)


def quant_nbytes(qtype: GGMLQuantizationType, shape: Sequence[int]) -> int:
    """Bytes a tensor of `shape` (PyTorch order) takes in `qtype`; raises if rows do not fill blocks."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    numel = math.prod(shape)
    row = shape[-1] if len(shape) else 1
    if row % block_size:
        raise WeightsError(
            f"a {qtype.name} tensor needs rows that are a multiple of {block_size} elements, "
            f"got shape {tuple(shape)}; the file is corrupt or was written by a broken converter"
        )
    return numel // block_size * type_size


def _as_uint8(raw: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A flat uint8 torch view of `raw` without copying when possible."""
    if isinstance(raw, np.ndarray):
        arr = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        with warnings.catch_warnings():  # read-only memmaps are fine: we never write to them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    t = raw.contiguous().reshape(-1)
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def dequantize(
    raw: torch.Tensor | np.ndarray, qtype: GGMLQuantizationType, shape: Sequence[int]
) -> torch.Tensor:
    """Dequantize raw GGML bytes of `qtype` to a float32 tensor of `shape` (PyTorch order)."""
    qtype = GGMLQuantizationType(qtype)
    fn = _DEQUANTIZERS.get(qtype)
    if fn is None:
        raise WeightsError(
            f"GGML type {qtype.name} is not supported; supported types: {supported_names()}. "
            "Re-quantize the model to one of these (e.g. llama.cpp's llama-quantize ... Q4_K_M)"
        )
    shape = tuple(int(s) for s in shape)
    data = _as_uint8(raw)
    nbytes = quant_nbytes(qtype, shape)
    if data.numel() != nbytes:
        raise WeightsError(
            f"{qtype.name} data for shape {shape} must be {nbytes} bytes, got {data.numel()}; "
            "pass the tensor's raw bytes and its PyTorch-order shape"
        )
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = data.view(-1, type_size)
    n = blocks.shape[0]
    step = max(1, _CHUNK_BYTES // type_size)
    if n <= step:
        return fn(blocks).view(shape)
    out = torch.empty(n, block_size, dtype=torch.float32)
    for i in range(0, n, step):  # chunks of many thousand blocks, to bound temporaries
        out[i : i + step] = fn(blocks[i : i + step])
    return out.view(shape)
