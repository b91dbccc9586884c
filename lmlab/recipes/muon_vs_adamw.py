"""Muon vs AdamW on character-level TinyShakespeare: same model, data, steps; a small lr sweep each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.tokens import TokenData
from lmlab.optim import ADAMW_LR_RATIO
from lmlab.recipes import shakespeare_char
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run

SUMMARY = "Muon vs AdamW on shakespeare-char: lr sweep for each, loss curves, final val losses"


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


def run(cfg: Config, out: RunDir) -> dict:
    tc = cfg.train
    folder, vocab = prepare_shakespeare_char()
    data = TokenData(folder, tc.block_size)
    runs: dict[tuple[str, float], dict] = {}
    t0 = time.perf_counter()
    for opt, lrs in (("adamw", cfg.adamw_lrs), ("muon", cfg.muon_lrs)):
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
            }
            print(f"{opt} lr={lr:g}: final val loss {evals[-1]['val_loss']:.4f}")
    seconds = time.perf_counter() - t0
    best = {
        opt: min(
            ((lr, r) for (o, lr), r in runs.items() if o == opt), key=lambda t: t[1]["val_loss"]
        )
        for opt in ("adamw", "muon")
    }
    _plot(runs, best, out.file("loss_curves.png"))
    rows = "\n".join(
        f"| {opt} | {lr:g} | {r['val_loss']:.4f} | {r['seconds']:.0f} | {'best' if best[opt][0] == lr else ''} |"
        for (opt, lr), r in runs.items()
    )
    (lr_a, ra), (lr_m, rm) = best["adamw"], best["muon"]
    mc = tc.model_config(vocab.vocab_size)
    verdict = "lower" if rm["val_loss"] < ra["val_loss"] else "NOT lower"
    out.write_report(f"""# muon-vs-adamw

Same model ({mc.n_layers} layers, d_model {mc.d_model}, {tc.model} family), same data
(TinyShakespeare characters, block {tc.block_size}, batch {tc.batch_size}), same seed, {tc.max_steps}
steps, warmup {tc.warmup_steps} then {tc.schedule} to lr/10. AdamW: betas ({tc.beta1}, {tc.beta2}), weight decay
{tc.weight_decay}. Muon: Nesterov momentum 0.95, 5 bf16 Newton–Schulz steps with Keller's
coefficients, update scale sqrt(max(1, rows/cols)), on the blocks' matrices; embeddings, head, norms
and biases on AdamW at {ADAMW_LR_RATIO} x the Muon lr.

| optimizer | lr | final val loss | seconds | |
|---|---|---|---|---|
{rows}

**Best AdamW** (lr {lr_a:g}): {ra["val_loss"]:.4f}. **Best Muon** (lr {lr_m:g}): {rm["val_loss"]:.4f}.
Muon's final val loss is {verdict} than AdamW's (difference {ra["val_loss"] - rm["val_loss"]:+.4f}).

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
    }
    log_run(out.path, metrics, {f"{o}_lr{lr:g}": r["history"] for (o, lr), r in runs.items()})
    return metrics


def _plot(runs: dict, best: dict, path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"adamw": "tab:blue", "muon": "tab:red"}
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
