"""Steering vectors on tiny GPT-2 and GPT-OSS (MoE) presets: application, generation, training, errors."""

from __future__ import annotations

import pytest
import torch

from lmlab.families import preset
from lmlab.generate import KVCache, generate
from lmlab.interp import run_with_cache
from lmlab.model import Transformer
from lmlab.steer import SteeringVector, actadd, train_steering_vector
from lmlab.steer.train import logistic_aggregator, mean_aggregator, pca_aggregator

FAMILIES = ["gpt2-tiny", "gpt-oss-tiny"]
torch.set_num_threads(1)  # on a shared 2-core machine, two threads contend and run ~15x slower


def tiny(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset(name)).eval()


def vec(model: Transformer, layer: int = 1, scale: float = 4.0, seed: int = 1) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector.from_layers({layer: torch.randn(model.cfg.d_model, generator=g) * scale})


@pytest.mark.parametrize("name", FAMILIES)
def test_add_matches_manual_hook(name: str) -> None:
    m = tiny(name)
    sv = vec(m)
    x = torch.randint(0, 100, (2, 7))
    v = sv.vectors["blocks.1.hook_resid_pre"]
    want = m.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, h: a + 0.5 * v)])
    with torch.no_grad(), sv.apply(m, multiplier=0.5):
        got = m(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - m(x)).abs().max() > 1e-2  # it did change something, and the hook is gone


@pytest.mark.parametrize("name", FAMILIES)
def test_ablation_removes_the_direction(name: str) -> None:
    m = tiny(name)
    sv = vec(m)
    v = sv.vectors["blocks.1.hook_resid_pre"]
    x = torch.randint(0, 100, (2, 5))
    for op, want in (("ablate", 0.0), ("ablate_add", 2.0 * float(v.norm()))):
        with sv.apply(m, multiplier=2.0, operator=op):
            _, cache = run_with_cache(m, x, names_filter="blocks.1.hook_resid_pre")
        proj = cache["resid_pre", 1] @ (v / v.norm())
        assert torch.allclose(proj, torch.full_like(proj, want), atol=1e-3)


def cached_logits(m: Transformer, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Prefill x, then feed `new` one token at a time: logits [B, T_new] of every step."""
    cache = KVCache(m, x.shape[0], x.shape[1] + new.shape[1])
    outs = [m(x, cache=cache)[:, -1]]
    for t in range(new.shape[1] - 1):
        outs.append(m(new[:, t : t + 1], cache=cache)[:, -1])
    return torch.stack(outs, 1)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    ("cached", "full"),
    [("all", "all"), ("new", slice(6, None)), ("prompt", slice(0, 6)), ([2, 8], [2, 8])],
)
def test_cached_decoding_steers_like_a_full_forward(name: str, cached, full) -> None:
    m = tiny(name)
    sv = vec(m)
    x, new = torch.randint(0, 100, (2, 6)), torch.randint(0, 100, (2, 4))
    with torch.no_grad():
        with sv.apply(m, positions=cached):
            step = cached_logits(m, x, new)
        with sv.apply(m, positions=full):
            ref = m(torch.cat([x, new], 1))[:, 5:-1]
        plain = m(torch.cat([x, new], 1))[:, 5:-1]
    assert torch.allclose(step, ref, atol=1e-4)
    assert (ref - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_actadd_is_front_aligned_and_padding_safe(name: str) -> None:
    m = tiny(name)
    sv = actadd(m, [5, 6, 7], [5, 9], layer=1, coeff=3.0)
    diff = sv.vectors["blocks.1.hook_resid_pre"]
    assert diff.shape == (3, m.cfg.d_model) and sv.aligned
    assert diff[0].abs().max() < 1e-5  # same first token: no difference there (causal)
    long, short = [11, 12, 13, 14, 15], [21, 22, 23]
    with torch.no_grad(), sv.apply(m):
        alone = [generate(m, [p], max_new_tokens=4).sequences[0] for p in (long, short)]
        batch = generate(m, [long, short], max_new_tokens=4).sequences  # left-padded
        steered = m(torch.tensor([long]))
    assert batch == alone
    with torch.no_grad():
        assert (steered - m(torch.tensor([long]))).abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_permanent_apply_and_remove(name: str) -> None:
    m = tiny(name)
    x = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        before = m(x)
        handle = vec(m).apply_permanently(m, positions=slice(2, None))
        during = m(x)
        handle.remove()
        after = m(x)
    assert torch.allclose(during[:, :2], before[:, :2], atol=1e-5)  # positions 0, 1 untouched
    assert (during[:, 2:] - before[:, 2:]).abs().max() > 1e-2
    assert torch.equal(after, before)


def test_save_load_roundtrip(tmp_path) -> None:
    m = tiny("gpt2-tiny")
    sv = actadd(m, [1, 2, 3], [1, 4, 5], layer=0, coeff=2.0) + actadd(
        m, [1, 2, 3], [1, 4, 5], 0, 1.0
    )
    sv.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(tmp_path / "v.safetensors")
    assert back.aligned and back.meta["method"] == "actadd"
    assert torch.equal(
        back.vectors["blocks.0.hook_resid_pre"], sv.vectors["blocks.0.hook_resid_pre"]
    )
    assert back.layers == [0]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        (2 * sv).save(tmp_path / "v.safetensors")
    (2 * sv).save(tmp_path / "v.safetensors", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


@pytest.mark.parametrize("name", FAMILIES)
def test_train_from_pairs_mean_is_the_mean_difference(name: str) -> None:
    m = tiny(name)
    pairs = [([3, 4, 5], [3, 4, 9]), ([7, 8], [7, 1]), ([2, 2, 2, 2], [6, 6])]
    sv = train_steering_vector(m, pairs, layers=[0, 1], hook="resid_post")
    _, c1 = run_with_cache(m, torch.tensor([[3, 4, 5]]))
    _, c2 = run_with_cache(m, torch.tensor([[3, 4, 9]]))
    first = c1["resid_post", 1][0, -1] - c2["resid_post", 1][0, -1]
    _, others = run_with_cache(m, torch.tensor([[7, 8], [7, 1], [6, 6]]))
    _, four = run_with_cache(m, torch.tensor([[2, 2, 2, 2]]))
    o = others["resid_post", 1][:, -1]
    want = (first + (o[0] - o[1]) + (four["resid_post", 1][0, -1] - o[2])) / 3
    assert torch.allclose(sv.vectors["blocks.1.hook_resid_post"], want, atol=1e-4)
    for agg in ("pca", "logistic"):
        other = train_steering_vector(m, pairs, layers=1, aggregator=agg, hook="resid_post")
        assert other.vectors["blocks.1.hook_resid_post"].shape == (m.cfg.d_model,)


def test_aggregators_recover_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    base = torch.randn(64, 32, generator=g)
    pos = base + 2 * u + 0.3 * torch.randn(64, 32, generator=g)
    neg = base - 2 * u + 0.3 * torch.randn(64, 32, generator=g)
    for agg in (mean_aggregator, pca_aggregator, logistic_aggregator):
        v = agg(pos, neg)
        assert torch.cosine_similarity(v, u, dim=0) > 0.85, agg.__name__
        assert 3.0 < float(v @ u) < 4.5, agg.__name__  # about the mean difference's scale (4)


# ---------------------------------------------------------------------------- bad input


def test_dimension_mismatch_is_a_clear_error() -> None:
    m = tiny("gpt2-tiny")
    sv = SteeringVector.from_layers({1: torch.randn(10)})
    with pytest.raises(ValueError, match=r"shape \(10,\).*expects \(256,\)"), sv.apply(m):
        pass
    z = SteeringVector.from_layers({0: torch.randn(m.cfg.d_model)}, hook="z")
    with pytest.raises(ValueError, match="expects"):
        z.check(m)


def test_layer_mismatch_is_a_clear_error() -> None:
    m = tiny("gpt-oss-tiny")
    sv = SteeringVector.from_layers({5: torch.randn(m.cfg.d_model)})
    with pytest.raises(ValueError, match=r"layer 5 .* has 2 layers \(0\.\.1\)"), sv.apply(m):
        pass
    with pytest.raises(ValueError, match=r"layers=\[7\]"):
        train_steering_vector(m, [([1], [2])], layers=7)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        actadd(m, [1], [2], layer=3, coeff=1.0)


def test_empty_and_bad_arguments_are_clear_errors() -> None:
    m = tiny("gpt2-tiny")
    with pytest.raises(ValueError, match="pairs is empty"):
        train_steering_vector(m, [], layers=0)
    with pytest.raises(ValueError, match="empty"):
        train_steering_vector(m, [([1, 2], [])], layers=0)
    with pytest.raises(ValueError, match="aggregator='median'"):
        train_steering_vector(m, [([1], [2])], layers=0, aggregator="median")
    with pytest.raises(ValueError, match="empty mapping"):
        SteeringVector({})
    sv = vec(m)
    with pytest.raises(ValueError, match="positions='last'"), sv.apply(m, positions="last"):
        pass
    with pytest.raises(ValueError, match="operator='sub'"), sv.apply(m, operator="sub"):
        pass
    with pytest.raises(ValueError, match="need a tokenizer"):
        train_steering_vector(m, [("good", "bad")], layers=0)
