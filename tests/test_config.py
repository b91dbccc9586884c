"""Config validation and presets: real shapes (parameter counts), clear errors."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import PRESETS, PUBLISHED_PARAMS, Config, ConfigError, preset
from lmlab.model import Transformer

# Published sizes checked against (PUBLISHED_PARAMS): GPT-2 124M / 355M / 774M and XL's checkpoint
# 1,557,611,200 (announced as "1.5B"); SmolLM2-135M 135M; Gemma 3 270M 268M (Google's model card);
# GPT-OSS 20B 20.9B and 120B 116.8B total (OpenAI's model card); all-MiniLM-L6-v2 22.7M;
# Llama-2-7B 6.74B; Mistral-7B 7.24B; gpt-oss-588m is our own design at 588M.


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_count_matches_published(name):
    with torch.device("meta"):
        model = Transformer(preset(name))
    n = model.num_params()
    published = PUBLISHED_PARAMS[name]
    assert abs(n - published) / published <= 0.01, f"{name}: {n:,} vs published {published:,.0f}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta(name):
    with torch.device("meta"):
        model = Transformer(preset(name))
    assert model.num_params() > 0
    assert Config.from_dict(model.cfg.to_dict()) == model.cfg


def test_families_keep_their_signature_details():
    oss = preset("gpt-oss-20b")
    assert (
        oss.layer_types[:4] == ("sliding", "full", "sliding", "full") and oss.sliding_window == 128
    )
    assert oss.attn_sinks and oss.n_kv_heads == 8 and oss.top_k == 4 and oss.rope_scaling == "yarn"
    gem = preset("gemma3-270m")
    assert gem.layer_types[:6] == ("sliding",) * 5 + ("full",) and gem.rope_local_theta == 10_000.0
    assert preset("gpt-oss-20b", n_layers=6).layer_types == ("sliding", "full") * 3


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        (dict(d_model=100, n_heads=3), "n_heads", "must divide d_model"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads", "must divide n_heads"),
        (dict(n_experts=4, top_k=5), "top_k", "must be in"),
        (dict(top_k=2), "top_k", "needs n_experts"),
        (dict(norm="batchnorm"), "norm", "is not one of"),
        (dict(mlp="tanh"), "mlp", "is not one of"),
        (dict(layer_types=("full",)), "layer_types", "one entry per layer"),
        (dict(layer_types=("sliding",) * 12), "sliding_window", "must be a positive integer"),
        (dict(rope_scaling="yarn", positions="rope"), "rope_original_max_seq_len", "is required"),
        (dict(vocab_size=0), "vocab_size", "positive integer"),
        (dict(dropout=1.5), "dropout", "must be in"),
    ],
)
def test_bad_config_names_field_value_and_fix(changes, field, fix):
    with pytest.raises(ConfigError) as err:
        Config(**changes)
    msg = str(err.value)
    assert f"Config.{field}=" in msg and fix in msg


def test_unknown_key_suggests_near_name():
    with pytest.raises(ConfigError, match=r"unknown config key 'n_head'.*did you mean 'n_heads'"):
        Config.from_dict({"n_head": 12})
    with pytest.raises(ConfigError, match="valid keys"):
        preset("gpt2").replace(wibble=1)


def test_unknown_preset_suggests_near_names():
    with pytest.raises(ConfigError, match="Did you mean 'gpt2-medium'"):
        preset("gpt2-meduim")


def test_seed_variants_are_config_switches():
    """seed-004 ablations: MQA, SwiGLU, QuickGELU, residual scaling, RoPE vs learned."""
    base = preset("gpt2-tiny")
    tokens = torch.randint(0, 512, (1, 16))
    outs = {}
    for label, change in {
        "mqa": dict(n_kv_heads=1),
        "swiglu": dict(mlp="swiglu"),
        "quick_gelu": dict(mlp="quick_gelu"),
        "rope": dict(positions="rope"),
        "residual_scale": dict(residual_scale=0.5),
        "relu2": dict(mlp="relu2"),
    }.items():
        torch.manual_seed(0)
        m = Transformer(base.replace(**change))
        outs[label] = m(tokens)
        assert outs[label].shape == (1, 16, 512) and torch.isfinite(outs[label]).all()
    assert Transformer(base.replace(n_kv_heads=1)).blocks[0].attn.k.weight.shape == (64, 256)
    assert Transformer(base.replace(positions="rope")).pos_embed is None
