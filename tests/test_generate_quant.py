"""Int8 linears: close to the float model, generate through them, bad kind rejected."""

from __future__ import annotations

import pytest
import torch
from kernel_paths import PATHS, spy, use_path

from lmlab.errors import DeviceError
from lmlab.families import preset
from lmlab.generate import generate
from lmlab.generate.quantize import DynamicInt8Linear, Int8Linear, quantize_int8, quantize_weight
from lmlab.model import Transformer


def test_quantize_weight_round_trip_error_is_half_a_step():
    w = torch.randn(64, 48)
    q, scale = quantize_weight(w)
    err = (q.float() * scale[:, None] - w).abs()
    assert q.dtype == torch.int8 and bool((err <= scale[:, None] / 2 + 1e-6).all())


# on a random tiny model logits are nearly flat, so the looser dynamic kind flips more argmaxes
CASES = [("int8", Int8Linear, 0.05, 0.9), ("int8-dynamic", DynamicInt8Linear, 0.15, 0.75)]
KERNEL = {"int8": ("int8_weight_only", "aten", "_weight_int8pack_mm"),
          "int8-dynamic": ("int8_dynamic", "quantized", "linear_dynamic")}  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind, cls, tol, min_agree", CASES)
def test_quantized_model_tracks_float_model(kind, cls, tol, min_agree, path, monkeypatch):
    """On the int8 kernel, or where it is off (LMLAB_KERNELS=plain) on the dequantizing fallback;
    int8-dynamic has none and says so."""
    kernel, namespace, op = KERNEL[kind]
    use_path(path, kernel, monkeypatch)
    calls = spy(monkeypatch, namespace, op)
    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny", init_std=0.1)).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 12))
    if path == "fallback" and kind == "int8-dynamic":
        with pytest.raises(DeviceError, match=r"int8-dynamic.*LMLAB_KERNELS=plain.*kind='int8'"):
            quantize_int8(model, kind=kind)
        assert type(model.blocks[0].mlp.up) is torch.nn.Linear  # nothing was replaced
        return
    with torch.no_grad():
        ref = model(tokens)
        quantize_int8(model, kind=kind)
        got = model(tokens)
    assert bool(calls) == (path == "fast")
    assert isinstance(model.blocks[0].mlp.up, cls) and isinstance(model.unembed, cls)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < tol, rel
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= min_agree, agree
    out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=5)
    assert [len(s) for s in out.sequences] == [5, 5]


def test_int8_fallback_equals_the_kernel(monkeypatch):
    """The dequantize-and-matmul fallback computes what the fused int8 kernel does (to bf16)."""
    use_path("fast", "int8_weight_only", monkeypatch)
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(64, 48), torch.randn(5, 64)
    calls = spy(monkeypatch, "aten", "_weight_int8pack_mm")
    fast = Int8Linear(lin)
    monkeypatch.setenv("LMLAB_KERNELS", "plain")
    plain = Int8Linear(lin)
    assert fast.kernel and not plain.kernel and "dequantized" in repr(plain)
    torch.testing.assert_close(plain(x), fast(x), atol=0.02, rtol=0.02)
    assert len(calls) == 1


def test_bad_kind():
    model = Transformer(preset("gpt2-tiny"))
    with pytest.raises(ValueError, match="unknown quantization kind 'int3'"):
        quantize_int8(model, kind="int3")
