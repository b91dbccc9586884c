"""QK/OV circuits match the model's own scores and outputs; composition, ablation, toy training."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.config import Config
from lmlab.interp import ablation, circuits, run_with_cache
from lmlab.interp.toy_train import train
from lmlab.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(
        vocab_size=20,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_seq_len=16,
        positions="none",
        attn_only=True,
        attn_qkv_bias=True,
        tie_embeddings=False,
        init_std=0.3,  # large weights: sharp, non-trivial patterns
    )
    base.update(kw)
    return Transformer(Config(**base)).eval()


def test_qk_circuit_equals_the_models_attention_scores():
    m = tiny()
    toks = torch.tensor([[3, 7, 1, 19, 7, 0]])
    _, cache = run_with_cache(m, toks, names_filter="blocks.0.attn.hook_attn_scores")
    e = circuits.embed_vectors(m, toks[0])
    for h in range(2):
        want = cache["blocks.0.attn.hook_attn_scores"][0, h]
        got = circuits.qk_circuit(m, 0, h, e, e)
        low = torch.ones(6, 6, dtype=torch.bool).tril()
        torch.testing.assert_close(got[low], want[low], atol=1e-5, rtol=1e-5)


def test_ov_circuit_mixed_by_the_pattern_equals_the_head_output():
    m = tiny()
    toks = torch.tensor([[4, 9, 2, 2, 11]])
    names = ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_result"]
    _, cache = run_with_cache(m, toks, names_filter=names)
    e = circuits.embed_vectors(m, toks[0])
    for h in range(2):
        ov = circuits.ov_circuit(m, 0, h, e)  # [T, d]
        want = cache["blocks.0.attn.hook_result"][0, :, h]
        got = cache["blocks.0.attn.hook_pattern"][0, h] @ ov
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_to_logits_is_the_unembedding_up_to_a_positive_factor_per_row():
    m = tiny(n_layers=1)
    toks = torch.tensor([[5, 6, 7]])
    logits, cache = run_with_cache(m, toks, names_filter="blocks.0.hook_resid_post")
    got = circuits.to_logits(m, cache["blocks.0.hook_resid_post"][0])
    ratio = logits[0] / got
    assert (ratio > 0).all()
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)


def test_learned_positions_are_added_and_rope_is_refused():
    m = tiny(positions="learned")
    e = circuits.embed_vectors(m, torch.tensor([2]), positions=torch.tensor([3]))
    torch.testing.assert_close(e[0], (m.embed.weight[2] + m.pos_embed.weight[3]).detach())
    mean = circuits.embed_vectors(m, torch.tensor([2]))
    torch.testing.assert_close(mean[0], (m.embed.weight[2] + m.pos_embed.weight.mean(0)).detach())
    r = tiny(positions="rope")
    with pytest.raises(ValueError, match="positions='rope'"):
        circuits.qk_circuit(r, 0, 0, e, e)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        circuits.embed_vectors(m, torch.tensor([20]))
    with pytest.raises(ValueError, match="head=5 is out of range"):
        circuits.ov_circuit(m, 0, 5, e)


def test_k_composition_sees_shared_subspaces_only():
    # rmsnorm: no centering, so subspaces stay separate through the folded norm
    m = tiny(norm="rmsnorm", attn_qkv_bias=False)
    with torch.no_grad():
        w_o = m.blocks[0].attn.o.weight  # [d, H*D]: head 0 writes only dims 0..3
        w_o[4:, :8] = 0
        k1 = m.blocks[1].attn.k.weight  # [H*D, d]: layer-1 head 0 keys read dims 8..15
        k1[:8, :8] = 0
        k1[8:, :] = 0  # layer-1 head 1 keys read only dims 0..3, where head 0 writes
        k1[8:, :4] = torch.randn(8, 4)
    assert circuits.composition_score(m, "k", (0, 0), (1, 0)) == pytest.approx(0.0, abs=1e-6)
    shared = circuits.composition_score(m, "k", (0, 0), (1, 1))
    assert shared > 1.5 * circuits.composition_baseline(m, "k")
    table = circuits.composition_scores(m, "k")
    assert table.shape == (2, 2, 2, 2) and math.isnan(float(table[0, 0, 0, 0]))
    assert float(table[1, 1, 0, 0]) == pytest.approx(shared)
    with pytest.raises(ValueError, match="lower layer"):
        circuits.composition_score(m, "k", (1, 0), (0, 0))
    with pytest.raises(ValueError, match="choose 'q', 'k' or 'v'"):
        circuits.composition_score(m, "x", (0, 0), (1, 0))


def test_diagonal_stats_and_rank_correlation():
    s = circuits.diagonal_stats(torch.eye(4) * 3)
    assert s["row_argmax_on_diagonal"] == 1.0 and s["mean_margin"] == 3.0
    m = torch.eye(4)
    m[0, 1] = 2.0  # row 0 prefers column 1
    assert circuits.diagonal_stats(m)["row_argmax_on_diagonal"] == 0.75
    assert circuits.diagonal_stats(m, rows=slice(1, 4))["row_argmax_on_diagonal"] == 1.0
    x = torch.arange(10.0)
    assert circuits.rank_correlation(x, x**3) == pytest.approx(1.0)
    assert circuits.rank_correlation(x, -x) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="square"):
        circuits.diagonal_stats(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same length"):
        circuits.rank_correlation(x, x[:5])


def test_ablations_equal_zeroed_weights():
    m = tiny(attn_only=False, n_layers=1, d_ff=12)
    toks = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    got = ablation.run_ablated(m, toks, ["L0H1", "L0N5"], mode="zero")
    with torch.no_grad():
        D = m.cfg.head_dim
        m.blocks[0].attn.o.weight[:, D : 2 * D] = 0
        m.blocks[0].mlp.down.weight[:, 5] = 0
        want = m(toks)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mean_ablation_of_the_mlp_writes_its_mean_output():
    m = tiny(attn_only=False, n_layers=1, d_ff=12)
    toks = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(2))
    means = ablation.mean_activations(m, toks, ["L0MLP"])
    names = ["blocks.0.hook_mlp_out"]
    with m.hooks(ablation.ablation_hooks(m, ["L0MLP"], means=means)):
        _, cache = run_with_cache(m, toks, names_filter=names)
    out = cache["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(out, means[names[0]].expand_as(out))


def test_ablation_errors_name_the_problem():
    m = tiny()
    with pytest.raises(ValueError, match="not understood"):
        ablation.parse_component("head3", m)
    with pytest.raises(ValueError, match="head 7 >= n_heads=2"):
        ablation.parse_component("L0H7", m)
    with pytest.raises(ValueError, match="no MLP"):
        ablation.parse_component("L0MLP", m)
    with pytest.raises(ValueError, match="needs means"):
        ablation.ablation_hooks(m, ["L0H0"], mode="mean")
    with pytest.raises(ValueError, match="choose 'mean' or 'zero'"):
        ablation.ablation_hooks(m, ["L0H0"], mode="noise")


def test_toy_train_learns_a_constant_and_rejects_bad_arguments():
    m = tiny(n_layers=1)

    def batch(g):
        x = torch.randint(0, 20, (8, 5), generator=g)
        return x, torch.full_like(x, 3)

    hist = train(m, batch, steps=60, lr=1e-2, eval_every=30, evaluate=lambda s: {"s": s})
    assert [h["step"] for h in hist] == [1, 30, 60] and hist[-1]["s"] == 60
    assert hist[-1]["loss"] < 0.1 < hist[0]["loss"]
    with pytest.raises(ValueError, match="steps >= 1"):
        train(m, batch, steps=0, lr=1e-3)
