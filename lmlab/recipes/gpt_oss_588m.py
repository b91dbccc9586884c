"""GPT-OSS-style 588M mixture-of-experts model (352M active) from scratch: a one-GPU recipe."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.recipes._gpu_pretrain import run_pretrain
from lmlab.runs import RunDir

SUMMARY = "GPU: GPT-OSS-style 588M MoE (sinks, sliding windows, 16 experts top-4) from scratch, bf16 + compile"


@dataclass
class Config:
    model: str = "gpt-oss-588m"
    vocab_size: int = 0  # 0: the data's (o200k_harmony ids from the tokenizer issue's loader)
    data: str = "data/fineweb_o200k"  # python -m lmlab.data.prepare FILES --out ... --tokenizer o200k_harmony
    block_size: int = 2048
    batch_size: int = 4
    grad_accum: int = 64  # 4 x 64 x 2048 = 524,288 tokens per step
    max_steps: int = 19073
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 700
    schedule: str = "wsd"
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    dtype: str = "bfloat16"
    compile: bool = True
    device: str = "auto"
    parallel: str = "ddp"  # "fsdp" to shard parameters and optimizer state across GPUs
    require_gpu: bool = True
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 1000
    seed: int = 1337


def run(cfg: Config, out: RunDir) -> dict:
    return run_pretrain(
        cfg,
        out,
        "gpt-oss-588m",
        f"python -m lmlab.data.prepare corpus/*.jsonl --out {cfg.data} --tokenizer o200k_harmony",
    )
