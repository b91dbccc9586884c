"""Loss-curve PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "loss",
    keys: Sequence[str] = ("loss", "val_loss"),
) -> Path:
    """Plot the named keys of history records against `step`; log-y when every value is positive
    (GRPO's policy loss can be zero or negative, so its plot stays linear)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    positive = True
    for key in keys:
        pts = [(r["step"], r[key]) for r in history if key in r]
        if pts:
            xs, ys = zip(*pts, strict=False)
            ax.plot(xs, ys, label=key, marker="o" if key != "loss" else None, ms=3)
            positive = positive and min(ys) > 0
    ax.set(xlabel="step", ylabel="loss", title=title)
    if positive:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_runs(
    runs: dict[str, Sequence[dict[str, Any]]],
    path: str | Path,
    key: str = "val_loss",
    title: str = "validation loss",
) -> Path:
    """One line per run (name -> history) of `key` against step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, hist in runs.items():
        pts = [(r["step"], r[key]) for r in hist if key in r]
        if pts:
            xs, ys = zip(*pts, strict=False)
            ax.plot(xs, ys, label=name, marker="o", ms=3)
    ax.set(xlabel="step", ylabel=key, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
