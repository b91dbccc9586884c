"""Shared body of the GPU pretraining recipes (gpt2-124m, gpt-oss-588m): train on token shards, report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lmlab.config import ConfigError
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.run import train

PASSED_THROUGH = (
    "block_size",
    "batch_size",
    "grad_accum",
    "max_steps",
    "lr",
    "min_lr",
    "warmup_steps",
    "schedule",
    "weight_decay",
    "dtype",
    "compile",
    "device",
    "eval_interval",
    "eval_iters",
    "checkpoint_interval",
    "optimizer",
    "parallel",
    "seed",
    "log_interval",
)


def run_pretrain(cfg: Any, out: RunDir, name: str, prepare_hint: str) -> dict:
    """Train `cfg.model` on the shards in `cfg.data` with the recipe's settings and write the report."""
    if cfg.require_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"{name} is a GPU recipe and no CUDA device is visible. For a CPU smoke run pass "
            "--require_gpu=false --model=<a tiny preset> --device=cpu --compile=false "
            "--dtype=float32 --max_steps=10 --data=<a small token folder>"
        )
    if not Path(cfg.data).is_dir():
        raise ConfigError(f"token folder {cfg.data!r} not found; prepare it first: {prepare_hint}")
    over = {"vocab_size": cfg.vocab_size} if cfg.vocab_size else {}
    tcfg = TrainConfig(
        model=cfg.model,
        model_overrides=over,
        data=cfg.data,
        out_dir=str(out.path / "train"),
        tensorboard=True,
        **{k: getattr(cfg, k) for k in PASSED_THROUGH},
    )
    res = train(tcfg)
    logs = [r for r in res.history if "tok_s" in r][1:] or [r for r in res.history if "tok_s" in r]
    tok_s = sorted(r["tok_s"] for r in logs)[len(logs) // 2]
    mfu = sorted(r["mfu"] for r in logs)[len(logs) // 2]
    final = res.final
    device = torch.cuda.get_device_name() if res.trainer.dist.device.type == "cuda" else "cpu"
    (out.path / "loss.png").write_bytes((out.path / "train" / "loss.png").read_bytes())
    settings = "\n".join(f"| {f.name} | {getattr(cfg, f.name)} |" for f in dataclasses.fields(cfg))
    out.write_report(f"""# {name}

{res.model.cfg.name}: {sum(p.numel() for p in res.model.parameters()):,} parameters, trained on `{cfg.data}` on
{res.trainer.dist.world} x {device}.

| metric | value |
|---|---|
| steps | {final.get("step")} |
| val loss | {final.get("val_loss", float("nan")):.4f} |
| median tokens/s | {tok_s:,.0f} |
| median MFU | {100 * mfu:.1f}% |

![loss](loss.png)

| setting | value |
|---|---|
{settings}
""")
    return {
        "val_loss": final.get("val_loss"),
        "tok_s": tok_s,
        "mfu": mfu,
        "steps": final.get("step"),
    }
