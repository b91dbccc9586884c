"""Config validation and presets: real shapes (parameter counts), clear errors."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import Config, ConfigError
from lmlab.families import PRESETS, PUBLISHED_PARAMS, preset
from lmlab.interp import run_with_cache
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
        (dict(qk_norm=True, qk_norm_scope="layer"), "qk_norm_scope", "is not one of"),
        (dict(positions="rope", rope_fraction=0.3), "rope_fraction", "even number of rotated"),
        (dict(positions="rope", rope_fraction=0.0), "rope_fraction", "must be in (0, 1]"),
        (dict(pre_norm=False), "pre_norm", "needs sandwich_norm=True"),
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


def _cached(change: dict, names: list[str]) -> tuple[Transformer, dict[str, torch.Tensor]]:
    """gpt2-tiny with one knob changed, run on fixed tokens, with the named activations recorded."""
    torch.manual_seed(0)
    model = Transformer(preset("gpt2-tiny").replace(**change)).eval()
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    logits, cache = run_with_cache(model, tokens, names_filter=names)
    assert logits.shape == (2, 16, 512) and torch.isfinite(logits).all()
    return model, {n: cache[n] for n in names}


@pytest.mark.parametrize(
    ("mlp", "formula"),
    [
        ("quick_gelu", lambda pre, _: pre * torch.sigmoid(1.702 * pre)),
        ("relu2", lambda pre, _: torch.relu(pre).square()),
        ("swiglu", lambda gate, up: torch.nn.functional.silu(gate) * up),
        ("gelu_tanh", lambda pre, _: torch.nn.functional.gelu(pre, approximate="tanh")),
    ],
)
def test_seed_mlp_variants_apply_their_formula(one_thread, mlp, formula):
    """seed-004 ablations: what enters the down projection is the variant's activation of hook_pre."""
    names = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"]
    gated = mlp == "swiglu"
    model, acts = _cached({"mlp": mlp}, names + ["blocks.0.mlp.hook_pre_linear"] * gated)
    pre, post = acts[names[0]], acts[names[1]]
    up = acts.get("blocks.0.mlp.hook_pre_linear")
    # the nonlinear range is exercised, not only the near-linear part around 0
    assert pre.abs().max() > 0.5
    torch.testing.assert_close(post, formula(pre, up))
    assert (model.blocks[0].mlp.gate is not None) == gated


def test_seed_residual_scale_scales_both_branches(one_thread):
    """residual_scale s: resid_mid = resid_pre + s * attn_out and resid_post = resid_mid + s * mlp_out."""
    s = 0.5
    names = [
        f"blocks.1.hook_{n}"
        for n in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
    ]
    _, a = _cached({"residual_scale": s}, names)
    pre, attn, mid, mlp, post = (a[n] for n in names)
    # branches big enough to tell s from 1
    assert attn.abs().max() > 1e-3 and mlp.abs().max() > 1e-3
    torch.testing.assert_close(mid - pre, s * attn, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(post - mid, s * mlp, rtol=1e-4, atol=1e-6)


def test_seed_attention_variants_are_config_switches(one_thread):
    """MQA has one key/value head; RoPE drops the position table and rotates q, k by position."""
    mqa = Transformer(preset("gpt2-tiny").replace(n_kv_heads=1))
    assert mqa.blocks[0].attn.k.weight.shape == (64, 256) == mqa.blocks[0].attn.v.weight.shape
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_rot_q"]
    model, a = _cached({"positions": "rope"}, names)
    assert model.pos_embed is None
    q, rot = a[names[0]], a[names[1]]  # [B, T, H, D]
    torch.testing.assert_close(rot[:, 0], q[:, 0])  # position 0: no rotation
    assert (rot[:, 1:] - q[:, 1:]).abs().amax() > 1e-2  # later positions are rotated
    torch.testing.assert_close(rot.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps lengths
