"""Inference-time intervention on SmolLM2: probe every head for truth, steer the top K, measure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.steer import iti

SUMMARY = "ITI: per-head truth probes on SmolLM2, top-K heads steered, true-vs-false margin and perplexity"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa",
    "England": "London", "Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Turkey": "Ankara", "India": "Delhi", "Thailand": "Bangkok", "Kenya": "Nairobi", "Peru": "Lima",
    "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Cuba": "Havana", "Iran": "Tehran",
    "Iraq": "Baghdad", "Chile": "Santiago", "Australia": "Canberra", "Vietnam": "Hanoi",
    "Colombia": "Bogota", "Ukraine": "Kyiv", "Czechia": "Prague", "Switzerland": "Bern",
    "South Korea": "Seoul",
}  # fmt: skip


def template_statements(seed: int = 0, n_math: int = 40) -> list[tuple[str, str]]:
    """(true, false) statement pairs generated from templates: capitals and small sums."""
    rng = random.Random(seed)
    caps = list(CAPITALS.values())
    pairs = []
    for country, cap in CAPITALS.items():
        wrong = rng.choice([c for c in caps if c != cap])
        pairs.append(
            (f"The capital of {country} is {cap}.", f"The capital of {country} is {wrong}.")
        )
    for _ in range(n_math):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = a + b + rng.choice([-2, -1, 1, 2])
        pairs.append((f"{a} plus {b} equals {a + b}.", f"{a} plus {b} equals {wrong}."))
    rng.shuffle(pairs)
    return pairs


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    statements: str = ""  # a .jsonl/.csv of (text, label); empty = the template set above
    heldout_frac: float = 0.3
    k: int = 16
    alphas: list[float] = field(default_factory=lambda: [0.0, 2.5, 5.0, 7.5, 10.0, 15.0])
    ppl_tokens: int = 256
    seed: int = 0
    threads: int = 1


def _pairs_from_file(path: str) -> list[tuple[str, str]]:
    rows = iti.load_statements(path)
    trues, falses = [t for t, y in rows if y], [t for t, y in rows if not y]
    return list(zip(trues, falses, strict=False))


def run(cfg: Config, out: RunDir) -> dict:
    """Probe heads on train pairs; steer top-K on held-out pairs over an alpha sweep."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    pairs = _pairs_from_file(cfg.statements) if cfg.statements else template_statements(cfg.seed)
    n_test = round(len(pairs) * cfg.heldout_frac)
    train, test = pairs[n_test:], pairs[:n_test]
    ids = [tok.encode(t) for p in train for t in p]
    labels = torch.tensor([1, 0] * len(train))
    acts = iti.head_activations(model, ids)
    accs = iti.probe_accuracies(acts, labels, seed=cfg.seed)
    heads = iti.top_heads(accs, cfg.k)
    dirs = iti.truth_directions(acts, labels, heads)

    true_ids = [tok.encode(t) for t, _ in test]
    false_ids = [tok.encode(f) for _, f in test]
    text = (data_dir() / "tinyshakespeare.txt").read_text()[:20000]
    ppl_tokens = torch.tensor(tok.encode(text)[: cfg.ppl_tokens])
    sweep = []
    for a in cfg.alphas:
        with dirs.vector(model, a).apply(model):
            margin = iti.sequence_logprob(model, true_ids) - iti.sequence_logprob(model, false_ids)
            ppl = iti.perplexity(model, ppl_tokens)
        sweep.append({"alpha": a, "margin": round(float(margin.mean()), 4),
                      "prefers_true": round(float((margin > 0).float().mean()), 4), "ppl": round(ppl, 3)})  # fmt: skip

    fig, ax = plt.subplots(figsize=(6, 6))
    im = ax.imshow(accs.numpy(), aspect="auto", cmap="viridis", vmin=0.5, vmax=1.0)
    for layer, head in heads:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"held-out probe accuracy per head (top {cfg.k} boxed)")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out.file("probe_accuracy.png"), dpi=120)
    plt.close(fig)
    fig, ax1 = plt.subplots(figsize=(6, 4))
    al = [s["alpha"] for s in sweep]
    ax1.plot(al, [s["margin"] for s in sweep], "o-", label="true - false log-lik margin")
    ax1.set_xlabel("alpha")
    ax1.set_ylabel("mean margin (nats)")
    ax2 = ax1.twinx()
    ax2.plot(al, [s["ppl"] for s in sweep], "s--", color="tab:red", label="perplexity")
    ax2.set_ylabel("tinyshakespeare perplexity", color="tab:red")
    ax1.set_title(f"ITI on {len(test)} held-out pairs, top {cfg.k} heads")
    fig.tight_layout()
    fig.savefig(out.file("iti_sweep.png"), dpi=120)
    plt.close(fig)

    best = float(accs.max())
    base = next((s for s in sweep if s["alpha"] == 0), None)
    top = max(sweep, key=lambda s: s["margin"])
    metrics = {"n_train_pairs": len(train), "n_test_pairs": len(test), "best_head_acc": best,
               "top_heads": [[layer, head, round(float(accs[layer, head]), 3)] for layer, head in heads],
               "sweep": sweep, "best_alpha": top["alpha"]}  # fmt: skip
    verdict = ""
    if base is not None and top is not base:
        metrics["margin_gain"] = round(top["margin"] - base["margin"], 4)
        verdict = (
            f"Best alpha {top['alpha']}: margin {base['margin']:.3f} -> {top['margin']:.3f} nats "
            f"({top['margin'] - base['margin']:+.3f}), at a perplexity cost of "
            f"{base['ppl']:.2f} -> {top['ppl']:.2f} ({top['ppl'] / base['ppl'] - 1:+.1%}). Larger "
            "alphas push the activations off-distribution and the margin falls again."
        )
    elif base is not None:
        verdict = "No alpha in the sweep raised the margin over the unsteered model."
    src = cfg.statements or "template-generated (40 capitals + 40 sums, one false twin each)"
    lines = [
        f"# Inference-time intervention on {cfg.model}",
        "",
        f"Statements: {src}; {len(train)} train pairs (probes: logistic per head on z at the last "
        f"token, 30% of them held out for probe accuracy), {len(test)} held-out pairs for the margin.",
        f"Best head held-out probe accuracy: {best:.3f}; top {cfg.k}: "
        + ", ".join(f"L{layer}H{head} {float(accs[layer, head]):.2f}" for layer, head in heads),
        "",
        "Intervention: alpha * sigma * theta added to each selected head's z at every position "
        "(theta = unit mass-mean true - false direction).",
        "",
        "| alpha | mean log-lik margin true - false | share preferring true | perplexity |",
        "|---|---|---|---|",
        *[
            f"| {s['alpha']} | {s['margin']:.3f} | {s['prefers_true']:.2f} | {s['ppl']:.2f} |"
            for s in sweep
        ],
        "",
        verdict,
        "",
        "![](probe_accuracy.png)",
        "",
        "![](iti_sweep.png)",
    ]
    out.write_report("\n".join(lines) + "\n")
    return metrics
