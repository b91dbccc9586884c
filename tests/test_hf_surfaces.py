"""lmlab's look-alikes of transformers/PEFT behave like them: `apply_chat_template` (ids and text
equal transformers' for SmolLM2 and Gemma 3), `LoraConfig` with PEFT's names and transformers'
module names (same layers as PEFT picks), and `save_lora` adapters that `AutoPeftModelForCausalLM`
loads offline from the hub id lmlab writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.config import Config
from lmlab.packaged import packaged_path
from lmlab.peft import (
    LoraConfig,
    apply_lora,
    base_model_id,
    lora_layers,
    save_lora,
    set_lora_enabled,
)
from lmlab.peft.lora import module_name_maps
from lmlab.tokenizers import CharTokenizer, TokenizerError, gguf_tokenizer
from lmlab.weights.export import export_hf

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there! 😀"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Merci, ça marche.\n\nBye"},
    ],
    [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Old pond, a frog jumps", "tool_calls": None},
    ],
]


def _packaged(name: str) -> Path:
    p = packaged_path(name)
    if p is None:
        pytest.skip(f"packaged model {name} not installed")
    return p


def _gemma3_template() -> str:
    """Gemma 3's chat template as published (trl ships a verbatim copy; the GGUF stores none)."""
    trl = pytest.importorskip("trl")
    p = Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja"
    if not p.is_file():
        pytest.skip(f"{p} not found (trl without its chat templates)")
    return p.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smol_pair():
    """lmlab's and transformers' SmolLM2 tokenizers, each read from the packaged GGUF."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    path = _packaged("smollm2-135m-instruct")
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return gguf_tokenizer(path), ref


@pytest.fixture(scope="module")
def gemma_pair():
    """lmlab's Gemma 3 tokenizer and a transformers tokenizer over the same vocabulary, both with
    Gemma 3's template (transformers' own GGUF reader takes ~60 s for 262k tokens: the slow test)."""
    transformers = pytest.importorskip("transformers")
    ours = gguf_tokenizer(_packaged("gemma3-270m"))
    ours.chat_template = _gemma3_template()
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ours.tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=ours.chat_template,
    )
    return ours, ref


def _same_as_transformers(ours, ref) -> None:
    for messages in CONVERSATIONS:
        for gen in (False, True):
            want_text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            got_text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert got_text == want_text, (messages, gen)
            want = ref.apply_chat_template(messages, add_generation_prompt=gen)  # defaults
            got = ours.apply_chat_template(messages, add_generation_prompt=gen)
            assert got == dict(want), (messages, gen)
            assert got["input_ids"] == ours.encode(got_text)
            assert ours.apply_chat_template(
                messages, add_generation_prompt=gen, return_dict=False
            ) == ref.apply_chat_template(messages, add_generation_prompt=gen, return_dict=False)
        pt = ours.apply_chat_template(messages, return_tensors="pt", return_dict=False)
        ref_pt = ref.apply_chat_template(messages, return_tensors="pt", return_dict=False)
        assert pt.shape == ref_pt.shape and pt.shape[0] == 1 and torch.equal(pt, ref_pt)
    # defaults: no generation prompt, ids in a dict
    assert ours.apply_chat_template(CONVERSATIONS[0]) == dict(
        ref.apply_chat_template(CONVERSATIONS[0])
    )
    # a batch of conversations, and an open last assistant message
    assert ours.apply_chat_template(CONVERSATIONS, tokenize=False) == ref.apply_chat_template(
        CONVERSATIONS, tokenize=False
    )
    assert ours.apply_chat_template(CONVERSATIONS, return_dict=False) == ref.apply_chat_template(
        CONVERSATIONS, return_dict=False
    )
    for tokenize in (False, True):
        kw = {"continue_final_message": True, "tokenize": tokenize, "return_dict": False}
        got = ours.apply_chat_template(CONVERSATIONS[2], **kw)
        assert got == ref.apply_chat_template(CONVERSATIONS[2], **kw)


def test_smollm2_apply_chat_template_equals_transformers(smol_pair) -> None:
    ours, ref = smol_pair
    assert ours.chat_template == ref.chat_template
    _same_as_transformers(ours, ref)
    text = ours.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_gemma3_apply_chat_template_equals_transformers(gemma_pair) -> None:
    ours, ref = gemma_pair
    _same_as_transformers(ours, ref)
    ids = ours.apply_chat_template(CONVERSATIONS[0], return_dict=False)
    assert ids[:2] == [
        ours.bos_id,
        ours.encode("<start_of_turn>")[0],
    ]  # BOS once, from the template


@pytest.mark.slow  # transformers' own GGUF tokenizer for Gemma's 262k vocabulary: ~60 s
def test_gemma3_apply_chat_template_equals_transformers_gguf_tokenizer() -> None:
    transformers = pytest.importorskip("transformers")
    path = _packaged("gemma3-270m")
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = gguf_tokenizer(path)
    ours.chat_template = ref.chat_template = _gemma3_template()
    _same_as_transformers(ours, ref)


def test_apply_chat_template_refuses_what_it_would_ignore() -> None:
    tok = CharTokenizer.from_text("abc<>/ assistant")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}{{ note }}"
    )
    msgs = [{"role": "a", "content": "abc"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<a>abc"
    assert tok.apply_chat_template(msgs, tokenize=False, note="/") == "<a>abc/"  # read: accepted
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    assert ids["input_ids"].shape == (1, len("<a>abc<assistant>"))
    assert ids["attention_mask"].sum().item() == ids["input_ids"].shape[1]
    with pytest.raises(TokenizerError, match=r"unknown keyword\(s\) \['tokenise'\].*tokenize"):
        tok.apply_chat_template(msgs, tokenise=False)
    with pytest.raises(TokenizerError, match=r"padding=.*does not implement"):
        tok.apply_chat_template(msgs, padding=True)
    tok.apply_chat_template(msgs, padding=False)  # transformers' "off" value is harmless
    with pytest.raises(TokenizerError, match="exclude each other"):
        tok.apply_chat_template(msgs, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(TokenizerError, match="equal token length"):
        tok.apply_chat_template([msgs, [{"role": "a", "content": "ab"}]], return_tensors="pt")
    with pytest.raises(TokenizerError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(TypeError):  # options are keyword-only: no positional bool slips in
        tok.apply_chat_template(msgs, None, None, None, True)


# ------------------------------------------------------------------------------ LoraConfig


def tiny(name: str = "llama-tiny", seed: int = 0) -> lmlab.Transformer:
    torch.manual_seed(seed)
    return lmlab.Transformer(lmlab.preset(name)).eval()


def test_lora_config_takes_peft_names() -> None:
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj"])
    assert (cfg.lora_alpha, cfg.lora_dropout, cfg.alpha, cfg.dropout) == (8.0, 0.1, 8.0, 0.1)
    assert LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj"]) == cfg
    assert cfg.scaling == 2.0
    assert LoraConfig(r=4, task_type="CAUSAL_LM", bias="none", inference_mode=True).r == 4
    with pytest.raises(ValueError, match=r"lora_alpha=8.*alpha=4.*pass only lora_alpha"):
        LoraConfig(lora_alpha=8, alpha=4)
    with pytest.raises(ValueError, match=r"bias='all'.*does not implement"):
        LoraConfig(bias="all")
    with pytest.raises(ValueError, match="unknown field lora_alfa"):
        LoraConfig(lora_alfa=8)


@pytest.mark.parametrize(
    "targets",
    [
        ["q_proj", "v_proj"],
        ["self_attn.o_proj", "down_proj", "gate_proj"],
        r".*\.(k_proj|up_proj)",
        "all-linear",
    ],
)
@pytest.mark.parametrize("family", ["llama-tiny", "gemma3-tiny"])
def test_hf_target_modules_pick_the_layers_peft_picks(tmp_path, family: str, targets) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = tiny(family)
    export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=targets))
    prefix = "base_model.model."
    theirs = {n[len(prefix) :] for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    theirs = {n for n in theirs if not n.endswith(("lora_A", "lora_B"))} - {""}
    names = apply_lora(model, LoraConfig(r=2, target_modules=targets))
    to_hf, _ = module_name_maps(model.cfg)
    assert theirs and {to_hf[n] for n in names} == theirs


def test_unknown_target_names_both_styles() -> None:
    with pytest.raises(ValueError, match=r"\['qproj'\] match no Linear.*'attn\.q'.*'q_proj'"):
        apply_lora(tiny(), r=2, target_modules=["q_proj", "qproj"])
    with pytest.raises(ValueError, match=r"\['c_attn'\] match no.*fuses q\|k\|v.*lmlab's names"):
        apply_lora(tiny("gpt2-tiny"), r=2, target_modules=["c_attn"])


# ------------------------------------------------------------------------------ save_lora hub id


def test_base_model_id_names_what_transformers_loads(tmp_path) -> None:
    assert base_model_id(Config(name="smollm2-135m-instruct")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert base_model_id(Config(name="gemma3-270m")) == "google/gemma-3-270m"
    assert base_model_id(Config(name="org/model")) == "org/model"
    assert base_model_id(Config(name="x", extra={"hub_id": "me/x"})) == "me/x"
    (tmp_path / "config.json").write_text("{}")
    assert base_model_id(Config(name="x", extra={"source": str(tmp_path)})) == str(tmp_path)
    assert base_model_id(Config(name="llama-tiny")) == "llama-tiny"


def _hub_snapshot(cache: Path, repo: str, model: lmlab.Transformer, tok=None) -> None:
    """Put `model` into a hub cache as `repo`'s main revision (the layout huggingface_hub reads)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    export_hf(model, root / "snapshots" / commit, tok)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


AUTO_PEFT = textwrap.dedent(
    """
    import sys, torch
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file, save_file
    x = load_file(sys.argv[2])["x"]
    model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    with torch.no_grad():
        save_file({"logits": model(x).logits.contiguous()}, sys.argv[3])
    """
)


def _auto_peft_logits(tmp_path: Path, adapter: Path, x: torch.Tensor) -> torch.Tensor:
    """`AutoPeftModelForCausalLM.from_pretrained(adapter)(x).logits`, offline, in a fresh process
    (huggingface_hub reads HF_HUB_OFFLINE and the cache folders when it is imported)."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file

    save_file({"x": x}, tmp_path / "x.safetensors")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "logits.safetensors"
    args = [str(adapter), str(tmp_path / "x.safetensors"), str(out)]
    r = subprocess.run(
        [sys.executable, "-c", AUTO_PEFT, *args], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(out)["logits"]


def test_save_lora_adapter_loads_with_auto_peft_offline(tmp_path) -> None:
    model = tiny()
    model.cfg.extra["hub_id"] = "lmlab-test/tiny-llama"
    _hub_snapshot(tmp_path / "hub", "lmlab-test/tiny-llama", model)
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "mlp.up"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lin in lora_layers(model).values():
            lin.lora_B.weight.copy_(torch.randn(lin.lora_B.weight.shape, generator=g) * 0.1)
    save_lora(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "lmlab-test/tiny-llama"
    assert cfg["target_modules"] and all(t.endswith("_proj") for t in cfg["target_modules"])
    x = torch.randint(3, 200, (2, 10), generator=g)
    with torch.no_grad():
        ours = model(x)
        set_lora_enabled(model, False)
        base = model(x)
    theirs = _auto_peft_logits(tmp_path, tmp_path / "adapter", x)
    assert (ours - base).abs().max().item() > 1e-2  # the adapter changes the logits
    assert (theirs - ours).abs().max().item() <= 1e-5


@pytest.mark.slow  # exports 135M parameters and loads them in transformers (~1 min here)
def test_smollm2_save_lora_loads_with_auto_peft_offline(tmp_path) -> None:
    _packaged("smollm2-135m-instruct")
    model, tok = lmlab.load("smollm2-135m-instruct")
    _hub_snapshot(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", model)
    apply_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lin in lora_layers(model).values():
            lin.lora_B.weight.copy_(torch.randn(lin.lora_B.weight.shape, generator=g) * 0.02)
    save_lora(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    x = torch.tensor([tok.encode("The capital of France is Paris. The capital of Germany is")])
    with torch.no_grad():
        ours = model(x)
    theirs = _auto_peft_logits(tmp_path, tmp_path / "adapter", x)
    assert (theirs - ours).abs().max().item() <= 1e-5
