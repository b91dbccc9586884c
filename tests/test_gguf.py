"""GGUF: synthetic files written with the gguf package's own `GGUFWriter`, laid out the way
llama.cpp's converter does (Q/K rows permuted for Llama, Gemma norms stored as 1 + w, names
renamed, tensors quantized), load into lmlab with the logits of the transformers model they came
from; the header parser agrees with `gguf.GGUFReader`; broken files give clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gq

import lmlab
from lmlab.weights.errors import WeightsError
from lmlab.weights.gguf import read_gguf

transformers = pytest.importorskip("transformers")
T = GGMLQuantizationType
TOL = 1e-4  # same bound as tests/test_parity.py; the weights themselves are bit-identical


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (HF rotate-half -> interleaved pairs)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GEMMA_LAYER = {
    **_LAYER,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}


def _qtype(name: str, arr: np.ndarray) -> GGMLQuantizationType:
    if arr.ndim == 1:
        return T.F32
    if name == "token_embd.weight":
        return T.F16
    return T.Q5_1 if "ffn" in name else T.Q8_0


def _write(path, hf_model, arch: str) -> None:
    """Write `hf_model` as llama.cpp would, and set its weights to the dequantized values."""
    c = hf_model.config
    w = GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters.get("rope_theta", 0) if arch == "llama" else 1_000_000.0)
    w.add_array("general.tags", [f"tag{i}" for i in range(300)])  # exercises string arrays
    w.add_array("test.ints", list(range(-5, 5)))
    if arch == "gemma3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_sliding_window(c.sliding_window)
        w.add_rope_freq_base_swa(c.rope_parameters["sliding_attention"]["rope_theta"])
    layer = _GEMMA_LAYER if arch == "gemma3" else _LAYER
    sd = hf_model.state_dict()
    for hf_name, t in sd.items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        parts = hf_name.split(".")
        if parts[1] == "layers":
            name = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.weight"
        else:
            name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[hf_name]
        arr = t.detach().float().numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = c.num_attention_heads if "attn_q" in name else c.num_key_value_heads
            arr = _permute(arr, heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            arr = arr + 1.0
        q = _qtype(name, arr)
        packed = gq.quantize(arr, q)
        w.add_tensor(name, packed, raw_dtype=q)
        deq = torch.from_numpy(gq.dequantize(packed, q).astype(np.float32))
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):  # row permutation
            deq = torch.from_numpy(_permute(_permute(_permute(deq.numpy(), heads), heads), heads))
        if arch == "gemma3" and name.endswith("norm.weight"):
            deq = deq - 1.0
        with torch.no_grad():
            t.copy_(deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(cfg)


def _gemma3():
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=128,
        sliding_window=8,
        query_pre_attn_scalar=32,
        rope_theta=1_000_000.0,
        rope_local_base_freq=20_000.0,
        rms_norm_eps=1e-6,
    )
    return transformers.Gemma3ForCausalLM(cfg)


def _randomize(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.ndim == 1 else 0.05)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def written(request, tmp_path_factory):
    hf = {"llama": _llama, "gemma3": _gemma3}[request.param]()
    _randomize(hf)
    path = tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf"
    _write(path, hf, request.param)
    return path, hf.eval()


def test_logits_match_transformers(written) -> None:
    path, hf = written
    model, tok = lmlab.load(path)
    assert model.cfg.family == hf.config.model_type.removesuffix("_text")
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= TOL, f"max |logit diff| = {diff:.2e}"
    assert tok is None  # no tokenizer.ggml.* keys in this file


def test_parser_agrees_with_gguf_reader(written) -> None:
    path, _ = written
    ours = read_gguf(path, tensors=False)
    ref = GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        got = ours.metadata[key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-7), key
        else:
            assert got == want, key
    assert set(ours.infos) == {t.name for t in ref.tensors}
    for t in ref.tensors:
        info = ours.infos[t.name]
        assert (
            info.qtype == t.tensor_type
            and info.offset == t.data_offset
            and info.nbytes == t.n_bytes
        )
        assert info.shape == tuple(int(d) for d in reversed(t.shape))


def test_truncated_and_corrupt_files(written, tmp_path) -> None:
    path, _ = written
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        WeightsError, match=r"cut.gguf: tensor '.*' needs bytes .* file ends at .*download it again"
    ):
        lmlab.load(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:200])
    with pytest.raises(WeightsError, match=r"head.gguf: corrupt or truncated GGUF header"):
        lmlab.load(head)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(WeightsError, match=r"bad.gguf: not a GGUF file \(magic bytes b'GGML'"):
        lmlab.load(bad)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(data[:24] + b"\xff" * 64 + data[88:])  # a key length of ~2^64
    with pytest.raises(WeightsError, match=r"garbage.gguf: corrupt or truncated GGUF header"):
        lmlab.load(garbage)


def test_unreadable_tokenizer_warns_and_loads(written, tmp_path) -> None:
    """A vocabulary lmlab cannot rebuild does not block the weights: tokenizer None + a warning."""
    path, _ = written
    reader_md = read_gguf(path, tensors=False).metadata
    w = GGUFWriter(tmp_path / "tok.gguf", reader_md["general.architecture"])
    for key, value in reader_md.items():
        if key not in ("general.architecture", "general.alignment"):
            w.add_key_value(key, value, _vtype(value))
    w.add_tokenizer_model("t5-unigram-lmlab-does-not-know")
    w.add_token_list([f"t{i}" for i in range(256)])
    src = GGUFReader(path)
    for t in src.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.warns(UserWarning, match="no tokenizer"):
        model, tok = lmlab.load(tmp_path / "tok.gguf")
    assert tok is None and model.cfg.vocab_size == 256


def _vtype(value):
    from gguf import GGUFValueType

    if isinstance(value, list):
        return GGUFValueType.ARRAY
    return {str: GGUFValueType.STRING, int: GGUFValueType.INT64, float: GGUFValueType.FLOAT32}[
        type(value)
    ]


def test_unsupported_quant_type(tmp_path) -> None:
    path = tmp_path / "iq.gguf"
    w = GGUFWriter(path, "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 66), np.uint8), raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        WeightsError, match=r"stored as IQ2_XXS cannot be dequantized; supported types: F32, .*Q6_K"
    ):
        lmlab.load(path)
