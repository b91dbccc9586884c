"""Toy models of superposition: the paper's known results at reduced size."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.recipes import superposition as recipe
from lmlab.runs import RunDir
from lmlab.toy.superposition import (
    ToyModel,
    angles_2d,
    dimensionality,
    dimensionality_clusters,
    feature_norms,
    phase_diagram,
    phase_n2m1,
    train_best_of,
)
from tests.run_events import assert_run_events

FAST = dict(steps=2000, batch=256, lr=1e-2, progress=False)


def _polygon(n: int) -> torch.Tensor:
    a = torch.arange(n) * 2 * math.pi / n
    return torch.stack([a.cos(), a.sin()])  # [2, n]


def test_dimensionality_of_known_geometries():
    pentagon = _polygon(5)
    digon = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])  # two antipodal pairs
    ortho = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # third feature dropped
    assert torch.allclose(dimensionality(pentagon[None]), torch.full((1, 5), 0.4), atol=1e-5)
    assert torch.allclose(dimensionality(digon[None]), torch.full((1, 4), 0.5), atol=1e-5)
    assert torch.allclose(dimensionality(ortho[None]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(angles_2d(pentagon), torch.full((5,), 72.0), atol=1e-4)


def test_pentagon_when_sparse_and_orthogonal_pair_when_dense():
    W, _, _ = train_best_of(
        5, 2, 0.9 ** torch.arange(5.0), torch.tensor([1.0, 0.05]), restarts=3, **FAST
    )
    dense, sparse = W[0], W[1]
    norms = feature_norms(W)
    # dense: the two most important features get orthogonal unit directions, the rest ~0
    assert (norms[0, :2] > 0.9).all() and (norms[0, 2:] < 0.2).all(), norms[0]
    cos = (dense[:, 0] @ dense[:, 1]) / (norms[0, 0] * norms[0, 1])
    assert abs(math.degrees(math.acos(float(cos))) - 90) < 5
    # sparse: all five features on a regular pentagon
    ang = angles_2d(sparse)
    assert ang.numel() == 5, norms[1]
    assert ((ang - 72).abs() < 5).all(), ang


def test_dimensionality_clusters_at_one_half_and_two_fifths():
    density = torch.logspace(-0.2, -1.5, 8)
    W, _, _ = train_best_of(10, 4, torch.ones(10), density, restarts=2, **FAST)
    shares = dimensionality_clusters(W)
    assert shares["1/2"] >= 0.15 and shares["2/5"] >= 0.15, shares
    others = [v for k, v in shares.items() if k not in ("1/2", "2/5")]
    assert min(shares["1/2"], shares["2/5"]) > max(others), shares


def test_phase_diagram_has_three_regions():
    rel = torch.logspace(-1, 1, 5)  # importance of feature 2 relative to feature 1
    density = torch.logspace(0, -2, 5)
    phase = phase_diagram(rel, density, restarts=3, **FAST)
    assert phase[0, 0] == 0  # dense, less important: not represented
    assert phase[-1, 0] == 1  # dense, more important: gets the dimension alone
    assert phase[2, -1] == 2  # sparse, equally important: antipodal superposition
    assert set(phase.flatten().tolist()) == {0, 1, 2}


def test_phase_labels():
    W = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, -1.0]]])
    assert phase_n2m1(W).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"n=2, m=1"):
        phase_n2m1(torch.zeros(3, 2, 2))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="density must lie in"):
        ToyModel(5, 2, torch.ones(5), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="n_features"):
        ToyModel(0, 2, torch.ones(1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="importance has shape"):
        ToyModel(5, 2, torch.ones(4), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"shape \[2, n\]"):
        angles_2d(torch.zeros(3, 5))


def test_recipe_writes_report(tmp_path):
    cfg = recipe.Config(
        max_steps=300,
        batch_size=64,
        restarts=1,
        small_densities=2,
        geometry_n=12,
        geometry_m=3,
        geometry_instances=2,
        geometry_max_steps=100,
        phase_grid=2,
    )
    out = RunDir.create("superposition", tmp_path)
    metrics = recipe.run(cfg, out)
    assert_run_events(out.path)
    assert len(metrics["n5_m2"]) == 2 and sum(metrics["phase_counts"].values()) == 4
    for f in (
        "report.md",
        "n5_m2_directions.png",
        "n5_m2_wtw.png",
        "dimensionality.png",
        "phase_n2_m1.png",
    ):
        assert out.file(f).stat().st_size > 0
