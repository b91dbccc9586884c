"""Subramani et al. 2022 on SmolLM2: optimize one z per sentence so the frozen model decodes it."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.interp.models import load_model
from lmlab.runs import RunDir
from lmlab.steer.metrics import corpus_bleu, sentence_bleu
from lmlab.steer.optimize import greedy_recover, optimize_vectors
from lmlab.train.logging import log_run

SUMMARY = (
    "steering-vector recovery: optimize z so SmolLM2 greedily decodes 20 target sentences exactly"
)

SENTENCES = [  # 5 to 15 words, varied domains
    "The weather is blue.",
    "My grandmother bakes bread every Sunday morning.",
    "Quantum computers use qubits instead of classical bits.",
    "The defendant pleaded not guilty to all charges.",
    "Add two cups of flour and stir gently.",
    "The striker scored twice in the second half.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Please restart your router and try again.",
    "The Roman Empire lasted for many centuries.",
    "Our quarterly revenue grew by twelve percent this year.",
    "A small red fox crossed the frozen river at dawn.",
    "The patient was prescribed antibiotics for ten days.",
    "Jazz musicians often improvise long solos.",
    "The spacecraft entered orbit around Mars last night.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She painted the old fence a bright yellow.",
    "The committee will vote on the proposal next week.",
    "Bitcoin prices fell sharply after the announcement.",
    "Children learn languages faster than most adults do.",
    "The library closes early on public holidays.",
]


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    layer: int = 6
    positions: str = "all"  # "all" tokens or "first" (position 0 only)
    steps: int = 150
    lr: float = 0.2
    max_norm: float | None = None
    # SmolLM2 turns its first token (and a newline after <|endoftext|>) into an attention sink with
    # ~9x the usual residual norm, which z cannot move: the prompt gets one ordinary token after it.
    prefix: str = "Text:"
    sentences: list[str] = field(default_factory=lambda: list(SENTENCES))
    threads: int = 1


def run(cfg: Config, out: RunDir) -> dict:
    """Optimize all z in one batch (recovered rows drop out), then check with cached greedy decoding."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    targets = [tok.encode(" " + s) for s in cfg.sentences]
    res = optimize_vectors(model, targets, layer=cfg.layer, prefix=tok.encode(cfg.prefix),
                           positions=cfg.positions, steps=cfg.steps, lr=cfg.lr, max_norm=cfg.max_norm)  # fmt: skip
    outs = greedy_recover(model, res, [len(t) for t in targets])
    texts = [tok.decode(o).strip() for o in outs]
    exact = [o == t for o, t in zip(outs, targets, strict=True)]
    bleu = corpus_bleu(texts, cfg.sentences)
    per_bleu = [sentence_bleu(h, r) for h, r in zip(texts, cfg.sentences, strict=True)]
    steps = [s for s in res.steps_to_recover if s is not None]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for curve in res.losses:
        a1.plot(range(1, len(curve) + 1), curve, alpha=0.6)
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("teacher-forced NLL per token")
    a1.set_title(f"z optimization, layer {cfg.layer}, positions {cfg.positions}")
    a2.hist([s if s is not None else cfg.steps + 1 for s in res.steps_to_recover], bins=20)
    a2.set_xlabel(f"steps to exact recovery ({cfg.steps + 1} = not recovered)")
    a2.set_ylabel("sentences")
    fig.tight_layout()
    fig.savefig(out.file("recovery.png"), dpi=120)
    plt.close(fig)

    n = len(targets)
    metrics = {"n": n, "exact": sum(exact), "exact_share": sum(exact) / n, "corpus_bleu": round(bleu, 2),
               "mean_sentence_bleu": round(sum(per_bleu) / n, 2),
               "steps_to_recover": res.steps_to_recover,
               "median_steps": sorted(steps)[len(steps) // 2] if steps else None,
               "z_norms": [round(float(v), 1) for v in res.z.norm(dim=-1)]}  # fmt: skip
    lines = [
        f"# Steering-vector recovery on {cfg.model}",
        "",
        f"One z per sentence added to `blocks.{cfg.layer}.hook_resid_pre` at {cfg.positions} positions; "
        f"the model reads only {cfg.prefix!r} (SmolLM2's first token is an attention sink whose "
        "residual norm, ~900 vs ~100, z cannot move, so one ordinary token follows it). Adam, "
        f"lr {cfg.lr}, at most {cfg.steps} steps, a sentence stops once its teacher-forced argmax "
        "matches; recovery is then checked by cached greedy decoding with z live at every step.",
        "",
        f"Exact greedy recovery: {sum(exact)}/{n} ({100 * sum(exact) / n:.0f}%); corpus BLEU "
        f"{bleu:.1f}; mean sentence BLEU {metrics['mean_sentence_bleu']:.1f}; median steps "
        f"{metrics['median_steps']}.",
        "",
        "| target | decoded | exact | steps | BLEU | norm(z) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {s} | {t} | {e} | {st} | {b:.0f} | {zn} |"
            for s, t, e, st, b, zn in zip(
                cfg.sentences,
                texts,
                exact,
                res.steps_to_recover,
                per_bleu,
                metrics["z_norms"],
                strict=True,
            )
        ],
        "",
        "![](recovery.png)",
    ]
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
