"""GPT-2 (124M) pretraining on FineWeb-style gpt2-token shards: a GPU recipe (bf16, compile, flash SDPA).

This module is the one definition of the GPT-2 124M run. On one GPU: `lmlab run gpt2-124m`; on
several: `torchrun --nproc_per_node=8 -m lmlab run gpt2-124m` (batch_size is global per micro-step,
split across GPUs). Shards: `python -m lmlab.data.prepare corpus/*.jsonl --out data/fineweb_gpt2
--tokenizer gpt2`. See the settings with `lmlab run gpt2-124m --show-config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.recipes._gpu_pretrain import run_pretrain
from lmlab.runs import RunDir
from lmlab.train import TrainConfig

SUMMARY = (
    "GPU: GPT-2 124M from scratch on FineWeb-style shards, ~0.5M tokens/step, bf16 + torch.compile"
)


def default_train() -> TrainConfig:
    """nanoGPT's GPT-2 124M run: 16 x 32 x 1024 = 524,288 tokens per step, 19,073 steps (~10B tokens)."""
    return TrainConfig(
        model="gpt2",
        # 50257 padded to a multiple of 64 for faster matmuls
        model_overrides={"vocab_size": 50304},
        data="data/fineweb_gpt2",
        block_size=1024,
        batch_size=16,
        grad_accum=32,
        max_steps=19073,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=715,
        schedule="cosine",
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
        "gpt2-124m",
        f"python -m lmlab.data.prepare corpus/*.jsonl --out {cfg.train.data} --tokenizer gpt2",
    )
