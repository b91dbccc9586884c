"""Acceptance for every model family (issue 20): folders that transformers saves load into lmlab
with the same float32 logits (1e-4), export back to folders transformers loads with our logits
(1e-5), and, for the families added with `lmlab.families`, GGUF files written here the way
llama.cpp's converter writes them (its tensor names from the `gguf` package, its metadata keys,
Gemma's 1 + w norms) load with the logits of the model they came from (1e-4).

Each family runs over three seeded random small configs: the seed picks vocabulary, width and
head counts, and each seed turns on a different set of the family's optional knobs (tied or
untied output, sliding windows, biases, explicit head_dim, partial rotary, softcaps), so all of
them are exercised.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import lmlab
from lmlab.weights.export import export_hf

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.usefixtures("one_thread")

TOL_LOAD = 1e-4
TOL_EXPORT = 1e-5
TOL_GGUF = 1e-4
SEEDS = (0, 1, 2)
T = 20  # tokens per row: longer than every window below, so windows matter


@dataclass
class Knobs:
    """What one seed varies: random sizes, plus optional features switched on by seed."""

    seed: int
    vocab: int
    d: int
    heads: int
    kv: int
    tied: bool
    window: int | None
    bias: bool

    @property
    def head_dim(self) -> int:
        return self.d // self.heads


def knobs(seed: int) -> Knobs:
    """Seed 0: tied, no window, no bias; seed 1: untied, window 5, biases; seed 2: tied, window 9."""
    rng = random.Random(seed)
    d, heads, kv = rng.choice([(32, 4, 2), (48, 4, 1), (64, 4, 4), (64, 8, 2), (32, 2, 1)])
    return Knobs(
        seed=seed,
        vocab=rng.choice([97, 131, 256, 301]),
        d=d,
        heads=heads,
        kv=kv,
        tied=seed != 1,
        window=(None, 5, 9)[seed],
        bias=seed == 1,
    )


def _decoder(k: Knobs, **kw: Any) -> dict[str, Any]:
    """Keyword arguments every Llama-style transformers config takes."""
    return dict(
        vocab_size=k.vocab,
        hidden_size=k.d,
        intermediate_size=2 * k.d + 8,
        num_hidden_layers=2,
        num_attention_heads=k.heads,
        num_key_value_heads=k.kv,
        max_position_embeddings=64,
        tie_word_embeddings=k.tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kw,
    )


def _gpt2(k: Knobs, for_gguf: bool = False):
    act = ("gelu_new", "relu", "gelu")[k.seed]
    return transformers.GPT2Config(
        vocab_size=k.vocab,
        n_embd=k.d,
        n_layer=2,
        n_head=k.heads,
        n_positions=64,
        activation_function=act,
        tie_word_embeddings=k.tied,
    )


def _llama(k: Knobs, for_gguf: bool = False):
    return transformers.LlamaConfig(
        **_decoder(k, attention_bias=k.bias, mlp_bias=k.bias, rope_theta=10000.0 + 1000 * k.seed)
    )


def _mistral(k: Knobs, for_gguf: bool = False):
    return transformers.MistralConfig(**_decoder(k, sliding_window=k.window))


def _gemma3(k: Knobs, for_gguf: bool = False):
    return transformers.Gemma3TextConfig(
        **_decoder(k, head_dim=2 * k.head_dim, attention_bias=k.bias),
        sliding_window=k.window or 6,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=(2 * k.head_dim, 24, 64)[k.seed],
        rope_local_base_freq=10_000.0,
    )


def _gpt_oss(k: Knobs, for_gguf: bool = False):
    return transformers.GptOssConfig(
        **_decoder(k, head_dim=k.head_dim),
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=k.window or 6,
        layer_types=["sliding_attention", "full_attention"],
    )


def _bert(k: Knobs, for_gguf: bool = False):
    return transformers.BertConfig(
        vocab_size=k.vocab,
        hidden_size=k.d,
        num_hidden_layers=2,
        num_attention_heads=k.heads,
        intermediate_size=2 * k.d,
        max_position_embeddings=64,
        hidden_act=("gelu", "relu", "gelu_new")[k.seed],
    )


def _qwen2(k: Knobs, for_gguf: bool = False):
    window = None if for_gguf else k.window  # llama.cpp runs Qwen2 without windows
    return transformers.Qwen2Config(
        **_decoder(k),
        use_sliding_window=window is not None,
        sliding_window=window,
        max_window_layers=1,
    )


def _qwen3(k: Knobs, for_gguf: bool = False):
    window = None if for_gguf else k.window
    return transformers.Qwen3Config(
        **_decoder(k, head_dim=(k.head_dim, 2 * k.head_dim, 16)[k.seed], attention_bias=k.bias),
        use_sliding_window=window is not None,
        sliding_window=window,
        max_window_layers=1,
    )


def _phi3(k: Knobs, for_gguf: bool = False):
    factor = (1.0, 0.5, 0.75)[k.seed]
    return transformers.Phi3Config(
        **_decoder(k),
        sliding_window=k.window,
        partial_rotary_factor=factor if int(k.head_dim * factor) % 2 == 0 else 1.0,
    )


def _gemma(k: Knobs, for_gguf: bool = False):
    return transformers.GemmaConfig(
        **_decoder(k, head_dim=(k.head_dim, 2 * k.head_dim, 16)[k.seed], attention_bias=k.bias)
    )


def _gemma2(k: Knobs, for_gguf: bool = False):
    head_dim = (k.head_dim, 2 * k.head_dim, 16)[k.seed]
    return transformers.Gemma2Config(
        **_decoder(k, head_dim=head_dim, attention_bias=k.bias),
        sliding_window=k.window or 7,
        # llama.cpp scales queries by head_dim (all but the 27B)
        query_pre_attn_scalar=head_dim if for_gguf else (head_dim, 24, 256)[k.seed],
        attn_logit_softcapping=(50.0, 3.0, None)[k.seed],
        final_logit_softcapping=(30.0, 2.0, None)[k.seed],
    )


def _olmo2(k: Knobs, for_gguf: bool = False):
    return transformers.Olmo2Config(**_decoder(k, attention_bias=k.bias), rms_norm_eps=1e-6)


@dataclass
class Fam:
    """A family under test: its transformers config builder and model class, our family name."""

    make: Callable[..., Any]
    model_cls: type
    family: str
    gguf_arch: str | None = None  # written here for the families added with lmlab.families


FAMILIES = {
    "gpt2": Fam(_gpt2, transformers.GPT2LMHeadModel, "gpt2"),
    "llama": Fam(_llama, transformers.LlamaForCausalLM, "llama"),
    "mistral": Fam(_mistral, transformers.MistralForCausalLM, "mistral"),
    "gemma3": Fam(_gemma3, transformers.Gemma3ForCausalLM, "gemma3"),
    "gpt_oss": Fam(_gpt_oss, transformers.GptOssForCausalLM, "gpt-oss"),
    "bert": Fam(_bert, transformers.BertModel, "bert"),
    "qwen2": Fam(_qwen2, transformers.Qwen2ForCausalLM, "qwen2", "qwen2"),
    "qwen3": Fam(_qwen3, transformers.Qwen3ForCausalLM, "qwen3", "qwen3"),
    "phi3": Fam(_phi3, transformers.Phi3ForCausalLM, "phi3", "phi3"),
    "gemma": Fam(_gemma, transformers.GemmaForCausalLM, "gemma", "gemma"),
    "gemma2": Fam(_gemma2, transformers.Gemma2ForCausalLM, "gemma2", "gemma2"),
    "olmo2": Fam(_olmo2, transformers.Olmo2ForCausalLM, "olmo2", "olmo2"),
}
CASES = [(name, seed) for name in FAMILIES for seed in SEEDS]
GGUF_CASES = [(name, seed) for name, fam in FAMILIES.items() if fam.gguf_arch for seed in SEEDS]


def _ids(cases: list[tuple[str, int]]) -> list[str]:
    return [f"{name}-seed{seed}" for name, seed in cases]


def build_hf(name: str, seed: int, for_gguf: bool = False):
    """A transformers model of family `name` with random weights everywhere, in eval mode."""
    fam, k = FAMILIES[name], knobs(seed)
    if for_gguf:  # llama.cpp's graphs for these have no biases, and Gemma's no output tensor
        k = dataclasses.replace(k, bias=False, tied=k.tied or name.startswith("gemma"))
    cfg = fam.make(k, for_gguf)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = fam.model_cls(cfg).eval()
    g = torch.Generator().manual_seed(100 + seed)
    # norms near their identity (Gemma's (1 + w) norms near 0), everything else small and random,
    # so a misplaced norm, bias or offset shows in the logits
    offset = 0.0 if name.startswith("gemma") else 1.0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            is_norm = p.dim() == 1 and ("norm" in pname.lower() or "ln_" in pname)
            base = offset if is_norm and "bias" not in pname else 0.0
            p.copy_(base + (0.1 if p.dim() < 2 else 0.08) * torch.randn(p.shape, generator=g))
    return model


def tokens_for(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(7))


def hf_logits(model, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module", params=CASES, ids=_ids(CASES))
def saved(request, tmp_path_factory):
    """(family name, transformers model, the folder it was saved to with `save_pretrained`)."""
    name, seed = request.param
    model = build_hf(name, seed)
    folder = tmp_path_factory.mktemp(f"{name}-seed{seed}")
    model.save_pretrained(folder)
    return name, model, folder


def test_load_matches_transformers(saved) -> None:
    name, hf, folder = saved
    ours, _ = lmlab.load(folder)
    assert ours.cfg.family == FAMILIES[name].family
    tokens = tokens_for(hf.config.vocab_size)
    with torch.no_grad():
        got = ours(tokens)
    diff = max_diff(got, hf_logits(hf, tokens))
    assert diff <= TOL_LOAD, f"{name}: max |logit diff| = {diff:.2e}"
    # the second row right-padded by 6 tokens: real tokens keep their logits in both libraries
    mask = torch.ones_like(tokens)
    mask[1, -6:] = 0
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask)
    keep = mask.bool()
    diff = max_diff(got[keep], hf_logits(hf, tokens, mask)[keep])
    assert diff <= TOL_LOAD, f"{name}: max |logit diff| with padding = {diff:.2e}"


def test_export_loads_in_transformers(saved, tmp_path) -> None:
    name, hf, folder = saved
    ours, _ = lmlab.load(folder)
    export_hf(ours, tmp_path / "export")
    auto = transformers.AutoModel if name == "bert" else transformers.AutoModelForCausalLM
    back = auto.from_pretrained(
        tmp_path / "export", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert type(back) is type(hf)
    tokens = tokens_for(hf.config.vocab_size)
    with torch.no_grad():
        got = ours(tokens)
    diff = max_diff(hf_logits(back, tokens), got)
    assert diff <= TOL_EXPORT, f"{name}: max |logit diff| after export = {diff:.2e}"


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_qwen_windows_from_max_window_layers(tmp_path, name: str) -> None:
    """Hub configs older than transformers 5 give no layer_types: layers >= max_window_layers slide."""
    hf = build_hf(name, 1)
    assert hf.config.layer_types == ["full_attention", "sliding_attention"]
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["layer_types"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours, _ = lmlab.load(tmp_path)
    assert ours.cfg.layer_types == ("full", "sliding")
    tokens = tokens_for(hf.config.vocab_size)
    with torch.no_grad():
        diff = max_diff(ours(tokens), hf_logits(hf, tokens))
    assert diff <= TOL_LOAD, f"{name}: max |logit diff| = {diff:.2e}"


# ---------------------------------------------------------------------------- GGUF


def write_gguf(path, hf, arch: str) -> None:
    """Write `hf` as llama.cpp's converter would: its names and metadata, float32 tensors."""
    c = hf.config
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "phi3":
        rot = int(
            c.hidden_size // c.num_attention_heads * c.rope_parameters["partial_rotary_factor"]
        )
        w.add_rope_dimension_count(rot)
        w.add_sliding_window(c.sliding_window or 0)  # the converter writes 0 for "none"
    if arch == "gemma2":
        w.add_sliding_window(c.sliding_window)
        if c.attn_logit_softcapping is not None:
            w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        if c.final_logit_softcapping is not None:
            w.add_final_logit_softcapping(c.final_logit_softcapping)
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    names = gguf.get_tensor_name_map(by_name[arch], c.num_hidden_layers)
    for hf_name, t in hf.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"gguf has no {arch} name for {hf_name}"
        arr = t.detach().float().numpy()
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            arr = arr + np.float32(1.0)  # llama.cpp stores Gemma's norms as 1 + w
        w.add_tensor(name, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(("name", "seed"), GGUF_CASES, ids=_ids(GGUF_CASES))
def test_gguf_loads_with_transformers_logits(tmp_path, name: str, seed: int) -> None:
    hf = build_hf(name, seed, for_gguf=True)
    path = tmp_path / f"{name}.gguf"
    write_gguf(path, hf, FAMILIES[name].gguf_arch)
    ours, _ = lmlab.load(path)
    assert ours.cfg.family == FAMILIES[name].family
    tokens = tokens_for(hf.config.vocab_size)
    with torch.no_grad():
        got = ours(tokens)
    diff = max_diff(got, hf_logits(hf, tokens))
    assert diff <= TOL_GGUF, f"{name}: max |logit diff| from GGUF = {diff:.2e}"
