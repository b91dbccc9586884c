"""Toy Models of Superposition (Elhage et al. 2022): pentagons, the m-feature solution, geometry, phases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.runs import RunDir
from lmlab.toy import plots
from lmlab.toy.superposition import (
    PHASES,
    angles_2d,
    dimensionality_clusters,
    dims_per_feature,
    feature_norms,
    phase_diagram,
    train_best_of,
)
from lmlab.train.logging import log_run

SUMMARY = (
    "toy models of superposition: n=5,m=2 sweep, n=20,m=5, n=200,m=20 geometry, n=2,m=1 phases"
)


@dataclass
class Config:
    max_steps: int = 4000
    batch_size: int = 512
    lr: float = 1e-2
    restarts: int = 3
    seed: int = 0
    small_densities: int = 6  # n=5, m=2 and n=20, m=5: density from 1 down to 0.01
    geometry_n: int = 200
    geometry_m: int = 20
    geometry_instances: int = 12
    geometry_density: tuple[float, float] = (0.8, 0.12)  # where the 1/2, 2/5, ... structures live
    geometry_max_steps: int = 4000
    geometry_batch_size: int = 256
    phase_grid: int = 9  # n=2, m=1: grid x grid of relative importance x density


def run(cfg: Config, out: RunDir) -> dict:
    """Train the four families of toy models and write plots, metrics and report.md."""
    train_kw = dict(
        steps=cfg.max_steps, batch=cfg.batch_size, lr=cfg.lr, restarts=cfg.restarts, seed=cfg.seed
    )
    dens = torch.logspace(0, -2, cfg.small_densities)
    titles = [f"1-S = {d:.3g}" for d in dens.tolist()]
    metrics: dict = {}
    lines = ["# Toy models of superposition", ""]

    # n=5, m=2, importance 0.9^i: dense -> 2 orthogonal features, sparse -> pentagon.
    W5, _, loss5 = train_best_of(5, 2, 0.9 ** torch.arange(5.0), dens, **train_kw)
    plots.plot_wtw(W5, titles, out.file("n5_m2_wtw.png"))
    plots.plot_directions(W5, titles, out.file("n5_m2_directions.png"))
    lines += [
        "## n=5, m=2, importance 0.9^i",
        "",
        "| density | features represented | angles between neighbours (deg) | loss |",
        "|---|---|---|---|",
    ]
    rows = []
    for i, d in enumerate(dens.tolist()):
        ang = angles_2d(W5[i])
        n_rep = int((feature_norms(W5[i : i + 1]) > 0.5).sum())
        rows.append(
            {"density": d, "represented": n_rep, "angles": ang.tolist(), "loss": float(loss5[i])}
        )
        lines.append(
            f"| {d:.3g} | {n_rep} | {', '.join(f'{a:.1f}' for a in ang.tolist())} | {loss5[i]:.4f} |"
        )
    metrics["n5_m2"] = rows
    lines += [
        "",
        "Dense features: the two most important features get orthogonal directions, the rest "
        "are dropped. Sparse features: all five sit on a pentagon (72 deg apart).",
        "![](n5_m2_directions.png)",
        "![](n5_m2_wtw.png)",
        "",
    ]

    # n=20, m=5, importance 0.7^i: superposition grows as features get sparser.
    W20, _, _ = train_best_of(20, 5, 0.7 ** torch.arange(20.0), dens, **train_kw)
    plots.plot_wtw(W20, titles, out.file("n20_m5_wtw.png"))
    n_rep20 = (feature_norms(W20) > 0.5).sum(-1).tolist()
    metrics["n20_m5_represented"] = dict(zip(dens.tolist(), n_rep20, strict=True))
    lines += [
        "## n=20, m=5, importance 0.7^i",
        "",
        "Features represented (norm > 0.5) by density: "
        + ", ".join(f"{d:.3g}: {n}" for d, n in zip(dens.tolist(), n_rep20, strict=True)),
        "",
        "![](n20_m5_wtw.png)",
        "",
    ]

    # n=200, m=20, uniform importance: feature dimensionality sticks to 1/2, 2/5, ...
    hi, lo = cfg.geometry_density
    gd = torch.logspace(math.log10(hi), math.log10(lo), cfg.geometry_instances)
    Wg, _, _ = train_best_of(
        cfg.geometry_n,
        cfg.geometry_m,
        torch.ones(cfg.geometry_n),
        gd,
        restarts=1,
        steps=cfg.geometry_max_steps,
        batch=cfg.geometry_batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    plots.plot_dimensionality(Wg, gd, out.file("dimensionality.png"))
    hist = dimensionality_clusters(Wg)
    metrics["geometry"] = {
        "density": gd.tolist(),
        "dims_per_feature": dims_per_feature(Wg).tolist(),
        "clusters": hist,
    }
    lines += [
        f"## n={cfg.geometry_n}, m={cfg.geometry_m}, uniform importance: feature dimensionality",
        "",
        "Share of represented features whose dimensionality is within 0.02 of each fraction:",
        "",
        "| fraction | share |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in hist.items()]
    lines += ["", "![](dimensionality.png)", ""]

    # n=2, m=1 phase diagram.
    rel = torch.logspace(-1, 1, cfg.phase_grid)
    pd = torch.logspace(0, -2, cfg.phase_grid)
    phase = phase_diagram(rel, pd, **train_kw)
    plots.plot_phase(phase, rel, pd, out.file("phase_n2_m1.png"))
    counts = {PHASES[k]: int((phase == k).sum()) for k in range(3)}
    metrics["phase_counts"] = counts
    lines += [
        "## n=2, m=1 phase diagram",
        "",
        "Cells per phase of feature 2: " + ", ".join(f"{k}: {v}" for k, v in counts.items()),
        "",
        "![](phase_n2_m1.png)",
    ]
    out.write_report("\n".join(lines))
    log_run(out.path, metrics)
    return metrics
