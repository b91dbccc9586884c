"""Induction heads form in a 2-layer attention-only model: a phase change in the repeated-half loss.

Olsson et al. (2022): trained on BOS + random tokens + the same tokens again, the model first
learns only unigram statistics, then abruptly forms a previous-token head in layer 0 and an
induction head in layer 1 that reads it by K-composition, and the loss on the repeated half
collapses. The repeat length varies per batch, so attending to a fixed offset cannot solve it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from lmlab.config import Config as ModelConfig
from lmlab.data.tasks.induction import induction_batch
from lmlab.data.tokens import IGNORE_INDEX
from lmlab.interp import ablation, circuits, heads, viz
from lmlab.interp.activation_cache import run_with_cache
from lmlab.interp.circuit_plots import plot_curves, plot_matrix
from lmlab.interp.toy_train import lm_loss
from lmlab.model import Transformer
from lmlab.recipes._toy import fit, toy_train_config
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = "2-layer attention-only model on repeated random tokens: induction-head phase change"


def default_train() -> TrainConfig:
    """AdamW at a constant 1e-3, no weight decay, 2,000 steps of 32 sequences, evaluated every 50."""
    return toy_train_config(
        max_steps=2000, batch_size=32, lr=1e-3, warmup_steps=0, schedule="constant",
        weight_decay=0.0, eval_interval=50, seed=1,
    )  # fmt: skip


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)  # seed: the training batches'
    vocab_size: int = 64
    d_model: int = 64
    n_heads: int = 4
    min_repeat: int = 8  # repeat length (tokens per copy) drawn per batch from [min, max]
    max_repeat: int = 32
    eval_repeat: int = 24  # held-out batch: BOS + 24 random tokens, repeated
    eval_batch: int = 64
    phase_window: int = 4  # evaluations in the window searched for the steepest loss drop
    init_seed: int = 0  # the model's initialization


def build_model(cfg: Config) -> Transformer:
    """Attention-only, 2 layers, RoPE (relative positions make a previous-token head easy)."""
    torch.manual_seed(cfg.init_seed)
    return Transformer(
        ModelConfig(
            name="induction-attn-only",
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            n_layers=2,
            n_heads=cfg.n_heads,
            max_seq_len=2 * cfg.max_repeat + 1,
            positions="rope",
            attn_only=True,
            tie_embeddings=False,
            bos_token_id=0,
        )
    )


def _check(cfg: Config) -> None:
    if not 2 <= cfg.min_repeat <= cfg.max_repeat:
        raise ValueError(
            f"min_repeat={cfg.min_repeat}, max_repeat={cfg.max_repeat}: need 2 <= min_repeat <= "
            "max_repeat"
        )
    if not 2 <= cfg.eval_repeat <= cfg.max_repeat:
        raise ValueError(
            f"eval_repeat={cfg.eval_repeat} must be in [2, max_repeat={cfg.max_repeat}] (the model "
            "holds 2 * max_repeat + 1 positions)"
        )


def _batch_fn(cfg: Config):
    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(torch.randint(cfg.min_repeat, cfg.max_repeat + 1, (1,), generator=g))
        toks = induction_batch(cfg.train.batch_size, n, cfg.vocab_size, g, bos=0)
        x, y = toks[:, :-1], toks[:, 1:].clone()
        y[:, : n + 1] = (
            IGNORE_INDEX  # loss on the repeated half after its (unpredictable) first token
        )
        return x, y

    return batch


def steepest_drop(steps: list[int], loss: list[float], window: int) -> dict[str, float]:
    """The `window`-evaluation stretch with the largest loss drop, and its share of the total drop."""
    if len(loss) <= window:
        raise ValueError(
            f"{len(loss)} evaluations cannot hold a window of {window}; evaluate more often"
        )
    drops = [loss[i] - loss[i + window] for i in range(len(loss) - window)]
    i = max(range(len(drops)), key=drops.__getitem__)
    total = max(loss) - loss[-1]
    return {
        "start": steps[i],
        "end": steps[i + window],
        "loss_before": loss[i],
        "loss_after": loss[i + window],
        "share_of_total_drop": drops[i] / total if total > 0 else 0.0,
        "share_of_training": (steps[i + window] - steps[i]) / steps[-1],
    }


def run(cfg: Config, out: RunDir) -> dict:
    """Train, tracking held-out losses and head scores; then read the circuit and write the report."""
    _check(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    model = build_model(cfg)
    n = cfg.eval_repeat
    ev = induction_batch(
        cfg.eval_batch, n, cfg.vocab_size, torch.Generator().manual_seed(10**6), bos=0
    )
    ex = ev[:, :-1]

    def split_losses(logits: torch.Tensor) -> tuple[float, float]:
        first = lm_loss(logits[:, 1:n], ev[:, 2 : n + 1])  # unpredictable half (BOS target skipped)
        rep = lm_loss(logits[:, n + 1 :], ev[:, n + 2 :])
        return float(first), float(rep)

    def evaluate(step: int) -> dict:
        with torch.no_grad():
            first, rep = split_losses(model(ex))
        s = heads.all_head_scores(model, n=n, tokens=ev, kinds=("induction", "previous_token"))
        return {
            "loss_first_half": first,
            "loss_repeated_half": rep,
            "induction": s["induction"].tolist(),
            "previous_token": s["previous_token"].tolist(),
        }

    hist = fit(model, _batch_fn(cfg), cfg.train, evaluate, "induction-formation")
    train_s = time.perf_counter() - t0
    steps = [h["step"] for h in hist]
    rep = [h["loss_repeated_half"] for h in hist]
    ind = torch.tensor([h["induction"] for h in hist])  # [evals, L, H]
    prev = torch.tensor([h["previous_token"] for h in hist])
    phase = steepest_drop(steps, rep, cfg.phase_window)

    final = heads.all_head_scores(model, n=n, tokens=ev)
    best = heads.top_heads(final["induction"], 1)[0]
    best_prev = heads.top_heads(final["previous_token"][:1], 1)[0]  # layer 0 only
    i0 = steps.index(phase["start"])
    i1 = steps.index(phase["end"])

    # K-composition: does the induction head's key read the previous-token head's output?
    kcomp = circuits.composition_scores(model, "k")[1, :, 0, :]  # [H later, H earlier]
    qcomp = circuits.composition_scores(model, "q")[1, :, 0, :]
    vcomp = circuits.composition_scores(model, "v")[1, :, 0, :]
    base = {k: circuits.composition_baseline(model, k) for k in ("q", "k", "v")}

    # ablate the layer-0 previous-token head: the repeated-half loss should climb back up
    prev_heads = [f"L0H{h}" for h in range(cfg.n_heads) if final["previous_token"][0, h] >= 0.3]
    prev_heads = prev_heads or [f"L0H{best_prev.head}"]
    means = ablation.mean_activations(model, ex, prev_heads)
    _, rep_ablated = split_losses(ablation.run_ablated(model, ex, prev_heads, means=means))
    _, rep_final = split_losses(model(ex).detach())

    H = cfg.n_heads
    curves = {f"L1H{h} induction": ind[:, 1, h].tolist() for h in range(H)}
    plot_curves(
        steps,
        {"loss, repeated half (held out)": rep},
        out.file("phase_change.png"),
        right={"best induction score": ind.flatten(1).max(1).values.tolist()},
        right_label="induction score",
        title="induction heads form: held-out loss and induction score",
        span=(phase["start"], phase["end"]),
    )
    plot_curves(
        steps,
        {"loss, repeated half": rep},
        out.file("head_scores_over_training.png"),
        right={
            **curves,
            **{f"L0H{h} previous-token": prev[:, 0, h].tolist() for h in range(H)},
        },
        right_label="score",
        title="per-head induction (L1) and previous-token (L0) scores",
        span=(phase["start"], phase["end"]),
    )
    for kind in ("induction", "previous_token"):
        viz.plot_head_scores(final[kind], out.file(f"{kind}_scores.png"), f"final {kind} score")
    plot_matrix(
        kcomp,
        out.file("k_composition.png"),
        title=f"K-composition L0 -> L1 (random baseline {base['k']:.2f})",
        xlabel="layer-0 head",
        ylabel="layer-1 head",
        centered=False,
    )
    with torch.no_grad():
        _, cache = run_with_cache(model, ev[:1], names_filter=lambda x: x.endswith("hook_pattern"))
    labels = ["BOS"] + [f"r{i}" for i in range(n)] * 2
    viz.plot_pattern(
        cache["pattern", best.layer][0, best.head],
        labels,
        out.file("best_head_pattern.png"),
        f"{best} induction",
    )
    viz.plot_pattern(
        cache["pattern", 0][0, best_prev.head],
        labels,
        out.file("previous_token_head_pattern.png"),
        f"{best_prev} previous-token",
    )

    kbest = kcomp[best.head]
    metrics = {
        "best_induction_head": str(best),
        "best_induction_score": best.score,
        "best_previous_token_head": str(best_prev),
        "final_loss_repeated_half": rep_final,
        "final_loss_first_half": hist[-1]["loss_first_half"],
        "uniform_loss": math.log(cfg.vocab_size),
        "phase": phase,
        "induction_score_before_phase": float(ind[i0].max()),
        "induction_score_after_phase": float(ind[i1].max()),
        "k_composition_best_head": kbest.tolist(),
        "composition_baseline": base,
        "ablated_previous_token_heads": prev_heads,
        "loss_repeated_half_ablated": rep_ablated,
        "train_seconds": train_s,
        "threads": cfg.train.threads,
    }
    metrics["total_seconds"] = time.perf_counter() - t0
    out.write_report(_report(cfg, metrics, final, kcomp, qcomp, vcomp))
    log_run(out.path, metrics, {"train": hist})
    return metrics


def _report(cfg: Config, m: dict, final: dict, kcomp, qcomp, vcomp) -> str:
    ph = m["phase"]
    H = cfg.n_heads
    lines = [
        "# Induction-head formation (2-layer attention-only)",
        "",
        f"Model: 2 attention-only layers, {H} heads, d_model={cfg.d_model}, RoPE, vocab "
        f"{cfg.vocab_size}. Data: BOS + n random tokens + the same n again, n drawn from "
        f"[{cfg.min_repeat}, {cfg.max_repeat}] per batch; loss only on the repeated half (after its first token). "
        f"{cfg.train.max_steps} AdamW steps, batch {cfg.train.batch_size}, lr {cfg.train.lr}. Held out: {cfg.eval_batch} "
        f"sequences with n={cfg.eval_repeat}.",
        "",
        "## Phase change",
        "",
        f"- Held-out loss on the repeated half: {ph['loss_before']:.3f} at step {ph['start']} -> "
        f"{ph['loss_after']:.3f} at step {ph['end']}; this stretch ({100 * ph['share_of_training']:.0f}% "
        f"of training) holds {100 * ph['share_of_total_drop']:.0f}% of the whole drop. "
        f"Final: {m['final_loss_repeated_half']:.3f} (uniform guessing: {m['uniform_loss']:.3f}).",
        f"- The first half is random and carries no loss in training; the model's held-out loss "
        f"there is {m['final_loss_first_half']:.2f} (it over-predicts tokens it has seen).",
        f"- Best induction score: {m['induction_score_before_phase']:.2f} before the drop, "
        f"{m['induction_score_after_phase']:.2f} after it, **{m['best_induction_score']:.3f}** at the "
        f"end ({m['best_induction_head']}). Best layer-0 previous-token head: "
        f"{m['best_previous_token_head']}.",
        "",
        "![](phase_change.png)",
        "![](head_scores_over_training.png)",
        "",
        "## Final head scores",
        "",
        "| head | induction | previous-token |",
        "|---|---|---|",
    ]
    for layer in range(2):
        for h in range(H):
            lines.append(
                f"| L{layer}H{h} | {float(final['induction'][layer, h]):.3f} | "
                f"{float(final['previous_token'][layer, h]):.3f} |"
            )
    b = m["composition_baseline"]
    lines += [
        "",
        "![](induction_scores.png) ![](previous_token_scores.png)",
        "![](best_head_pattern.png) ![](previous_token_head_pattern.png)",
        "",
        "## The circuit",
        "",
        "Composition scores of each layer-1 head (rows) with each layer-0 head (columns), "
        f"from the weights (random-matrix baselines: Q {b['q']:.2f}, K {b['k']:.2f}, V {b['v']:.2f}). "
        "An induction head's key reads the previous-token head: its K-composition with that head "
        "stands out.",
        "",
        "| L1 head | " + " | ".join(f"K with L0H{h}" for h in range(H)) + " | max Q | max V |",
        "|---|" + "---|" * (H + 2),
    ]
    for h2 in range(H):
        lines.append(
            f"| L1H{h2} | "
            + " | ".join(f"{float(kcomp[h2, h1]):.3f}" for h1 in range(H))
            + f" | {float(qcomp[h2].max()):.3f} | {float(vcomp[h2].max()):.3f} |"
        )
    lines += [
        "",
        "![](k_composition.png)",
        "",
        f"Mean-ablating the layer-0 previous-token head(s) {', '.join(m['ablated_previous_token_heads'])} "
        f"raises the repeated-half loss from {m['final_loss_repeated_half']:.3f} to "
        f"{m['loss_repeated_half_ablated']:.3f}.",
        "",
        f"Wall clock: {m['train_seconds']:.0f} s training, {m['total_seconds']:.0f} s in all, "
        f"{cfg.train.threads} torch thread(s).",
    ]
    return "\n".join(lines)
