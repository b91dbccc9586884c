"""Architecture ablations on TinyShakespeare: MQA, SwiGLU, RoPE, QuickGELU, residual scaling, equal steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.tokens import TokenData
from lmlab.recipes import shakespeare_char
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run
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


def default_train() -> TrainConfig:
    """The baseline every variant shares: 4 layers, d_model 128, 200 AdamW steps."""
    return TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=128, n_layers=4, n_heads=4),
        block_size=64,
        batch_size=32,
        max_steps=200,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=20,
        eval_interval=100,
        eval_iters=10,
        tensorboard=False,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)
    only: str = ""  # comma-separated subset of variant names (substring match); empty: all


def run(cfg: Config, out: RunDir) -> dict:
    tc = cfg.train
    folder, vocab = prepare_shakespeare_char()
    data = TokenData(folder, tc.block_size)
    mc = tc.model_config(vocab.vocab_size)
    wanted = [w.strip() for w in cfg.only.split(",") if w.strip()]
    results, histories = {}, {}
    for name, over in variants(mc.d_model, mc.n_layers).items():
        if wanted and not any(w.lower() in name.lower() for w in wanted):
            continue
        print(f"== {name}")
        slug = "".join(c if c.isalnum() else "_" for c in name)
        vcfg = replace(tc, model_overrides={**tc.model_overrides, **over})
        model, hist = shakespeare_char.train(vcfg, str(out.path / slug), data, vocab.vocab_size)
        tok_s = sorted(r["tok_s"] for r in hist if "tok_s" in r)
        results[name] = {
            "val_loss": [r for r in hist if "val_loss" in r][-1]["val_loss"],
            "params": sum(p.numel() for p in model.parameters()),
            "tok_s": tok_s[len(tok_s) // 2],
        }
        histories[name] = hist
    plot_runs(histories, out.file("val_loss.png"), title=f"val loss, {tc.max_steps} steps each")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results)
    ax.barh(names, [results[n]["val_loss"] for n in names])
    ax.set(
        xlabel=f"val loss after {tc.max_steps} steps",
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

Character-level GPT on TinyShakespeare, {mc.n_layers} layers, d_model {mc.d_model}, block {tc.block_size},
batch {tc.batch_size}, {tc.max_steps} steps each, same seed and data order. tokens/s is the median over
logging intervals (CPU, shared machine: compare within this run only).

| variant | val loss | params | tokens/s |
|---|---|---|---|
{table}

![val loss](val_loss.png)
![final](ablations.png)
""")
    log_run(out.path, results, histories)
    return results
