"""GPT-OSS-style 588M mixture-of-experts model (352M active) from scratch: a one-GPU recipe.

This module is the one definition of the run: `lmlab run gpt-oss-588m` (`--train.parallel=fsdp`
under torchrun to shard parameters and optimizer state across GPUs). Shards:
`python -m lmlab.data.prepare corpus/*.jsonl --out data/fineweb_o200k --tokenizer o200k_harmony`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.recipes._gpu_pretrain import run_pretrain
from lmlab.runs import RunDir
from lmlab.train import TrainConfig

SUMMARY = "GPU: GPT-OSS-style 588M MoE (sinks, sliding windows, 16 experts top-4) from scratch, bf16 + compile"


def default_train() -> TrainConfig:
    """4 x 64 x 2048 = 524,288 tokens per step, warmup-stable-decay; vocabulary: the data's."""
    return TrainConfig(
        model="gpt-oss-588m",
        data="data/fineweb_o200k",
        block_size=2048,
        batch_size=4,
        grad_accum=64,
        max_steps=19073,
        lr=3e-4,
        min_lr=3e-5,
        warmup_steps=700,
        schedule="wsd",
        weight_decay=0.1,
        dtype="bfloat16",
        compile=True,
        eval_interval=250,
        eval_iters=20,
        checkpoint_interval=1000,
    )


@dataclass
class Config:
    train: TrainConfig = field(default_factory=default_train)
    require_gpu: bool = True


def run(cfg: Config, out: RunDir) -> dict:
    return run_pretrain(
        cfg,
        out,
        "gpt-oss-588m",
        f"python -m lmlab.data.prepare corpus/*.jsonl --out {cfg.train.data} --tokenizer o200k_harmony",
    )
