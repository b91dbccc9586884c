"""Resume: kill -9 five times then resume (same weights as one clean run); a damaged newest
checkpoint falls back to the previous one; changed settings need --allow-change; last K kept."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab import checkpoints as ckpt
from lmlab.errors import CheckpointError
from lmlab.train import TrainConfig
from lmlab.train.run import train

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


def _cmd(cfg: Path, out: Path, resume: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "lmlab", "train", str(cfg), f"--out_dir={out}"]
    return [*argv, "--resume"] if resume else argv


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.mark.slow
def test_kill_nine_five_times_then_resume_matches_clean_run(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    killed, rng = tmp_path / "killed", random.Random(0)
    kills = 0
    manifest = killed / ckpt.manifest_name()
    while kills < 5:
        before = manifest.stat().st_mtime_ns if manifest.is_file() else 0
        proc = subprocess.Popen(
            _cmd(cfg, killed, resume=kills > 0),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        # wait until this attempt has saved a step (the manifest is written after the file)
        while time.time() < deadline and proc.poll() is None:
            if manifest.is_file() and manifest.stat().st_mtime_ns != before:
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
        state = ckpt.load(ckpt.latest(killed, warn=False))  # never half-written: loads, sha ok
        assert 0 < state["step"] < 300 and len(ckpt.candidates(killed)) <= 2
    done = subprocess.run(
        _cmd(cfg, killed), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning" not in done.stderr  # every resume found an intact newest checkpoint
    clean = subprocess.run(
        _cmd(cfg, tmp_path / "clean", resume=False),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = ckpt.load(ckpt.latest(killed)), ckpt.load(ckpt.latest(tmp_path / "clean"))
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
    assert [p.name for p in sorted(killed.glob("ckpt_*.pt"))] == [
        "ckpt_000299.pt",
        "ckpt_000300.pt",
    ]


# ---------------------------------------------------------------------- in-process resume checks
def _tiny(out: Path, **kw) -> TrainConfig:
    base = dict(
        model="gpt2-tiny", model_overrides=dict(d_model=32, n_layers=1, n_heads=2, dropout=0.1),
        data="task:induction", data_options=dict(vocab_size=20, seq_len=6), batch_size=8,
        max_steps=8, lr=3e-3, warmup_steps=2, eval_interval=1, eval_iters=1, log_interval=1,
        checkpoint_interval=1, out_dir=str(out), tensorboard=False, progress=False, threads=1,
        seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _fit(cfg: TrainConfig, stop_at: int = 0) -> dict[str, torch.Tensor]:
    """Train `cfg` (stopping after step `stop_at` if given) from a fresh, differently seeded init."""
    torch.manual_seed(99)  # a resume must not depend on the new process's init or RNG
    stop = [lambda tr, rec: rec["step"] == stop_at] if stop_at else []
    return train(cfg, callbacks=stop).model.state_dict()


@pytest.fixture(scope="module")
def clean_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    return _fit(_tiny(tmp_path_factory.mktemp("clean") / "run"))


def _metric_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if '"loss"' in ln]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: torch.load alone would not notice
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "flipped-byte": _flip_byte,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back(tmp_path, capfd, clean_weights, damage):
    out = tmp_path / "run"
    _fit(_tiny(out), stop_at=4)
    assert [p.name for p in sorted(out.glob("ckpt_*.pt"))] == ["ckpt_000003.pt", "ckpt_000004.pt"]
    DAMAGE[damage](out / "ckpt_000004.pt")
    capfd.readouterr()
    weights = _fit(_tiny(out, resume=True))
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and re.fullmatch(
        rf"warning: {re.escape(str(out / 'ckpt_000004.pt'))} is .*; resuming from the previous "
        rf"checkpoint {re.escape(str(out / 'ckpt_000003.pt'))} \(step 3\)",
        err[0],
    ), err
    if damage == "flipped-byte":
        assert "sha256 differs" in err[0]
    for k, v in clean_weights.items():
        assert torch.equal(weights[k], v), f"{k} differs from the uninterrupted run"
    assert _metric_steps(out) == list(range(1, 9))  # step 4 was redone, but is listed once
    assert ckpt.latest(out).name == "ckpt_000008.pt"


def test_legacy_single_ckpt_pt_still_resumes(tmp_path, clean_weights):
    out = tmp_path / "run"
    _fit(_tiny(out), stop_at=4)
    (out / "ckpt_000004.pt").rename(out / "ckpt.pt")  # a folder written before manifests
    (out / "ckpt_000003.pt").unlink()
    (out / ckpt.manifest_name()).unlink()
    assert ckpt.latest(out) == out / "ckpt.pt"
    weights = _fit(_tiny(out, resume=True))
    for k, v in clean_weights.items():
        assert torch.equal(weights[k], v), k


def test_keeps_the_last_k_checkpoints(tmp_path):
    out = tmp_path / "run"
    _fit(_tiny(out, max_steps=5, keep_checkpoints=3))
    assert [p.name for p in sorted(out.glob("ckpt_*.pt"))] == [
        "ckpt_000003.pt", "ckpt_000004.pt", "ckpt_000005.pt"
    ]  # fmt: skip
    recs = json.loads((out / ckpt.manifest_name()).read_text())["checkpoints"]
    assert [r["step"] for r in recs] == [3, 4, 5]
    assert all(ckpt.sha256(out / r["file"]) == r["sha256"] for r in recs)


def test_resume_refuses_changed_settings_unless_allowed(tmp_path):
    out = tmp_path / "run"
    _fit(_tiny(out), stop_at=4)
    with pytest.raises(CheckpointError, match=r"lr 0\.003 -> 0\.01.*--allow-change lr"):
        _fit(_tiny(out, resume=True, lr=0.01))
    with pytest.raises(CheckpointError, match=r"\(seed 3 -> 4\)"):
        _fit(_tiny(out, resume=True, lr=0.01, seed=4, allow_change=["lr"]))
    _fit(_tiny(out, resume=True, lr=0.01, allow_change=["lr"], eval_iters=2, progress=True))
    state = ckpt.load(ckpt.latest(out))
    assert state["step"] == 8 and state["train_config"]["lr"] == 0.01
    assert _metric_steps(out) == list(range(1, 9))
    # settings that cannot change the weights pass unnamed; max_steps only with a constant lr
    with pytest.raises(CheckpointError, match=r"max_steps 8 -> 10"):
        _fit(_tiny(out, resume=True, lr=0.01, max_steps=10))
    const = tmp_path / "const"
    _fit(_tiny(const, schedule="constant", max_steps=4))
    _fit(_tiny(const, schedule="constant", max_steps=6, resume=True, log_interval=2))
    assert ckpt.load(ckpt.latest(const))["step"] == 6


def test_cli_allow_change_lets_lr_through(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.replace("max_steps = 300", "max_steps = 3"))
    out = tmp_path / "run"
    first = subprocess.run(_cmd(cfg, out, resume=False), env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    again = [*_cmd(cfg, out), "--lr=0.01", "--max_steps=5", "--allow-change", "lr",
             "--allow-change=max_steps"]  # fmt: skip
    r = subprocess.run(again, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    state = ckpt.load(ckpt.latest(out))
    assert state["step"] == 5 and state["train_config"]["lr"] == 0.01
