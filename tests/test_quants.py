"""GGML block dequantization: every supported type equals the gguf package's reference
(`gguf.quants.dequantize`) on random packed blocks, bit for bit (NaN where the reference has NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as ref

from lmlab.weights.errors import WeightsError
from lmlab.weights.quants import SUPPORTED_QTYPES, dequantize, quant_nbytes

T = GGMLQuantizationType
ROWS, COLS = 6, 512  # 2 k-quant super-blocks or 16 small blocks per row
# where the reference can quantize, we compare on its output (realistic blocks)
QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.MXFP4}
# byte offsets of fp16 scales inside each block, kept finite when the block bytes are random
FP16_AT = {
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}


def _random_blocks(qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for ROWS x COLS values of `qtype`, with finite, moderate fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(ROWS, COLS // block, size), dtype=np.uint8)
    for at in FP16_AT.get(qtype, ()):
        scales = (rng.standard_normal((ROWS, COLS // block)) * 0.05).astype(np.float16)
        raw[..., at : at + 2] = scales.view(np.uint8).reshape(ROWS, COLS // block, 2)
    return raw.reshape(ROWS, -1)


CASES = [(q, "random_bytes") for q in SUPPORTED_QTYPES] + [
    (q, "quantized") for q in SUPPORTED_QTYPES if q in QUANTIZABLE
]


# random MXFP4 scale bytes reach 2^128 = inf
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize(("qtype", "source"), CASES, ids=lambda c: getattr(c, "name", c))
def test_matches_gguf_reference(qtype: GGMLQuantizationType, source: str) -> None:
    rng = np.random.default_rng(int(qtype))
    if source == "quantized":
        packed = ref.quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32), qtype)
    elif qtype in (T.F32, T.F16, T.BF16):
        dt = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.float32}[qtype]
        packed = ref.quantize(
            rng.standard_normal((ROWS, COLS)).astype(dt).astype(np.float32), qtype
        )
    else:
        packed = _random_blocks(qtype, rng)
    expected = torch.from_numpy(
        np.ascontiguousarray(ref.dequantize(packed, qtype), dtype=np.float32)
    )
    ours = dequantize(packed, qtype, (ROWS, COLS))
    assert ours.dtype == torch.float32 and ours.shape == (ROWS, COLS)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)


def test_chunked_path_equals_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmlab.weights.quants as q

    packed = _random_blocks(T.Q4_K, np.random.default_rng(0))
    whole = dequantize(packed, T.Q4_K, (ROWS, COLS))
    monkeypatch.setattr(q, "_CHUNK_BYTES", 144 * 3)  # 3 blocks per chunk, last chunk partial
    torch.testing.assert_close(dequantize(packed, T.Q4_K, (ROWS, COLS)), whole, rtol=0, atol=0)


def test_unsupported_type_names_type_and_supported_list() -> None:
    with pytest.raises(
        WeightsError, match=r"IQ2_XXS is not supported; supported types: F32, F16, .*Q6_K"
    ):
        dequantize(np.zeros(66, np.uint8), T.IQ2_XXS, (256,))


def test_wrong_byte_count_and_ragged_rows() -> None:
    with pytest.raises(WeightsError, match=r"must be 18 bytes, got 17"):
        dequantize(np.zeros(17, np.uint8), T.Q4_0, (32,))
    with pytest.raises(WeightsError, match=r"multiple of 256 elements, got shape \(2, 100\)"):
        quant_nbytes(T.Q4_K, (2, 100))


# ------------------------------------------------------------------------ GPT-OSS MXFP4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("scales", ["typical", "all_bytes"])
def test_mxfp4_matches_transformers(dtype: torch.dtype, scales: str) -> None:
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    from lmlab.weights.mxfp4 import dequantize_expert

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 6, 16), dtype=torch.uint8, generator=g)
    if scales == "typical":  # weights of magnitude 2^-8 .. 2^4
        s = torch.randint(119, 131, (3, 40, 6), dtype=torch.uint8, generator=g)
    else:  # every E8M0 byte, 0 (2^-127, subnormal) to 255 (2^128 = inf)
        s = torch.arange(720).remainder(256).to(torch.uint8).view(3, 40, 6)
    ours = dequantize_expert(blocks, s, dtype)
    ref = mx.convert_moe_packed_tensors(blocks.clone(), s.clone(), dtype=dtype)
    assert ours.shape == ref.shape == (3, 6 * 32, 40) and ours.dtype == ref.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=0, equal_nan=True)


def test_mxfp4_bad_shapes() -> None:
    from lmlab.weights.mxfp4 import dequantize_mxfp4_state_dict

    blocks = torch.zeros(2, 4, 3, 16, dtype=torch.uint8)
    with pytest.raises(
        WeightsError, match=r"x_blocks: MXFP4 blocks \(2, 4, 3, 16\) and scales \(2, 4, 2\)"
    ):
        dequantize_mxfp4_state_dict(
            {"x_blocks": blocks, "x_scales": torch.zeros(2, 4, 2, dtype=torch.uint8)}
        )
    with pytest.raises(WeightsError, match=r"x_blocks has no matching x_scales"):
        dequantize_mxfp4_state_dict({"x_blocks": blocks})
