"""Shared body of the GPU pretraining recipes (gpt2-124m, gpt-oss-588m): train on token shards, report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lmlab.config import ConfigError
from lmlab.runs import RunDir
from lmlab.train import TrainConfig
from lmlab.train.logging import log_run
from lmlab.train.run import train


def run_pretrain(cfg: Any, out: RunDir, name: str, prepare_hint: str) -> dict:
    """Train `cfg.train` (a `TrainConfig` naming the model and the token shards) and write the report."""
    tc: TrainConfig = cfg.train
    if cfg.require_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"{name} is a GPU recipe and no CUDA device is visible. For a CPU smoke run pass "
            "--require_gpu=false --train.model=<a tiny preset> --train.device=cpu "
            "--train.compile=false --train.dtype=float32 --train.max_steps=10 "
            "--train.data=<a small token folder>"
        )
    if not Path(tc.data).is_dir():
        raise ConfigError(
            f"token folder {tc.data!r} not found; prepare it first ({prepare_hint}) "
            "or pass --train.data=FOLDER"
        )
    res = train(dataclasses.replace(tc, out_dir=str(out.path / "train")))
    if not res.trainer.dist.main:
        return {}
    logs = [r for r in res.history if "tok_s" in r][1:] or [r for r in res.history if "tok_s" in r]
    tok_s = sorted(r["tok_s"] for r in logs)[len(logs) // 2]
    mfu = sorted(r["mfu"] for r in logs)[len(logs) // 2]
    final = res.final
    device = torch.cuda.get_device_name() if res.trainer.dist.device.type == "cuda" else "cpu"
    (out.path / "loss.png").write_bytes((out.path / "train" / "loss.png").read_bytes())
    settings = "\n".join(
        f"| {k} | {v} |" for k, v in dataclasses.asdict(tc).items() if k != "out_dir"
    )
    out.write_report(f"""# {name}

{res.model.cfg.name}: {sum(p.numel() for p in res.model.parameters()):,} parameters, trained on `{tc.data}` on
{res.trainer.dist.world} x {device}.

| metric | value |
|---|---|
| steps | {final.get("step")} |
| val loss | {final.get("val_loss", float("nan")):.4f} |
| median tokens/s | {tok_s:,.0f} |
| median MFU | {100 * mfu:.1f}% |

![loss](loss.png)

| setting (train.) | value |
|---|---|
{settings}
""")
    metrics = {
        "val_loss": final.get("val_loss"),
        "tok_s": tok_s,
        "mfu": mfu,
        "steps": final.get("step"),
    }
    log_run(out.path, metrics, {"train": res.history})
    return metrics
