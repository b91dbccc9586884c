"""Vanilla character-level GPT on TinyShakespeare (the nanoGPT starter): 1,200 CPU steps, about
20-25 minutes on 2 cores (`--train.max_steps=500` for a quicker, weaker run)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.sources import Source
from lmlab.data.tokens import TokenData
from lmlab.model import Transformer
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run
from lmlab.train.run import train as run_training
from lmlab.train.sample import sample

SUMMARY = "character-level GPT on TinyShakespeare: val loss <= 1.70 in ~20-25 min on 2 CPU cores, then a sample"


def default_train() -> TrainConfig:
    """The char GPT's training settings: 4 layers, d_model 128, AdamW 3e-3 cosine, 1,200 steps."""
    return TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=128, n_layers=4, n_heads=4),
        data="shakespeare-char",
        block_size=128,
        batch_size=32,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=100,
        max_steps=1200,
        eval_interval=200,
        eval_iters=10,
        tensorboard=False,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)
    target: float = 0.0  # > 0: stop once val loss is at or below this
    sample_chars: int = 500


def train(
    tcfg: TrainConfig,
    out_dir: str,
    data: TokenData,
    vocab_size: int,
    init: dict | None = None,
    target: float = 0.0,
) -> tuple[Transformer, list[dict]]:
    """Train the char GPT of `tcfg` on `data` into `out_dir`, optionally from `init` weights
    (ablations and finetuning reuse this), stopping early once val loss <= `target` (if > 0)."""
    tcfg = replace(tcfg, out_dir=out_dir)
    stop = [(lambda tr, rec: rec["val_loss"] <= target)] if target > 0 else []
    res = run_training(tcfg, stop, init=init, source=Source(data, vocab_size, tcfg.block_size))
    return res.model, res.history


def run(cfg: Config, out: RunDir) -> dict:
    folder, vocab = prepare_shakespeare_char()
    tc = cfg.train
    data = TokenData(folder, tc.block_size)
    t0 = time.perf_counter()
    model, history = train(tc, str(out.path / "train"), data, vocab.vocab_size, target=cfg.target)
    seconds = time.perf_counter() - t0
    evals = [r for r in history if "val_loss" in r]
    best = min(r["val_loss"] for r in evals)
    text = vocab.decode(
        sample(
            model, vocab.encode("\n"), cfg.sample_chars, generator=torch.Generator().manual_seed(0)
        )
    )
    print(
        f"val loss {evals[-1]['val_loss']:.4f} (best {best:.4f}) after {evals[-1]['step']} steps, {seconds:.0f} s"
    )
    print("sample:\n" + text)
    (out.path / "loss.png").write_bytes((out.path / "train" / "loss.png").read_bytes())
    tok_s = [r["tok_s"] for r in history if "tok_s" in r]
    n_params = sum(p.numel() for p in model.parameters())
    out.write_report(f"""# shakespeare-char

Character-level GPT ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {n_params:,} parameters) on
TinyShakespeare (90/10 train/val split, 65 symbols), block {tc.block_size}, batch {tc.batch_size},
{tc.optimizer} lr {tc.lr} {tc.schedule}.

| metric | value |
|---|---|
| final val loss | {evals[-1]["val_loss"]:.4f} |
| best val loss | {best:.4f} |
| steps | {evals[-1]["step"]} |
| wall time | {seconds:.0f} s |
| median tokens/s | {sorted(tok_s)[len(tok_s) // 2]:,.0f} |

![loss](loss.png)

Sample (temperature 0.8, top-k 40):

```
{text}
```
""")
    metrics = {
        "val_loss": evals[-1]["val_loss"],
        "best_val_loss": best,
        "steps": evals[-1]["step"],
        "seconds": seconds,
        "params": n_params,
    }
    log_run(out.path, metrics, {"train": history})
    return metrics
