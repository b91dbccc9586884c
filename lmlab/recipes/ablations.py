"""Architecture ablations on TinyShakespeare: MQA, SwiGLU, RoPE, QuickGELU, residual scaling, equal steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.tokens import TokenData
from lmlab.recipes import shakespeare_char
from lmlab.runs import RunDir
from lmlab.train.plots import plot_runs

SUMMARY = "GPT variants (MQA, SwiGLU, RoPE, QuickGELU, residual scaling) for equal steps: val loss, params, tok/s"


def variants(d_model: int, n_layers: int) -> dict[str, dict]:
    """Model overrides of each variant relative to the GPT-2 baseline."""
    return {
        "baseline (GPT-2)": {},
        "MQA (1 kv head)": {"n_kv_heads": 1},
        "SwiGLU (param-matched)": {"mlp": "swiglu", "d_ff": int(8 * d_model / 3)},
        "RoPE": {"positions": "rope"},
        "QuickGELU": {"mlp": "quick_gelu"},
        "residual scale 1/sqrt(2L)": {"residual_scale": 1 / math.sqrt(2 * n_layers)},
    }


@dataclass
class Config:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    block_size: int = 64
    batch_size: int = 32
    steps: int = 200
    lr: float = 3e-3
    eval_interval: int = 100
    eval_iters: int = 10
    only: str = ""  # comma-separated subset of variant names (substring match); empty: all
    threads: int = 0
    seed: int = 1337


def run(cfg: Config, out: RunDir) -> dict:
    folder, vocab = prepare_shakespeare_char()
    data = TokenData(folder, cfg.block_size)
    base = shakespeare_char.Config(
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        block_size=cfg.block_size,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        min_lr=cfg.lr / 10,
        warmup_steps=min(100, cfg.steps // 10),
        max_steps=cfg.steps,
        eval_interval=cfg.eval_interval,
        eval_iters=cfg.eval_iters,
        threads=cfg.threads,
        seed=cfg.seed,
    )
    wanted = [w.strip() for w in cfg.only.split(",") if w.strip()]
    results, histories = {}, {}
    for name, over in variants(cfg.d_model, cfg.n_layers).items():
        if wanted and not any(w.lower() in name.lower() for w in wanted):
            continue
        print(f"== {name}")
        slug = "".join(c if c.isalnum() else "_" for c in name)
        model, hist = shakespeare_char.train(
            base, str(out.path / slug), data, vocab.vocab_size, model_overrides=over
        )
        tok_s = sorted(r["tok_s"] for r in hist if "tok_s" in r)
        results[name] = {
            "val_loss": [r for r in hist if "val_loss" in r][-1]["val_loss"],
            "params": sum(p.numel() for p in model.parameters()),
            "tok_s": tok_s[len(tok_s) // 2],
        }
        histories[name] = hist
    plot_runs(histories, out.file("val_loss.png"), title=f"val loss, {cfg.steps} steps each")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results)
    ax.barh(names, [results[n]["val_loss"] for n in names])
    ax.set(
        xlabel=f"val loss after {cfg.steps} steps",
        xlim=(min(r["val_loss"] for r in results.values()) - 0.05, None),
    )
    fig.tight_layout()
    fig.savefig(out.file("ablations.png"), dpi=110)
    plt.close(fig)
    table = "\n".join(
        f"| {n} | {r['val_loss']:.4f} | {r['params']:,} | {r['tok_s']:,.0f} |"
        for n, r in results.items()
    )
    print("| variant | val loss | params | tokens/s |\n|---|---|---|---|\n" + table)
    out.write_report(f"""# ablations

Character-level GPT on TinyShakespeare, {cfg.n_layers} layers, d_model {cfg.d_model}, block {cfg.block_size},
batch {cfg.batch_size}, {cfg.steps} steps each, same seed and data order. tokens/s is the median over
logging intervals (CPU, shared machine: compare within this run only).

| variant | val loss | params | tokens/s |
|---|---|---|---|
{table}

![val loss](val_loss.png)
![final](ablations.png)
""")
    return results
