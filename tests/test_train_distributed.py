"""`torchrun --nproc_per_node=2` on CPU follows the single-process loss curve (DDP and FSDP2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
model = "gpt2-tiny"
data = "task:induction"
batch_size = 16
grad_accum = 2
max_steps = 20
lr = 1e-2
warmup_steps = 5
eval_interval = 10
eval_iters = 2
log_interval = 1
tensorboard = false
progress = false
threads = 1
seed = 3

[model_overrides]
d_model = 32
n_layers = 2
n_heads = 2

[data_options]
vocab_size = 24
seq_len = 8
"""


def _run(args: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": "1",
    }
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> list[float]:
    tmp = tmp_path_factory.mktemp("single")
    (tmp / "cfg.toml").write_text(CONFIG)
    _run([sys.executable, "-m", "lmlab", "train", "cfg.toml", "--out_dir=one"], tmp)
    return _losses(tmp / "one")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(single, tmp_path, parallel):
    (tmp_path / "cfg.toml").write_text(CONFIG)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "lmlab",
            "train",
            "cfg.toml",
            "--out_dir=two",
            f"--parallel={parallel}",
        ],
        tmp_path,
    )
    two = _losses(tmp_path / "two")
    assert len(two) == len(single) == 20
    assert max(abs(a - b) for a, b in zip(single, two, strict=True)) < 1e-4
    assert single[0] - single[-1] > 0.05  # it actually trained
    assert (tmp_path / "two" / "ckpt_000020.pt").is_file() and not list(
        (tmp_path / "two").glob("metrics.jsonl.*")
    )
