"""Parity with transformers: each family built at random init in both libraries, weights copied
through our name map, same inputs. float32 logits agree to 1e-4 (max abs), with and without hooks."""

from __future__ import annotations

import pytest
import torch

from lmlab.interp import run_with_cache
from lmlab.model import Transformer
from lmlab.weights.hf import config_from_hf, load_state_dict

transformers = pytest.importorskip("transformers")

TOL_F32 = 1e-4
# bf16 has an 8-bit mantissa (relative step 2^-8 = 0.4%); after a few layers of rounding in two
# implementations that round in slightly different places, logits of magnitude ~1 differ by a few
# bf16 steps. We compare the bf16 difference against the float32 reference and allow 5% of the
# logit range, about 12 bf16 steps.
BF16_REL = 0.05


def _gpt2():
    return transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=3, n_head=4, n_positions=128)


def _llama():
    return transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
    )


def _llama3_rope():
    return transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=512,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        rope_theta=500000.0,
        tie_word_embeddings=True,
    )


def _mistral():
    return transformers.MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=7,
    )


def _gemma3():
    return transformers.Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=6,
        query_pre_attn_scalar=32,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
    )


def _gpt_oss():
    return transformers.GptOssConfig(
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
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 64,
        },
        rope_theta=150000.0,
    )


def _bert():
    return transformers.BertConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )


FAMILIES = {
    "gpt2": (_gpt2, transformers.GPT2LMHeadModel),
    "llama": (_llama, transformers.LlamaForCausalLM),
    "llama3-rope": (_llama3_rope, transformers.LlamaForCausalLM),
    "mistral": (_mistral, transformers.MistralForCausalLM),
    "gemma3": (_gemma3, transformers.Gemma3ForCausalLM),
    "gpt-oss": (_gpt_oss, transformers.GptOssForCausalLM),
    "bert": (_bert, transformers.BertModel),
}


def _randomize(model: torch.nn.Module) -> None:
    """Random init everywhere, including norms, biases and sinks that HF initializes to constants."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "sinks" in name else (0.1 if p.dim() < 2 else 0.08)
            base = (
                1.0
                if ("norm" in name.lower() and "gemma" not in type(model).__name__.lower())
                and p.dim() == 1
                else 0.0
            )
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


def build_pair(family: str):
    make_cfg, cls = FAMILIES[family]
    hf_cfg = make_cfg()
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = cls(hf_cfg).eval()
    _randomize(hf)
    ours = Transformer(config_from_hf(hf_cfg.to_dict())).eval()
    load_state_dict(ours, hf.state_dict())
    return hf, ours


def batch(family: str, T: int = 24):
    """Two rows, the second right-padded by 5 tokens (decoders) or padded (BERT)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 300, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, -5:] = 0
    return tokens, mask


def hf_out(hf, family, tokens, mask):
    with torch.no_grad():
        out = hf(input_ids=tokens, attention_mask=mask)
    return out.last_hidden_state if family == "bert" else out.logits


def max_diff(a, b, mask):
    keep = mask.bool()
    return (a[keep].float() - b[keep].float()).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family):
    hf, ours = build_pair(family)
    tokens, mask = batch(family)
    ref = hf_out(hf, family, tokens, mask)
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask)
    assert got.shape == ref.shape
    assert max_diff(got, ref, mask) <= TOL_F32


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_with_hooks_explicit_path(family):
    """Hooking every pattern forces the explicit softmax path; numbers must not move."""
    hf, ours = build_pair(family)
    tokens, mask = batch(family)
    ref = hf_out(hf, family, tokens, mask)
    seen = []
    hooks = [
        (f"blocks.{i}.attn.hook_pattern", lambda x, h: seen.append(h.name))
        for i in range(ours.cfg.n_layers)
    ]
    with torch.no_grad():
        got = ours.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
    assert len(seen) == ours.cfg.n_layers
    assert max_diff(got, ref, mask) <= TOL_F32


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3", "gpt-oss"])
def test_left_padding_with_positions(family):
    """Left padding: with the same position ids, real tokens get the same logits as in transformers."""
    hf, ours = build_pair(family)
    tokens, _ = batch(family)
    mask = torch.ones_like(tokens)
    mask[1, :6] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=mask, position_ids=pos).logits
        got = ours(tokens, attention_mask=mask)  # positions derived from the mask by default
    assert max_diff(got, ref, mask) <= TOL_F32


def test_gpt_oss_sequence_longer_than_window_uses_several_experts():
    hf, ours = build_pair("gpt-oss")
    tokens, mask = batch("gpt-oss", T=40)
    assert tokens.shape[1] > ours.cfg.sliding_window
    _, cache = run_with_cache(ours, tokens, names_filter=lambda n: n.endswith("expert_indices"))
    used = torch.unique(
        torch.cat([cache["expert_indices", i].flatten() for i in range(ours.cfg.n_layers)])
    )
    assert used.numel() == ours.cfg.n_experts
    assert (
        max_diff(
            ours(tokens, attention_mask=mask).detach(), hf_out(hf, "gpt-oss", tokens, mask), mask
        )
        <= TOL_F32
    )


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "gemma3", "gpt-oss", "bert"])
def test_bf16_close_to_float32_reference(family):
    """In bf16 both libraries stay within BF16_REL of the logit range from the float32 reference,
    and ours is no further from it than transformers' own bf16 run (times 1.5)."""
    hf, ours = build_pair(family)
    tokens, mask = batch(family)
    ref = hf_out(hf, family, tokens, mask).float()
    hf16, ours16 = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    with torch.no_grad():
        got = ours16(tokens, attention_mask=mask)
    theirs = hf_out(hf16, family, tokens, mask)
    span = (ref[mask.bool()].max() - ref[mask.bool()].min()).item()
    ours_err, hf_err = max_diff(got, ref, mask), max_diff(theirs, ref, mask)
    assert ours_err <= BF16_REL * span
    assert ours_err <= 1.5 * hf_err + 1e-3 * span


@pytest.mark.parametrize("name", ["llama-tiny", "gpt-oss-tiny"])
def test_bf16_attention_runs_in_float32_when_training_on_cpu(name, monkeypatch):
    """CPU flash attention's bf16 backward is slower than its float32 one, so with gradients
    flowing a bf16 model (or autocast) attends in float32 and hands bf16 back; without gradients
    the bf16 kernel runs as before."""
    import torch.nn.functional as F

    from lmlab.families import preset

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = Transformer(preset(name)).to(torch.bfloat16)
    attn = model.blocks[0].attn
    H, KV, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = torch.randn(2, H, 5, D, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, KV, 9, D, dtype=torch.bfloat16) for _ in range(2))
    mask = torch.ones(2, 1, 5, 9, dtype=torch.bool).tril(4)
    z = attn._fused(q, k, v, mask)
    with torch.no_grad():
        ref = attn._fused(q.float(), k.float(), v.float(), mask)
        low = attn._fused(q, k, v, mask)
    f32, b16 = (torch.float32,) * 3, (torch.bfloat16,) * 3
    assert seen == [f32, f32, b16]
    assert z.dtype == torch.bfloat16 and low.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), ref, atol=4e-3, rtol=8e-3)  # one bf16 rounding
    z.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0
    with torch.autocast("cpu", torch.bfloat16):  # float32 weights under autocast: the same
        z32 = model.float().blocks[0].attn._fused(q.float().detach().requires_grad_(), k, v, mask)
    assert z32.dtype == torch.bfloat16 and seen[-1] == f32
