"""Kill -9 a training run five times at random moments, resume each time: same weights as one clean run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.train import checkpoint as ckpt

CONFIG = """
model = "gpt2-tiny"
data = "task:induction"
batch_size = 16
max_steps = 300
lr = 3e-3
warmup_steps = 10
eval_interval = 0
eval_iters = 2
log_interval = 1
checkpoint_interval = 1
tensorboard = false
progress = false
threads = 1
seed = 7

[model_overrides]
d_model = 32
n_layers = 1
n_heads = 2
dropout = 0.1

[data_options]
vocab_size = 20
seq_len = 8
"""


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmlab", "train", str(cfg), f"--out_dir={out}", "--resume"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.mark.slow
def test_kill_nine_five_times_then_resume_matches_clean_run(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    killed, rng = tmp_path / "killed", random.Random(0)
    kills = 0
    while kills < 5:
        before = (
            (killed / ckpt.FILENAME).stat().st_mtime_ns if (killed / ckpt.FILENAME).is_file() else 0
        )
        proc = subprocess.Popen(
            _cmd(cfg, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.time() + 120
        # wait until this attempt has saved a step
        while time.time() < deadline and proc.poll() is None:
            p = killed / ckpt.FILENAME
            if p.is_file() and p.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            pytest.fail(
                f"run finished before kill {kills + 1}; raise max_steps. stderr: {proc.stderr.read()[-500:]}"
            )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        state = ckpt.load(killed / ckpt.FILENAME)  # never half-written: always loads
        assert 0 < state["step"] < 300
    done = subprocess.run(
        _cmd(cfg, killed), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    clean = subprocess.run(
        _cmd(cfg, tmp_path / "clean"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = ckpt.load(killed / ckpt.FILENAME), ckpt.load(tmp_path / "clean" / ckpt.FILENAME)
    assert a["step"] == b["step"] == 300
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), f"{k} differs after 5 kills + resumes"
    steps = [
        json.loads(line)["step"]
        for line in (killed / "metrics.jsonl").read_text().splitlines()
        if "loss" in line and "val_loss" not in line
    ]
    assert steps == list(range(1, 301))  # the log has each step once, resumes included
    assert not list(killed.glob(".*tmp*"))
