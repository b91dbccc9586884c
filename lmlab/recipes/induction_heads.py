"""Induction heads in SmolLM2-135M: detector scores for every head, the top heads, plots and a viewer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.interp import heads, viz
from lmlab.interp.activation_cache import run_with_cache
from lmlab.interp.models import load_model
from lmlab.interp.viewer import write_viewer
from lmlab.runs import RunDir
from lmlab.train.logging import log_run

SUMMARY = "induction / previous-token / duplicate / sink head scores for every SmolLM2-135M head, plots, viewer"


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    n: int = 40  # random tokens per copy
    batch: int = 4
    top: int = 8
    seed: int = 0
    threads: int = 1


def run(cfg: Config, out: RunDir) -> dict:
    """Score every head on BOS + random tokens repeated twice; plot scores and the top heads."""
    torch.set_num_threads(cfg.threads)
    model, _ = load_model(cfg.model)
    tokens = heads.repeated_tokens(model, cfg.n, cfg.batch, seed=cfg.seed)
    scores = heads.all_head_scores(model, n=cfg.n, tokens=tokens)
    ind = scores["induction"]
    top = heads.top_heads(ind, cfg.top)
    for kind, s in scores.items():
        viz.plot_head_scores(
            s, out.file(f"{kind}_scores.png"), f"{kind} score per head ({cfg.model})"
        )
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, cache = run_with_cache(model, tokens[:1], names_filter=names)
    pats = torch.stack([cache[n][0] for n in names])  # [L, H, T, T]
    viz.plot_head_grid(
        pats,
        out.file("top_induction_heads.png"),
        scores=ind,
        heads=[(h.layer, h.head) for h in top],
        title="top induction heads on repeated random tokens",
    )
    best = top[0]
    labels = ["BOS"] + [f"r{i}" for i in range(cfg.n)] * 2
    viz.plot_pattern(
        pats[best.layer, best.head], labels, out.file("best_head_pattern.png"), f"{best} induction"
    )
    write_viewer(  # the layers of the top heads keep the page small (< 1 MB for SmolLM2)
        out.file("viewer.html"),
        labels,
        pats,
        f"{cfg.model} on repeated random tokens",
        layers=sorted({h.layer for h in top}),
    )
    metrics = {
        "top_induction": [{"layer": h.layer, "head": h.head, "score": h.score} for h in top],
        "n_induction_heads_above_0.4": int((ind >= 0.4).sum()),
        **{f"max_{k}": float(s.max()) for k, s in scores.items()},
    }
    lines = [
        f"# Induction heads in {cfg.model}",
        "",
        f"Tokens: BOS + {cfg.n} random ids repeated twice, batch {cfg.batch}. Induction score = mean attention from "
        "each second-copy token to the token after its first occurrence.",
        "",
        "| rank | head | induction | previous-token | duplicate | sink |",
        "|---|---|---|---|---|---|",
    ]
    for r, h in enumerate(top, 1):
        row = [
            f"{float(scores[k][h.layer, h.head]):.2f}"
            for k in ("induction", "previous_token", "duplicate_token", "sink")
        ]
        lines.append(f"| {r} | L{h.layer}H{h.head} | {' | '.join(row)} |")
    lines += [
        "",
        f"{metrics['n_induction_heads_above_0.4']} heads score >= 0.4.",
        "",
        "![](induction_scores.png)",
        "![](top_induction_heads.png)",
        "![](best_head_pattern.png)",
        "![](previous_token_scores.png)",
        "",
        "Open `viewer.html` to hover tokens (the layers of the top induction heads).",
    ]
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
