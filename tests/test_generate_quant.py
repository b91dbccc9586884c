"""Int8 linears: close to the float model, generate through them, bad kind rejected."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import preset
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


@pytest.mark.parametrize("kind, cls, tol, min_agree", CASES)
def test_quantized_model_tracks_float_model(kind, cls, tol, min_agree):
    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny", init_std=0.1)).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        ref = model(tokens)
        quantize_int8(model, kind=kind)
        got = model(tokens)
    assert isinstance(model.blocks[0].mlp.up, cls) and isinstance(model.unembed, cls)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < tol, rel
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= min_agree, agree
    out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=5)
    assert [len(s) for s in out.sequences] == [5, 5]


def test_bad_kind():
    model = Transformer(preset("gpt2-tiny"))
    with pytest.raises(ValueError, match="unknown quantization kind 'int3'"):
        quantize_int8(model, kind="int3")
