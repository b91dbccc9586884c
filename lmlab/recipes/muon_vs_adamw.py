"""Muon (Keller's and per-step Newton–Schulz coefficients) vs AdamW on character-level
TinyShakespeare: same model, data, steps; a small lr sweep each; compared at equal steps and at
equal training wall-clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.tokens import TokenData
from lmlab.optim import ADAMW_LR_RATIO
from lmlab.recipes import shakespeare_char
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = "Muon (Keller / per-step coefficients) vs AdamW on shakespeare-char: lr sweeps, val loss at equal steps and wall-clock"
OPTIMIZERS = ("adamw", "muon", "muon-per-step")


def default_train() -> TrainConfig:
    """The shared settings of every run in the sweep (the sweep sets optimizer, lr and min_lr)."""
    return TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=64, n_layers=2, n_heads=4),
        block_size=64,
        batch_size=16,
        max_steps=600,
        warmup_steps=50,
        weight_decay=0.0,
        eval_interval=100,
        eval_iters=10,
        threads=1,  # one thread: small matmuls, and no contention on a shared CPU
        tensorboard=False,
        progress=False,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)
    adamw_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    muon_lrs: tuple[float, ...] = (0.01, 0.03, 0.1)  # AdamW part of Muon runs: ADAMW_LR_RATIO * lr
    per_step_lrs: tuple[float, ...] = (0.01, 0.03, 0.1)  # Muon with per-step coefficients; () skips


def run(cfg: Config, out: RunDir) -> dict:
    tc = cfg.train
    folder, vocab = prepare_shakespeare_char()
    data = TokenData(folder, tc.block_size)
    runs: dict[tuple[str, float], dict] = {}
    t0 = time.perf_counter()
    sweeps = {"adamw": cfg.adamw_lrs, "muon": cfg.muon_lrs, "muon-per-step": cfg.per_step_lrs}
    for opt, lrs in sweeps.items():
        for lr in lrs:
            t = time.perf_counter()
            rcfg = replace(tc, optimizer=opt, lr=lr, min_lr=lr / 10)
            _, history = shakespeare_char.train(
                rcfg, str(out.path / f"{opt}_lr{lr:g}"), data, vocab.vocab_size
            )
            evals = [r for r in history if "val_loss" in r]
            runs[(opt, lr)] = {
                "history": history,
                "val_loss": evals[-1]["val_loss"],
                "seconds": time.perf_counter() - t,
                "train_seconds": _train_seconds(history, rcfg)[-1][0],
            }
            print(f"{opt} lr={lr:g}: final val loss {evals[-1]['val_loss']:.4f}")
    seconds = time.perf_counter() - t0
    best = {
        opt: min(
            ((lr, r) for (o, lr), r in runs.items() if o == opt), key=lambda t: t[1]["val_loss"]
        )
        for opt in OPTIMIZERS
        if sweeps[opt]
    }
    _plot(runs, best, out.file("loss_curves.png"))
    rows = "\n".join(
        f"| {opt} | {lr:g} | {r['val_loss']:.4f} | {r['train_seconds']:.0f} | {r['seconds']:.0f} "
        f"| {'best' if best[opt][0] == lr else ''} |"
        for (opt, lr), r in runs.items()
    )
    (lr_a, ra), (lr_m, rm) = best["adamw"], best["muon"]
    mc = tc.model_config(vocab.vocab_size)
    verdict = "lower" if rm["val_loss"] < ra["val_loss"] else "NOT lower"
    wall = _equal_wallclock({opt: (lr, r) for opt, (lr, r) in best.items()}, tc)
    per_step_text = _per_step_text(runs, best, wall, cfg) if "muon-per-step" in best else ""
    out.write_report(f"""# muon-vs-adamw

Same model ({mc.n_layers} layers, d_model {mc.d_model}, {tc.model} family), same data
(TinyShakespeare characters, block {tc.block_size}, batch {tc.batch_size}), same seed, {tc.max_steps}
steps, warmup {tc.warmup_steps} then {tc.schedule} to lr/10. AdamW: betas ({tc.beta1}, {tc.beta2}), weight decay
{tc.weight_decay}. Muon: Nesterov momentum 0.95, 5 bf16 Newton–Schulz steps with Keller's
coefficients (`muon`) or with per-step minimax coefficients (`muon-per-step`, same matmul count),
update scale sqrt(max(1, rows/cols)), on the blocks' matrices; embeddings, head, norms and biases
on AdamW at {ADAMW_LR_RATIO} x the Muon lr.

| optimizer | lr | final val loss | training seconds | seconds with evals | |
|---|---|---|---|---|---|
{rows}

**Best AdamW** (lr {lr_a:g}): {ra["val_loss"]:.4f}. **Best Muon** (lr {lr_m:g}): {rm["val_loss"]:.4f}.
Muon's final val loss is {verdict} than AdamW's (difference {ra["val_loss"] - rm["val_loss"]:+.4f}).

{per_step_text}
Total wall time {seconds:.0f} s on this machine.

![loss curves](loss_curves.png)
""")
    metrics = {
        "adamw_best_lr": lr_a,
        "adamw_best_val_loss": ra["val_loss"],
        "muon_best_lr": lr_m,
        "muon_best_val_loss": rm["val_loss"],
        "seconds": seconds,
        "sweep": {f"{o}_lr{lr:g}": r["val_loss"] for (o, lr), r in runs.items()},
        "train_seconds": {f"{o}_lr{lr:g}": r["train_seconds"] for (o, lr), r in runs.items()},
    }
    if "muon-per-step" in best:
        lr_p, rp = best["muon-per-step"]
        metrics |= {"muon_per_step_best_lr": lr_p, "muon_per_step_best_val_loss": rp["val_loss"]}
    metrics["equal_wallclock"] = wall
    log_run(out.path, metrics, {f"{o}_lr{lr:g}": r["history"] for (o, lr), r in runs.items()})
    return metrics


def _train_seconds(
    history: list[dict], tc: TrainConfig, uncontended: bool = False
) -> list[tuple[float, int]]:
    """(cumulative training seconds, step) at every logged step, from the logged throughput
    (evaluation time excluded), starting at (0, 0). `uncontended`: every step at the run's 10th
    percentile seconds per step instead, an estimate of its speed without other load on the CPU."""
    per_step = tc.batch_size * tc.grad_accum * tc.block_size
    spans, prev = [], 0  # (steps, seconds) per logged interval
    for r in history:
        if "tok_s" in r and r["tok_s"] > 0:
            spans.append((r["step"] - prev, (r["step"] - prev) * per_step / r["tok_s"]))
            prev = r["step"]
    if uncontended and spans:
        rate = float(np.percentile([sec / n for n, sec in spans], 10))
        spans = [(n, n * rate) for n, _ in spans]
    out, step, total = [(0.0, 0)], 0, 0.0
    for n, sec in spans:
        step, total = step + n, total + sec
        out.append((total, step))
    return out


def _val_at_seconds(
    history: list[dict], tc: TrainConfig, seconds: float, uncontended: bool
) -> tuple[float, int]:
    """Validation loss at `seconds` of training, linear between evaluations, and the step there."""
    clock = _train_seconds(history, tc, uncontended)
    step = float(np.interp(seconds, [c[0] for c in clock], [c[1] for c in clock]))
    evals = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    val = float(np.interp(step, [e[0] for e in evals], [e[1] for e in evals]))
    return val, round(step)


def _equal_wallclock(best: dict[str, tuple[float, dict]], tc: TrainConfig) -> dict:
    """Each optimizer's best run read off at the training time of the fastest of them, on the
    measured clock and on the uncontended estimate (see `_train_seconds`)."""
    out: dict = {}
    for clock in ("measured", "uncontended"):
        unc = clock == "uncontended"
        total = {o: _train_seconds(r["history"], tc, unc)[-1][0] for o, (_, r) in best.items()}
        budget = min(total.values())
        out[clock] = {"seconds": budget}
        for opt, (lr, r) in best.items():
            val, step = _val_at_seconds(r["history"], tc, budget, unc)
            out[clock][opt] = {"lr": lr, "val_loss": val, "step": step,
                               "seconds_per_step": total[opt] / tc.max_steps}  # fmt: skip
    return out


def _per_step_text(runs: dict, best: dict, wall: dict, cfg: Config) -> str:
    """The Keller vs per-step comparison: per lr and best at equal steps, best at equal time."""
    rm, (lr_p, rp) = best["muon"][1], best["muon-per-step"]
    shared = [lr for lr in cfg.per_step_lrs if ("muon", lr) in runs]
    pairs = "\n".join(
        f"| {lr:g} | {runs[('muon', lr)]['val_loss']:.4f} | "
        f"{runs[('muon-per-step', lr)]['val_loss']:.4f} | "
        f"{runs[('muon', lr)]['val_loss'] - runs[('muon-per-step', lr)]['val_loss']:+.4f} |"
        for lr in shared
    )
    wall_rows = "\n".join(
        f"| {clock} ({w['seconds']:.1f} s) | {opt} | {r['lr']:g} | "
        f"{1000 * r['seconds_per_step']:.1f} | {r['step']} | {r['val_loss']:.4f} |"
        for clock, w in wall.items()
        for opt, r in w.items()
        if opt != "seconds"
    )
    verdict = "lower" if rp["val_loss"] < rm["val_loss"] else "NOT lower"
    unc = wall["uncontended"]
    ratio = unc["muon-per-step"]["seconds_per_step"] / unc["muon"]["seconds_per_step"]
    noise = (
        f"Here the per-step run's time per step is {ratio:.2f}x Keller's for the same work: that gap "
        "is load on the machine, not the method, so at equal wall-clock the two Muon variants "
        "should be compared at equal steps."
        if abs(ratio - 1) > 0.05
        else "Their times per step agree within 5%."
    )
    return f"""## Keller vs per-step Newton–Schulz coefficients

Equal steps ({cfg.train.max_steps}), same lr (positive difference: per-step lower):

| Muon lr | Keller | per-step | Keller − per-step |
|---|---|---|---|
{pairs}

**Best per-step Muon** (lr {lr_p:g}): {rp["val_loss"]:.4f}, {verdict} than best Keller Muon
({rm["val_loss"]:.4f}; difference {rm["val_loss"] - rp["val_loss"]:+.4f}). One seed per run.

Equal wall-clock: each best run's validation loss at the training time of the fastest best run
(training time from the logged throughput, evaluation excluded; val loss linear between the
evaluations every {cfg.train.eval_interval} steps). On a shared CPU the measured clock mostly
records the load of other processes, so the table also reads the runs off an uncontended clock:
every step at the run's 10th-percentile time per step. Both Muon variants do the same matrix
products (5 quintic steps); only the scalars differ. {noise}

| clock (budget) | optimizer | best lr | ms / step | step reached | val loss |
|---|---|---|---|---|---|
{wall_rows}
"""


def _plot(runs: dict, best: dict, path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"adamw": "tab:blue", "muon": "tab:red", "muon-per-step": "tab:green"}
    for (opt, lr), r in runs.items():
        is_best = best[opt][0] == lr
        style = dict(color=colors[opt], alpha=1.0 if is_best else 0.35, lw=2 if is_best else 1)
        tr = [(x["step"], x["loss"]) for x in r["history"] if "loss" in x]
        va = [(x["step"], x["val_loss"]) for x in r["history"] if "val_loss" in x]
        ax1.plot(*zip(*tr, strict=True), label=f"{opt} lr={lr:g}", **style)
        ax2.plot(*zip(*va, strict=True), marker="o", ms=3, label=f"{opt} lr={lr:g}", **style)
    ax1.set(xlabel="step", ylabel="train loss", title="training loss", yscale="log")
    ax2.set(xlabel="step", ylabel="val loss", title="validation loss (bold: best lr)", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
