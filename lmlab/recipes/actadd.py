"""ActAdd on SmolLM2: add the "Love" - "Hate" activation difference and count positive continuations."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.generate import generate
from lmlab.interp.models import load_model
from lmlab.runs import RunDir
from lmlab.steer import SteeringVector, actadd
from lmlab.steer.metrics import MiniLMJudge, lexicon_positive

SUMMARY = (
    "ActAdd: steer SmolLM2 toward positive text with a Love - Hate pair; coefficient/layer sweep"
)

PROMPTS = [
    "I went to the store and",
    "Yesterday my friend",
    "The weather today",
    "When I woke up this morning,",
    "My neighbour's dog",
    "The new movie",
    "At work today,",
    "The train was",
    "Our family dinner",
    "This weekend I",
]


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    pos: str = "Love"
    neg: str = "Hate"
    layers: list[int] = field(default_factory=lambda: [3, 6, 10])
    coeffs: list[float] = field(default_factory=lambda: [4.0, 8.0])
    modes: list[str] = field(default_factory=lambda: ["front", "all"])
    samples_per_prompt: int = 5
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    threads: int = 1


def _vector(model, tok, cfg: Config, layer: int, coeff: float, mode: str) -> SteeringVector:
    """front: Turner's per-position rows on the first tokens; all: the last row at every position."""
    sv = actadd(model, cfg.pos, cfg.neg, layer, coeff, tokenizer=tok)
    if mode == "front":
        return sv
    ((name, rows),) = sv.vectors.items()
    return SteeringVector({name: rows[-1]}, meta={"method": "actadd-all-positions", "coeff": coeff})


def run(cfg: Config, out: RunDir) -> dict:
    """Generate 50 samples unsteered and under each (mode, layer, coeff); judge their sentiment."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    judge = MiniLMJudge()

    def sample() -> dict:
        o = generate(model, PROMPTS, tokenizer=tok, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                     num_return_sequences=cfg.samples_per_prompt)  # fmt: skip
        texts = o.texts
        return {"minilm": sum(judge.positive(texts)) / len(texts),
                "lexicon": sum(lexicon_positive(texts)) / len(texts), "examples": texts[:: cfg.samples_per_prompt]}  # fmt: skip

    base = sample()
    rows = []
    for mode in cfg.modes:
        for layer in cfg.layers:
            for c in cfg.coeffs:
                with _vector(model, tok, cfg, layer, c, mode).apply(model):
                    r = sample()
                rows.append({"mode": mode, "layer": layer, "coeff": c, **r})
                print(
                    f"{mode} layer {layer} coeff {c}: minilm {r['minilm']:.2f} lexicon {r['lexicon']:.2f}"
                )
    best = max(rows, key=lambda r: min(r["minilm"], r["lexicon"]))  # both judges agree

    fig, axes = plt.subplots(1, len(cfg.modes), figsize=(5 * len(cfg.modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], cfg.modes, strict=True):
        for layer in cfg.layers:
            sel = [r for r in rows if r["mode"] == mode and r["layer"] == layer]
            ax.plot(
                [0] + [r["coeff"] for r in sel],
                [base["minilm"]] + [r["minilm"] for r in sel],
                "o-",
                label=f"layer {layer} (MiniLM)",
            )
            ax.plot(
                [0] + [r["coeff"] for r in sel],
                [base["lexicon"]] + [r["lexicon"] for r in sel],
                "x:",
                label=f"layer {layer} (lexicon)",
            )
        ax.set_xlabel("coefficient")
        ax.set_ylabel("share of positive continuations")
        ax.set_title(f"{cfg.pos} - {cfg.neg}, positions: {mode}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.file("actadd_sweep.png"), dpi=120)
    plt.close(fig)

    n = len(PROMPTS) * cfg.samples_per_prompt
    shift = best["minilm"] - base["minilm"]
    metrics = {"n_samples": n, "baseline": {k: base[k] for k in ("minilm", "lexicon")},
               "best": {k: best[k] for k in ("mode", "layer", "coeff", "minilm", "lexicon")},
               "shift_points_minilm": round(100 * shift, 1),
               "shift_points_lexicon": round(100 * (best["lexicon"] - base["lexicon"]), 1),
               "sweep": [{k: r[k] for k in ("mode", "layer", "coeff", "minilm", "lexicon")} for r in rows]}  # fmt: skip
    lines = [
        f"# ActAdd on {cfg.model}: {cfg.pos!r} - {cfg.neg!r}",
        "",
        f"{n} samples ({len(PROMPTS)} neutral prompts x {cfg.samples_per_prompt}, "
        f"{cfg.max_new_tokens} new tokens, temperature {cfg.temperature}, top-p {cfg.top_p}, seed "
        f"{cfg.seed}). Judges: MiniLM-L6 zero-shot (nearer 4 positive or 4 negative anchor "
        "sentences) and a small hand-written word lexicon (positive words > negative words).",
        "Modes: `front` is the paper's ActAdd (the pair's per-position difference added to the first "
        "tokens of the prompt); `all` adds the difference at the pair's last token to every "
        "position, generated tokens included.",
        "",
        f"Unsteered: MiniLM {base['minilm']:.2f}, lexicon {base['lexicon']:.2f} positive.",
        f"Best: mode {best['mode']}, layer {best['layer']}, coefficient {best['coeff']}: MiniLM "
        f"{best['minilm']:.2f} ({100 * shift:+.0f} points), lexicon {best['lexicon']:.2f} "
        f"({100 * (best['lexicon'] - base['lexicon']):+.0f} points).",
        "",
        "| mode | layer | coeff | MiniLM positive | lexicon positive |",
        "|---|---|---|---|---|",
        *[
            f"| {r['mode']} | {r['layer']} | {r['coeff']} | {r['minilm']:.2f} | {r['lexicon']:.2f} |"
            for r in rows
        ],
        "",
        "![](actadd_sweep.png)",
        "",
        "Examples (first sample per prompt), unsteered vs best:",
        "",
        *[
            f"- {p!r}: {a!r} -> {b!r}"
            for p, a, b in zip(PROMPTS, base["examples"], best["examples"], strict=True)
        ],
    ]
    out.write_report("\n".join(lines) + "\n")
    return metrics
