"""PNG plots of interpretability results (matplotlib, Agg backend): patterns, lenses, patching, sinks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.interp.lens import LensTable


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _labels(tokens: Sequence[str]) -> list[str]:
    return [repr(t)[1:-1] if t.strip() != t or not t else t for t in tokens]


def plot_pattern(
    pattern: torch.Tensor, tokens: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """One head's pattern [T, T] as a heatmap, queries down, keys across, token labels on both."""
    T = pattern.shape[-1]
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * T + 2), max(3.5, 0.3 * T + 1.5)))
    im = ax.imshow(pattern.float().cpu(), cmap="Blues", vmin=0, vmax=1)
    labels = _labels(tokens)
    ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(T), labels, fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_head_grid(
    patterns: torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    scores: torch.Tensor | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Grid of patterns: [L, H, T, T] (every head, or the listed (layer, head) pairs), score in titles."""
    pairs = (
        list(heads)
        if heads is not None
        else [(i, h) for i in range(patterns.shape[0]) for h in range(patterns.shape[1])]
    )
    cols = min(len(pairs), patterns.shape[1] if heads is None else 6)
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, h) in zip(axes.flat, pairs, strict=False):
        ax.imshow(patterns[i, h].float().cpu(), cmap="Blues", vmin=0, vmax=1)
        label = f"L{i}H{h}" + (f" {float(scores[i, h]):.2f}" if scores is not None else "")
        ax.set_title(label, fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_head_scores(scores: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """[layers, heads] scores as a heatmap."""
    fig, ax = plt.subplots(
        figsize=(max(4, 0.5 * scores.shape[1] + 2), max(3, 0.25 * scores.shape[0] + 1))
    )
    im = ax.imshow(
        scores.float().cpu(),
        cmap="viridis",
        vmin=0,
        vmax=max(1.0, float(scores.max())),
        aspect="auto",
    )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_patching(
    result: torch.Tensor,
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "position",
    ylabel: str = "layer",
) -> Path:
    """Patching result [layers, positions or heads], diverging colours centred at 0."""
    r = result.float().cpu()
    lim = max(1.0, float(r.abs().max()))
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * r.shape[1] + 2), max(3, 0.22 * r.shape[0] + 1.5)))
    im = ax.imshow(r, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    if tokens is not None:
        ax.set_xticks(range(len(tokens)), _labels(tokens), rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_lens_table(table: LensTable, decode, path: str | Path, title: str = "") -> Path:
    """Logit-lens table: each layer's top token (text) over a colour showing p(target)."""
    L = len(table.layers)
    fig, ax = plt.subplots(figsize=(7, 0.28 * L + 1.2))
    probs = table.target_probs.float().cpu()[:, None]
    ax.imshow(probs, cmap="Greens", vmin=0, vmax=1, aspect="auto", extent=(0, 1, L - 0.5, -0.5))
    for i in range(L):
        top = decode(int(table.top_ids[i, 0]))
        ax.text(
            0.02,
            i,
            f"{top!r} ({float(table.top_probs[i, 0]):.2f})   p(target)={float(probs[i, 0]):.2f}",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(L), table.layers, fontsize=7)
    ax.set_xticks([])
    ax.set_title(title or f"logit lens, target {decode(table.target_id)!r}")
    return _save(fig, path)


def plot_sink_share(
    shares: dict[str, torch.Tensor],
    path: str | Path,
    title: str = "",
    ylabel: str = "attention share on first token",
) -> Path:
    """One line per model: a per-layer share [L]."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, s in shares.items():
        ax.plot(range(len(s)), s.float().cpu(), marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)
