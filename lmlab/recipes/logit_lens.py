"""The logit lens on SmolLM2-135M: what each layer's residual stream would predict for one prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.interp import lens, viz
from lmlab.interp.models import load_model
from lmlab.runs import RunDir
from lmlab.train.logging import log_run

SUMMARY = "logit lens: each SmolLM2 layer's top next-token guesses for a prompt, table and plot"


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    prompt: str = "The Eiffel Tower is located in the city of"
    k: int = 5
    threads: int = 1


def run(cfg: Config, out: RunDir) -> dict:
    """Decode the residual stream entering every block (and the final one) at the last position."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    tokens = torch.tensor([tok.encode(cfg.prompt)])
    table = lens.lens_table(model, tokens, k=cfg.k)

    def decode(i: int) -> str:
        return tok.decode([i])

    viz.plot_lens_table(table, decode, out.file("logit_lens.png"), f"logit lens: {cfg.prompt!r}")
    first = next((i for i, r in enumerate(table.target_ranks.tolist()) if r == 0), None)
    metrics = {
        "target": decode(table.target_id),
        "first_layer_with_target_on_top": table.layers[first] if first is not None else None,
        "target_prob_by_layer": [round(float(p), 4) for p in table.target_probs],
    }
    report = [
        f"# Logit lens on {cfg.model}",
        "",
        f"Prompt: `{cfg.prompt}`; target (the model's own prediction): "
        f"{metrics['target']!r}, first on top at {metrics['first_layer_with_target_on_top']}.",
        "",
        lens.describe(table, decode),
        "",
        "![](logit_lens.png)",
    ]
    out.write_report("\n".join(report) + "\n")
    log_run(out.path, metrics)
    return metrics
