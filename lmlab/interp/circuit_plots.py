"""PNG plots for circuit experiments: training curves, circuit matrices, score lines, ablation bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(
    steps: Sequence[int],
    left: dict[str, Sequence[float]],
    path: str | Path,
    *,
    right: dict[str, Sequence[float]] | None = None,
    left_label: str = "loss",
    right_label: str = "score",
    title: str = "",
    span: tuple[float, float] | None = None,
) -> Path:
    """Curves over training steps on a left axis (and an optional right one); `span` is shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if span is not None:
        ax.axvspan(*span, color="orange", alpha=0.2, label="steepest drop")
    for name, ys in left.items():
        ax.plot(steps, ys, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(left_label)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for i, (name, ys) in enumerate(right.items()):
            ax2.plot(steps, ys, "--", color=f"C{len(left) + i}", label=name)
        ax2.set_ylabel(right_label)
        ax2.set_ylim(-0.02, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.15 if right else 1.02, 1), fontsize=8
    )
    ax.set_title(title)
    return _save(fig, path)


def plot_matrix(
    m: torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    centered: bool = True,
) -> Path:
    """A matrix as a heatmap (diverging colours around 0 when `centered`)."""
    m = m.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if centered:
        lim = float(m.abs().max()) or 1.0
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        im = ax.imshow(m.numpy(), cmap="viridis")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_line(
    x: Sequence[float],
    ys: dict[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """One or more lines over a shared x axis."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, y in ys.items():
        ax.plot(list(x), list(y), marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(ys) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    hline: float | None = None,
) -> Path:
    """Bars with an optional horizontal reference line (e.g. an accuracy threshold)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(labels) + 2), 3.8))
    ax.bar(range(len(labels)), list(values), color="C0")
    ax.set_xticks(range(len(labels)), list(labels), rotation=45, ha="right", fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)
