"""ActAdd on SmolLM2: add the "Love" - "Hate" activation difference and count positive continuations."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.generate import generate
from lmlab.interp.models import load_model
from lmlab.runs import RunDir
from lmlab.steer import SteeringVector, actadd
from lmlab.steer.metrics import MiniLMJudge, lexicon_positive
from lmlab.train.logging import log_run

SUMMARY = (
    "ActAdd: steer SmolLM2 toward positive text with a Love - Hate pair; coefficient/layer sweep"
)

VAL_PROMPTS = [  # the (mode, layer, coefficient) sweep is judged on these
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
TEST_PROMPTS = [  # reported: only the unsteered model and the chosen setting see these
    "After lunch we",
    "The meeting on Monday",
    "My brother called and",
    "The old house on the corner",
    "On the way home I",
    "The restaurant downtown",
    "Last night the game",
    "My phone rang and",
    "The bus this morning",
    "Our teacher said",
]


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    pos: str = "Love"
    neg: str = "Hate"
    layers: list[int] = field(default_factory=lambda: [3, 6, 10])
    coeffs: list[float] = field(default_factory=lambda: [4.0, 8.0])
    modes: list[str] = field(default_factory=lambda: ["front", "all"])
    samples_per_prompt: int = 5  # validation samples per prompt and setting
    test_samples_per_prompt: int = 10  # test samples per prompt (unsteered and chosen setting)
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


def choose_setting(rows: list[dict]) -> dict:
    """The sweep row whose lower judge's positive share is highest (both judges must agree)."""
    return max(rows, key=lambda r: min(r["minilm"], r["lexicon"]))


def run(cfg: Config, out: RunDir) -> dict:
    """Sweep (mode, layer, coeff) on validation prompts; report the chosen one on test prompts."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    judge = MiniLMJudge()

    def sample(prompts: list[str], per_prompt: int) -> dict:
        o = generate(model, prompts, tokenizer=tok, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                     num_return_sequences=per_prompt)  # fmt: skip
        texts = o.texts
        mini = [int(x) for x in judge.positive(texts)]
        lex = [int(x) for x in lexicon_positive(texts)]
        return {"minilm": sum(mini) / len(texts), "lexicon": sum(lex) / len(texts),
                "minilm_each": mini, "lexicon_each": lex, "examples": texts[::per_prompt]}  # fmt: skip

    base = sample(VAL_PROMPTS, cfg.samples_per_prompt)
    rows = []
    for mode in cfg.modes:
        for layer in cfg.layers:
            for c in cfg.coeffs:
                with _vector(model, tok, cfg, layer, c, mode).apply(model):
                    r = sample(VAL_PROMPTS, cfg.samples_per_prompt)
                rows.append({"mode": mode, "layer": layer, "coeff": c, **r})
                print(
                    f"val: {mode} layer {layer} coeff {c}: minilm {r['minilm']:.2f} lexicon {r['lexicon']:.2f}"
                )
    best = choose_setting(rows)
    test_base = sample(TEST_PROMPTS, cfg.test_samples_per_prompt)
    with _vector(model, tok, cfg, best["layer"], best["coeff"], best["mode"]).apply(model):
        test_best = sample(TEST_PROMPTS, cfg.test_samples_per_prompt)
    test = {"setting": {k: best[k] for k in ("mode", "layer", "coeff")}}
    for judge_name in ("minilm", "lexicon"):
        diff = [a - b for a, b in zip(test_best[f"{judge_name}_each"], test_base[f"{judge_name}_each"], strict=True)]  # fmt: skip
        shift = sum(diff) / len(diff)
        test[judge_name] = {
            "unsteered": round(test_base[judge_name], 4),
            "steered": round(test_best[judge_name], 4),
            "shift_points": round(100 * shift, 1),
            "shift_points_ci95": [round(100 * x, 1) for x in bootstrap_ci(diff, seed=cfg.seed)],
        }

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
        ax.set_title(f"{cfg.pos} - {cfg.neg}, positions: {mode} (validation prompts)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.file("actadd_sweep.png"), dpi=120)
    plt.close(fig)

    n_val = len(VAL_PROMPTS) * cfg.samples_per_prompt
    n_test = len(TEST_PROMPTS) * cfg.test_samples_per_prompt
    tm, tl = test["minilm"], test["lexicon"]
    metrics = {"splits": {"val_prompts": len(VAL_PROMPTS), "val_samples_per_setting": n_val,
                          "test_prompts": len(TEST_PROMPTS), "test_samples": n_test},
               "val_baseline": {k: base[k] for k in ("minilm", "lexicon")},
               "best": {k: best[k] for k in ("mode", "layer", "coeff", "minilm", "lexicon")},
               "test": test,
               "shift_points_minilm": tm["shift_points"], "shift_points_lexicon": tl["shift_points"],
               "sweep": [{k: r[k] for k in ("mode", "layer", "coeff", "minilm", "lexicon")} for r in rows]}  # fmt: skip

    def ci(m: dict) -> str:
        lo, hi = m["shift_points_ci95"]
        return f"{m['shift_points']:+.0f} points [{lo:+.0f}, {hi:+.0f}]"

    lines = [
        f"# ActAdd on {cfg.model}: {cfg.pos!r} - {cfg.neg!r}",
        "",
        f"Splits (disjoint neutral prompts): **validation** {len(VAL_PROMPTS)} prompts x "
        f"{cfg.samples_per_prompt} samples = {n_val} per setting (the {len(rows)}-setting sweep "
        f"chooses mode, layer and coefficient here); **test** {len(TEST_PROMPTS)} prompts x "
        f"{cfg.test_samples_per_prompt} samples = {n_test} (reported; generated only unsteered and "
        "with the chosen setting). "
        f"{cfg.max_new_tokens} new tokens, temperature {cfg.temperature}, top-p {cfg.top_p}, seed "
        f"{cfg.seed}. Judges: MiniLM-L6 zero-shot (nearer 4 positive or 4 negative anchor "
        "sentences) and a small hand-written word lexicon (positive words > negative words).",
        "Modes: `front` is the paper's ActAdd (the pair's per-position difference added to the first "
        "tokens of the prompt); `all` adds the difference at the pair's last token to every "
        "position, generated tokens included.",
        "",
        f"Chosen on validation (highest share positive by the lower of the two judges): mode "
        f"{best['mode']}, layer {best['layer']}, coefficient {best['coeff']}.",
        "",
        f"## Test split ({n_test} samples; shift with bootstrap 95% interval over samples)",
        "",
        "| judge | unsteered | steered | shift |",
        "|---|---|---|---|",
        f"| MiniLM | {tm['unsteered']:.2f} | {tm['steered']:.2f} | {ci(tm)} |",
        f"| lexicon | {tl['unsteered']:.2f} | {tl['steered']:.2f} | {ci(tl)} |",
        "",
        f"## Validation sweep ({n_val} samples per row; unsteered: MiniLM {base['minilm']:.2f}, "
        f"lexicon {base['lexicon']:.2f})",
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
        "Test examples (first sample per prompt), unsteered vs chosen setting:",
        "",
        *[
            f"- {p!r}: {a!r} -> {b!r}"
            for p, a, b in zip(
                TEST_PROMPTS, test_base["examples"], test_best["examples"], strict=True
            )
        ],
    ]
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
