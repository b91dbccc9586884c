"""GPT-OSS-style 588M mixture-of-experts model (352M active) from scratch: a one-GPU recipe.

This module is the one definition of the run: `lmlab run gpt-oss-588m` (`--train.parallel=fsdp`
under torchrun to shard parameters and optimizer state across GPUs). Shards, with gpt-oss's own
tokenizer (needs `o200k_base.tiktoken` in `$LMLAB_DATA`, or the network to fetch it once):
`python -m lmlab.data.prepare corpus/*.jsonl --out data/fineweb_o200k --tokenizer o200k_harmony`.
Offline without that file, `prepare_hint` names GPT-2's tokenizer instead (the model takes its
vocabulary from the data, so both work).
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


def prepare_hint(data: str) -> str:
    """The data-prep command for `data`: o200k_harmony when its rank file is here (or can be
    fetched), else GPT-2's tokenizer from `data_dir()/gpt2.tiktoken` with a note saying why."""
    from lmlab.tokenizers.o200k import RANKS_FILE, find_ranks, offline

    cmd = f"python -m lmlab.data.prepare corpus/*.jsonl --out {data} --tokenizer"
    if find_ranks() is not None or not offline():
        return f"{cmd} o200k_harmony"
    return (
        f"{cmd} gpt2; offline with no {RANKS_FILE} here, GPT-2's tokenizer stands in for "
        f"gpt-oss's o200k_harmony (put {RANKS_FILE} in $LMLAB_DATA to use that)"
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
        prepare_hint(cfg.train.data),
    )
