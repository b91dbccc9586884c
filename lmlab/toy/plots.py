"""PNG plots for the superposition toy models (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.toy.superposition import PHASES, dimensionality, dims_per_feature, feature_norms


def plot_wtw(W: torch.Tensor, titles: Sequence[str], path: str | Path) -> None:
    """Heatmaps of W^T W [n, n] per instance, with the bias-free feature norms underneath."""
    n_inst = W.shape[0]
    fig, axes = plt.subplots(
        2, n_inst, figsize=(2.2 * n_inst, 4.4), squeeze=False, gridspec_kw={"height_ratios": [4, 1]}
    )
    for i in range(n_inst):
        wtw = (W[i].T @ W[i]).numpy()
        axes[0, i].imshow(wtw, cmap="RdBu", vmin=-1, vmax=1)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
        axes[1, i].bar(range(W.shape[-1]), feature_norms(W[i : i + 1])[0].numpy(), color="k")
        axes[1, i].set_ylim(0, 1.3)
        axes[1, i].set_xticks([])
    axes[1, 0].set_ylabel("||W_i||", fontsize=8)
    fig.suptitle("W^T W (red +1, blue -1) and feature norms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_directions(W: torch.Tensor, titles: Sequence[str], path: str | Path) -> None:
    """Feature directions W_i in the 2-D hidden space, one panel per instance (m must be 2)."""
    if W.shape[1] != 2:
        raise ValueError(f"plot_directions needs m=2 hidden dims, got W of shape {tuple(W.shape)}")
    n_inst, _, n = W.shape
    colors = plt.cm.viridis(torch.linspace(0, 1, n).numpy())
    fig, axes = plt.subplots(1, n_inst, figsize=(2.2 * n_inst, 2.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for j in range(n):
            x, y = W[i, :, j].tolist()
            ax.plot([0, x], [0, y], color=colors[j])
            ax.scatter([x], [y], color=colors[j], s=12)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[i], fontsize=8)
    fig.suptitle("feature directions (darker = more important)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dimensionality(W: torch.Tensor, density: torch.Tensor, path: str | Path) -> None:
    """Feature dimensionality of every represented feature vs the instance's dims per feature."""
    D, norms = dimensionality(W), feature_norms(W)
    dpf = dims_per_feature(W)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for frac, label in (
        (1, "1"),
        (3 / 4, "3/4"),
        (2 / 3, "2/3"),
        (1 / 2, "1/2"),
        (2 / 5, "2/5"),
        (3 / 8, "3/8"),
    ):
        ax.axhline(frac, color="0.85", lw=0.8, zorder=0)
        ax.text(1.01, frac, label, transform=ax.get_yaxis_transform(), fontsize=8, va="center")
    ax.plot(dpf.numpy(), dpf.numpy(), color="0.5", lw=1, label="dims per feature")
    for i in range(W.shape[0]):
        keep = norms[i] > 0.5
        x = dpf[i].expand(int(keep.sum()))
        jitter = (torch.rand(x.shape) - 0.5) * 0.01
        ax.scatter(
            (x + jitter).numpy(),
            D[i, keep].numpy(),
            s=6,
            alpha=0.5,
            color=plt.cm.plasma(float(i) / max(1, W.shape[0] - 1)),
        )
    ax.set_xlabel("dimensions per feature  m / ||W||_F^2  (lower = sparser features)")
    ax.set_ylabel("feature dimensionality D_i")
    ax.set_title(
        f"feature dimensionality, n={W.shape[-1]}, m={W.shape[1]}, "
        f"density {float(density.max()):.3g} .. {float(density.min()):.3g}"
    )
    ax.set_ylim(0, 1.1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_phase(
    phase: torch.Tensor, importance: torch.Tensor, density: torch.Tensor, path: str | Path
) -> None:
    """The n=2, m=1 phase diagram: phase [R, S] over relative importance (rows) x density (cols)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = matplotlib.colors.ListedColormap(["#4575b4", "#fdae61", "#d73027"])
    ax.imshow(
        phase.T.numpy(),
        cmap=cmap,
        vmin=-0.5,
        vmax=2.5,
        origin="lower",
        aspect="auto",
        extent=(-0.5, len(importance) - 0.5, -0.5, len(density) - 0.5),
    )
    ax.set_xticks(range(len(importance)), [f"{v:.2g}" for v in importance.tolist()], fontsize=7)
    ax.set_yticks(range(len(density)), [f"{1 - v:.3g}" for v in density.tolist()], fontsize=7)
    ax.set_xlabel("relative importance of feature 2")
    ax.set_ylabel("sparsity of both features (1 - density)")
    handles = [matplotlib.patches.Patch(color=cmap(k), label=PHASES[k]) for k in range(3)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("n=2, m=1: what happens to feature 2")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
