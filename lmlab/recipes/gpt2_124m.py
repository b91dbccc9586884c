"""GPT-2 (124M) pretraining on FineWeb-style gpt2-token shards: a GPU recipe (bf16, compile, flash SDPA)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.recipes._gpu_pretrain import run_pretrain
from lmlab.runs import RunDir

SUMMARY = (
    "GPU: GPT-2 124M from scratch on FineWeb-style shards, ~0.5M tokens/step, bf16 + torch.compile"
)


@dataclass
class Config:
    model: str = "gpt2"
    vocab_size: int = 50304  # 50257 padded to a multiple of 64 for faster matmuls; 0: the data's
    data: str = "data/fineweb_gpt2"  # python -m lmlab.data.prepare FILES --out data/fineweb_gpt2 --tokenizer gpt2
    block_size: int = 1024
    batch_size: int = 16
    grad_accum: int = 32  # 16 x 32 x 1024 = 524,288 tokens per step
    max_steps: int = 19073  # ~10B tokens
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715
    schedule: str = "cosine"
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    dtype: str = "bfloat16"
    compile: bool = True
    device: str = "auto"
    parallel: str = "ddp"
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
        "gpt2-124m",
        f"python -m lmlab.data.prepare corpus/*.jsonl --out {cfg.data} --tokenizer gpt2",
    )
