"""Vanilla character-level GPT on TinyShakespeare (the nanoGPT starter), CPU-sized."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lmlab.data.shakespeare import prepare_shakespeare_char
from lmlab.data.sources import Source
from lmlab.data.tokens import TokenData
from lmlab.model import Transformer
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.run import train as run_training
from lmlab.train.sample import sample

SUMMARY = "character-level GPT on TinyShakespeare: val loss <= 1.70 on a laptop CPU, then a sample"


@dataclass
class Config:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    block_size: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    max_steps: int = 1200
    weight_decay: float = 0.1
    eval_interval: int = 200
    eval_iters: int = 10
    target: float = 0.0  # > 0: stop once val loss is at or below this
    dtype: str = "float32"
    compile: bool = False
    threads: int = 0
    sample_chars: int = 500
    seed: int = 1337


def train(
    cfg: Config, out_dir: str, data: TokenData, vocab_size: int, init: dict | None = None, **extra
) -> tuple[Transformer, list[dict]]:
    """Build and train the char GPT of `cfg`, optionally from `init` weights (ablations and finetuning
    reuse this); `extra` overrides TrainConfig fields, `model_overrides` adds model fields."""
    tcfg = TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            **extra.pop("model_overrides", {}),
        ),
        block_size=cfg.block_size,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        eval_interval=cfg.eval_interval,
        eval_iters=cfg.eval_iters,
        dtype=cfg.dtype,
        compile=cfg.compile,
        threads=cfg.threads,
        seed=cfg.seed,
        out_dir=out_dir,
        tensorboard=False,
        **extra,
    )
    stop = [(lambda tr, rec: rec["val_loss"] <= cfg.target)] if cfg.target > 0 else []
    res = run_training(tcfg, stop, init=init, source=Source(data, vocab_size, cfg.block_size))
    return res.model, res.history


def run(cfg: Config, out: RunDir) -> dict:
    folder, vocab = prepare_shakespeare_char()
    data = TokenData(folder, cfg.block_size)
    t0 = time.perf_counter()
    model, history = train(cfg, str(out.path / "train"), data, vocab.vocab_size)
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

Character-level GPT ({cfg.n_layers} layers, d_model {cfg.d_model}, {n_params:,} parameters) on TinyShakespeare
(90/10 train/val split, 65 symbols), block {cfg.block_size}, batch {cfg.batch_size}, AdamW lr {cfg.lr} cosine.

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
    return {
        "val_loss": evals[-1]["val_loss"],
        "best_val_loss": best,
        "steps": evals[-1]["step"],
        "seconds": seconds,
        "params": n_params,
    }
