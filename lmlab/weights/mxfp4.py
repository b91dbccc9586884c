"""Dequantize GPT-OSS MXFP4 expert weights (OCP microscaling FP4) to dense bf16/float32 tensors.

GPT-OSS checkpoints store each expert matrix as `*_blocks` (uint8 [..., G, 16]: 32 FP4 E2M1
values per group, two per byte, low nibble first) and `*_scales` (uint8 [..., G]: one E8M0
power-of-two exponent per group, biased by 127). The dense tensors come out in the orientation
of transformers' `GptOssExperts`: `gate_up_proj` [E, hidden, 2 * inter], `down_proj` [E, inter, hidden].
"""

from __future__ import annotations

import math

import torch

from lmlab.weights.errors import WeightsError

# FP4 E2M1 code -> value: sign bit, 2 exponent bits, 1 mantissa bit
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_CODES = torch.tensor(FP4_E2M1, dtype=torch.float32)
# byte -> (value of low nibble, value of high nibble), so one gather decodes both
_BYTE_PAIRS = torch.stack(
    (_CODES[torch.arange(256) & 0x0F], _CODES[torch.arange(256) >> 4]), dim=-1
)
_ROWS_PER_CHUNK = 1 << 18  # groups decoded at a time, to bound float32 temporaries


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Decode MXFP4 `blocks` [..., G, 16] with `scales` [..., G] into `dtype` [..., G * 32]."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise WeightsError(
            f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}; "
            "pass the raw *_blocks / *_scales tensors from the checkpoint"
        )
    if blocks.ndim < 2 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise WeightsError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match; "
            "expected blocks [..., G, 16] and scales [..., G]"
        )
    *prefix, groups, _ = blocks.shape
    rows = math.prod(prefix) * groups
    flat_blocks = blocks.reshape(rows, 16)
    flat_scales = scales.reshape(rows)
    out = torch.empty(rows, 32, dtype=dtype)
    for r in range(0, rows, _ROWS_PER_CHUNK):
        b = flat_blocks[r : r + _ROWS_PER_CHUNK]
        values = _BYTE_PAIRS[b.long()].view(-1, 32)  # element 2j = low nibble of byte j
        # E8M0: value * 2 ** (byte - 127), exactly (ldexp: 0.5 * 2^128 stays finite, as in transformers)
        exp = flat_scales[r : r + _ROWS_PER_CHUNK].to(torch.int32).sub_(127).view(-1, 1)
        out[r : r + _ROWS_PER_CHUNK] = torch.ldexp(values, exp)
    return out.view(*prefix, groups * 32)


def dequantize_expert(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """One GPT-OSS expert tensor [E, out, G, 16] -> dense [E, in, out] as `GptOssExperts` holds it."""
    if blocks.ndim != 4:
        raise WeightsError(
            f"MXFP4 expert blocks must be [experts, rows, groups, 16], got {tuple(blocks.shape)}"
        )
    return dequantize_mxfp4(blocks, scales, dtype).transpose(1, 2).contiguous()


def dequantize_mxfp4_state_dict(
    sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Replace each `X_blocks` + `X_scales` pair of a GPT-OSS state dict with the dense `X`."""
    out = {}
    for key, value in sd.items():
        if key.endswith("_scales") and key.removesuffix("_scales") + "_blocks" in sd:
            continue
        if not key.endswith("_blocks"):
            out[key] = value
            continue
        base = key.removesuffix("_blocks")
        if base + "_scales" not in sd:
            raise WeightsError(
                f"{key} has no matching {base}_scales; the checkpoint is incomplete: download it again"
            )
        try:
            out[base] = dequantize_expert(value, sd[base + "_scales"], dtype)
        except WeightsError as e:
            raise WeightsError(f"{key}: {e}") from None
    return out
