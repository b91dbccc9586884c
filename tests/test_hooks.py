"""Hook points: names identical on every family, caching, editing, clean removal."""

from __future__ import annotations

import pytest
import torch

from lmlab.families import preset
from lmlab.hooks import HookError
from lmlab.interp import run_with_cache
from lmlab.model import Transformer

TINY = ["gpt2-tiny", "llama-tiny", "mistral-tiny", "gemma3-tiny", "gpt-oss-tiny", "bert-tiny"]
PER_BLOCK = [
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]


def model_and_tokens(name: str, T: int = 20):
    torch.manual_seed(0)
    m = Transformer(preset(name)).eval()
    return m, torch.randint(0, m.cfg.vocab_size, (2, T))


@pytest.mark.parametrize("name", TINY)
def test_same_hook_names_on_every_family(name):
    m, _ = model_and_tokens(name)
    names = set(m.hook_names())
    for i in range(m.cfg.n_layers):
        for suffix in PER_BLOCK:
            assert f"blocks.{i}.{suffix}" in names
    assert "hook_embed" in names
    if m.cfg.lm_head:
        assert "ln_final.hook_normalized" in names


@pytest.mark.parametrize("name", TINY)
def test_run_with_cache_records_every_hook(name):
    m, tokens = model_and_tokens(name)
    with torch.no_grad():
        plain = m(tokens)
        out, cache = run_with_cache(m, tokens)
    # every hook fires, except those that do not exist for this family (no positions to embed, ...)
    expected = set(m.hook_names())
    if m.pos_embed is None:
        expected.discard("hook_pos_embed")
    if m.token_type_embed is None:
        expected.discard("hook_token_type_embed")
    if not m.cfg.qk_norm:
        expected -= {n for n in expected if ".q_norm." in n or ".k_norm." in n}
    if m.cfg.positions != "rope":
        expected -= {n for n in expected if "hook_rot_" in n}
    if not m.cfg.gated:
        expected -= {n for n in expected if n.endswith("hook_pre_linear")}
    if m.embed_norm is None:
        expected -= {n for n in expected if n.startswith("embed_norm")}
    assert set(cache.keys()) == expected
    assert torch.allclose(out, plain, atol=1e-5)
    B, T = tokens.shape
    H, D = m.cfg.n_heads, m.cfg.head_dim
    assert cache["pattern", 0].shape == (B, H, T, T)
    assert (
        torch.allclose(cache["pattern", 0].sum(-1), torch.ones(B, H, T), atol=1e-5)
        or m.cfg.attn_sinks
    )
    assert cache["z", 0].shape == (B, T, H, D)
    assert cache["k", 0].shape == (B, T, m.cfg.n_kv_heads, D)
    assert cache["result", 0].shape == (B, T, H, m.cfg.d_model)
    # the per-head results sum (plus bias) to the attention output
    bias = m.blocks[0].attn.o.bias
    summed = cache["result", 0].sum(2) + (bias if bias is not None else 0)
    attn_out = cache["attn_out", 0]
    if not m.cfg.sandwich_norm:
        assert torch.allclose(summed, attn_out, atol=1e-5)
    assert cache["resid_post", m.cfg.n_layers - 1].shape == (B, T, m.cfg.d_model)


def test_causal_pattern_is_lower_triangular_and_window_respected():
    m, tokens = model_and_tokens("mistral-tiny", T=40)
    _, cache = run_with_cache(m, tokens, names_filter="blocks.0.attn.hook_pattern")
    p = cache["pattern", 0]
    i = torch.arange(40)
    rel = i[:, None] - i[None, :]
    outside = (rel < 0) | (rel >= m.cfg.sliding_window)
    assert p[..., outside].abs().max() == 0
    assert p[..., ~outside].min() > 0


@pytest.mark.parametrize("name", TINY)
def test_editing_hook_changes_output_and_removal_restores_bits(name):
    m, tokens = model_and_tokens(name)
    with torch.no_grad():
        before = m(tokens)

        def zero_head(z, hook):
            z[:, :, 0] = 0.0
            return z

        edited = m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])
        doubled = m.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, h: 2 * x)]
        )
        after = m(tokens)
    assert (edited - before).abs().max() > 1e-4
    assert (doubled - before).abs().max() > 1e-4
    assert torch.equal(after, before)  # bit for bit
    assert not any(hp.active for hp in m.hook_dict.values())


def test_hooks_removed_when_forward_raises():
    m, tokens = model_and_tokens("llama-tiny")

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        m.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.hook_resid_pre", boom), ("hook_embed", lambda x, h: None)]
        )
    assert not any(hp.active for hp in m.hook_dict.values())
    with pytest.raises(RuntimeError), m.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", boom)]):
        m(tokens)
    assert not any(hp.active for hp in m.hook_dict.values())


def test_backward_hooks_see_gradients():
    m, tokens = model_and_tokens("gpt2-tiny")
    grads = {}
    out = m.run_with_hooks(
        tokens, bwd_hooks=[("blocks.0.hook_resid_post", lambda g, h: grads.setdefault(h.name, g))]
    )
    out.sum().backward()
    g = grads["blocks.0.hook_resid_post"]
    assert g.shape == (2, 20, m.cfg.d_model) and g.abs().sum() > 0


def test_moe_hooks_show_each_tokens_experts():
    m, tokens = model_and_tokens("gpt-oss-tiny")
    _, cache = run_with_cache(m, tokens, names_filter=lambda n: ".mlp." in n)
    k, E = m.cfg.top_k, m.cfg.n_experts
    assert cache["post", 0].shape == (2, 20, k, m.cfg.d_ff)
    assert cache["router_logits", 0].shape == (2, 20, E)
    assert torch.allclose(cache["expert_weights", 0].sum(-1), torch.ones(2, 20), atol=1e-5)
    # editing one expert slot's activations changes the output
    with torch.no_grad():
        base = m(tokens)
        zeroed = m.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, h: torch.zeros_like(x))]
        )
    assert (zeroed - base).abs().max() > 1e-4


def test_stop_at_layer_returns_residual():
    m, tokens = model_and_tokens("llama-tiny")
    _, cache = run_with_cache(m, tokens, names_filter="blocks.1.hook_resid_pre")
    resid = m(tokens, stop_at_layer=1)
    assert torch.allclose(resid, cache["resid_pre", 1])


@pytest.mark.parametrize("name", ["gpt2-tiny", "gemma3-tiny", "bert-tiny"])
def test_start_at_layer_continues_from_a_residual(name):
    """forward(resid_pre of block k, start_at_layer=k) equals the full forward, padding included."""
    m, tokens = model_and_tokens(name)
    mask = torch.ones_like(tokens)
    mask[0, -2:] = 0
    full = m(tokens, attention_mask=mask, return_hidden=True)
    _, cache = run_with_cache(
        m, tokens, attention_mask=mask, names_filter="blocks.1.hook_resid_pre"
    )
    resumed = m(cache["resid_pre", 1], attention_mask=mask, start_at_layer=1, return_hidden=True)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"pass the residual stream \[B, T, \d+\]"):
        m(tokens, start_at_layer=1)


def test_bad_hook_names_suggest_near_ones():
    m, tokens = model_and_tokens("gpt2-tiny")
    with pytest.raises(HookError, match=r"blocks\.0\.attn\.hook_pattern"):
        m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_patern", lambda x, h: None)])
    with pytest.raises(HookError, match="matched no hook point"):
        run_with_cache(m, tokens, names_filter=lambda n: "nothing" in n)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        m.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, h: x[:, :1])])
