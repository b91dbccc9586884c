"""Inference-time intervention on SmolLM2: probe every head for truth, steer the top K, measure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.steer import iti
from lmlab.train.logging import log_run

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
    test_frac: float = 0.3  # pairs held out for the reported margin
    val_frac: float = 0.2  # pairs on which alpha is chosen (disjoint from test and train)
    n_math: int = 40  # template set: sums next to the 40 capitals
    k: int = 16
    alphas: list[float] = field(default_factory=lambda: [0.0, 2.5, 5.0, 7.5, 10.0, 15.0])
    ppl_tokens: int = 256
    seed: int = 0
    threads: int = 1


def _pairs_from_file(path: str) -> list[tuple[str, str]]:
    rows = iti.load_statements(path)
    trues, falses = [t for t, y in rows if y], [t for t, y in rows if not y]
    return list(zip(trues, falses, strict=False))


Pairs = list[tuple[str, str]]


def split_pairs(pairs: Pairs, val_frac: float, test_frac: float) -> tuple[Pairs, Pairs, Pairs]:
    """(train, val, test): test is the first `test_frac`, val the next `val_frac`, train the rest."""
    n_test, n_val = round(len(pairs) * test_frac), round(len(pairs) * val_frac)
    if n_test < 1 or n_val < 1 or len(pairs) - n_test - n_val < 2:
        raise ValueError(
            f"{len(pairs)} pairs cannot give train (>= 2), val and test pairs with "
            f"val_frac={val_frac}, test_frac={test_frac}"
        )
    return pairs[n_test + n_val :], pairs[n_test : n_test + n_val], pairs[:n_test]


def pair_margins(model, tok, pairs: Pairs) -> torch.Tensor:
    """Per pair: log p(true statement) - log p(false statement) under the (steered) model."""
    true_ids = [tok.encode(t) for t, _ in pairs]
    false_ids = [tok.encode(f) for _, f in pairs]
    return iti.sequence_logprob(model, true_ids) - iti.sequence_logprob(model, false_ids)


def choose_alpha(val_sweep: list[dict]) -> dict:
    """The sweep row with the largest mean validation margin (ties: the smaller alpha)."""
    return max(val_sweep, key=lambda s: (s["margin"], -s["alpha"]))


def run(cfg: Config, out: RunDir) -> dict:
    """Probe heads on train pairs, choose alpha on val pairs, report the margin on test pairs."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    pairs = (
        _pairs_from_file(cfg.statements)
        if cfg.statements
        else template_statements(cfg.seed, cfg.n_math)
    )
    train, val, test = split_pairs(pairs, cfg.val_frac, cfg.test_frac)
    ids = [tok.encode(t) for p in train for t in p]
    labels = torch.tensor([1, 0] * len(train))
    acts = iti.head_activations(model, ids)
    accs = iti.probe_accuracies(acts, labels, seed=cfg.seed)
    heads = iti.top_heads(accs, cfg.k)
    dirs = iti.truth_directions(acts, labels, heads)

    text = (data_dir() / "tinyshakespeare.txt").read_text()[:20000]
    ppl_tokens = torch.tensor(tok.encode(text)[: cfg.ppl_tokens])
    alphas = sorted(set([0.0, *cfg.alphas]))
    sweep = []  # validation only: the test pairs are not looked at while choosing
    for a in alphas:
        with dirs.vector(model, a).apply(model):
            margin = pair_margins(model, tok, val)
            ppl = iti.perplexity(model, ppl_tokens)
        sweep.append({"alpha": a, "margin": round(float(margin.mean()), 4),
                      "prefers_true": round(float((margin > 0).float().mean()), 4), "ppl": round(ppl, 3)})  # fmt: skip
    chosen = choose_alpha(sweep)
    base_ppl = next(s["ppl"] for s in sweep if s["alpha"] == 0)

    base_m = pair_margins(model, tok, test)
    with dirs.vector(model, chosen["alpha"]).apply(model):
        steered_m = pair_margins(model, tok, test)
    diff = (steered_m - base_m).numpy()
    gain = float(diff.mean())
    gain_ci = bootstrap_ci(diff, seed=cfg.seed)
    test_res = {
        "alpha": chosen["alpha"],
        "base_margin": round(float(base_m.mean()), 4),
        "steered_margin": round(float(steered_m.mean()), 4),
        "base_prefers_true": round(float((base_m > 0).float().mean()), 4),
        "steered_prefers_true": round(float((steered_m > 0).float().mean()), 4),
        "margin_gain": round(gain, 4),
        "margin_gain_ci95": [round(x, 4) for x in gain_ci],
    }

    fig, ax = plt.subplots(figsize=(6, 6))
    im = ax.imshow(accs.numpy(), aspect="auto", cmap="viridis", vmin=0.5, vmax=1.0)
    for layer, head in heads:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"probe accuracy per head on train-pair hold-out (top {cfg.k} boxed)")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out.file("probe_accuracy.png"), dpi=120)
    plt.close(fig)
    fig, ax1 = plt.subplots(figsize=(6, 4))
    al = [s["alpha"] for s in sweep]
    ax1.plot(al, [s["margin"] for s in sweep], "o-", label="true - false log-lik margin (val)")
    ax1.axvline(chosen["alpha"], color="gray", ls=":", label="chosen alpha")
    ax1.set_xlabel("alpha")
    ax1.set_ylabel("mean validation margin (nats)")
    ax1.legend(fontsize=7, loc="lower left")
    ax2 = ax1.twinx()
    ax2.plot(al, [s["ppl"] for s in sweep], "s--", color="tab:red", label="perplexity")
    ax2.set_ylabel("tinyshakespeare perplexity", color="tab:red")
    ax1.set_title(f"ITI alpha sweep on {len(val)} validation pairs, top {cfg.k} heads")
    fig.tight_layout()
    fig.savefig(out.file("iti_sweep.png"), dpi=120)
    plt.close(fig)

    best = float(accs.max())
    metrics = {"splits": {"train": len(train), "val": len(val), "test": len(test)},
               "n_train_pairs": len(train), "n_val_pairs": len(val), "n_test_pairs": len(test),
               "best_head_acc": best,
               "top_heads": [[layer, head, round(float(accs[layer, head]), 3)] for layer, head in heads],
               "val_sweep": sweep, "best_alpha": chosen["alpha"], "chosen_ppl": chosen["ppl"],
               "base_ppl": base_ppl, "test": test_res, "margin_gain": test_res["margin_gain"]}  # fmt: skip
    lo, hi = gain_ci
    if chosen["alpha"] == 0:
        verdict = (
            "No alpha in the sweep raised the validation margin; the test margin is unsteered."
        )
    else:
        verdict = (
            f"Chosen on validation: alpha {chosen['alpha']}. On the {len(test)} test pairs the "
            f"margin goes {test_res['base_margin']:.3f} -> {test_res['steered_margin']:.3f} nats "
            f"(gain {gain:+.3f}, bootstrap 95% interval [{lo:+.3f}, {hi:+.3f}] over test pairs), "
            f"share preferring the true statement {test_res['base_prefers_true']:.2f} -> "
            f"{test_res['steered_prefers_true']:.2f}; perplexity {base_ppl:.2f} -> "
            f"{chosen['ppl']:.2f} ({chosen['ppl'] / base_ppl - 1:+.1%})."
        )
    src = cfg.statements or (
        f"template-generated (40 capitals + {cfg.n_math} sums, one false twin each)"
    )
    lines = [
        f"# Inference-time intervention on {cfg.model}",
        "",
        f"Statements: {src}. Splits (disjoint pairs): **train {len(train)}** (probes and truth "
        "directions; the probes hold out 30% of these for per-head accuracy, which picks the heads), "
        f"**validation {len(val)}** (alpha is chosen here), **test {len(test)}** (reported; "
        "evaluated only unsteered and at the chosen alpha).",
        f"Best head probe accuracy: {best:.3f}; top {cfg.k}: "
        + ", ".join(f"L{layer}H{head} {float(accs[layer, head]):.2f}" for layer, head in heads),
        "",
        "Intervention: alpha * sigma * theta added to each selected head's z at every position "
        "(theta = unit mass-mean true - false direction).",
        "",
        "## Test split (reported)",
        "",
        "| | mean log-lik margin true - false | share preferring true |",
        "|---|---|---|",
        f"| unsteered | {test_res['base_margin']:.3f} | {test_res['base_prefers_true']:.2f} |",
        f"| alpha {chosen['alpha']} | {test_res['steered_margin']:.3f} | "
        f"{test_res['steered_prefers_true']:.2f} |",
        "",
        verdict,
        "",
        f"## Validation sweep ({len(val)} pairs; chooses alpha)",
        "",
        "| alpha | mean log-lik margin true - false | share preferring true | perplexity |",
        "|---|---|---|---|",
        *[
            f"| {s['alpha']} | {s['margin']:.3f} | {s['prefers_true']:.2f} | {s['ppl']:.2f} |"
            for s in sweep
        ],
        "",
        "![](probe_accuracy.png)",
        "",
        "![](iti_sweep.png)",
    ]
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
