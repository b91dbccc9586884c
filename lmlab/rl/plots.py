"""Reward curves: total reward and each reward function per step (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_rewards(
    history: list[dict[str, Any]], path: str | Path, title: str = "GRPO rewards"
) -> Path:
    """Mean reward per step (total and per function), smoothed over 5 steps, with raw points."""
    steps = [h["step"] for h in history]
    keys = ["reward", *sorted(k for k in history[0] if k.startswith("reward/"))]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ys = [h[k] for h in history]
        smooth = [
            sum(ys[max(0, i - 4) : i + 1]) / len(ys[max(0, i - 4) : i + 1]) for i in range(len(ys))
        ]
        (line,) = ax.plot(steps, smooth, label=k.removeprefix("reward/"))
        ax.scatter(steps, ys, s=6, alpha=0.3, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (5-step average)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
