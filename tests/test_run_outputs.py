"""Run outputs: metrics.jsonl plus TensorBoard events for every run, a clear line (no traceback)
when `tensorboard` is missing, and evaluation lines printed by rank 0 only."""

from __future__ import annotations

import json
import sys

import pytest

from lmlab.data.tasks import MaxSortTask
from lmlab.model import Transformer
from lmlab.train import TrainConfig, Trainer
from lmlab.train import logging as train_logging
from lmlab.train.logging import MetricsLog, log_run, scalars
from tests.run_events import HAVE_TENSORBOARD, assert_run_events, read_events

HISTORY = [{"step": 1, "loss": 2.0, "lr": 0.1}, {"step": 2, "loss": 1.5, "lr": 0.1}]
METRICS = {
    "acc": 0.75,
    "ok": True,
    "rows": [{"name": "a", "score": 3}],
    "nested": {"val_loss": 1.25, "nan": float("nan")},
    "config": {"lr": 1.0},
    "history": HISTORY,
    "label": "text",
}


def test_scalars_flatten_numbers_and_skip_history_and_config():
    assert scalars(METRICS) == {
        "acc": 0.75,
        "ok": 1.0,
        "rows/0/score": 3.0,
        "nested/val_loss": 1.25,
    }
    assert len(scalars({"x": list(range(50))}, limit=10)) == 10


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="the tensorboard extra is not installed")
def test_log_run_writes_jsonl_and_events_tensorboard_reads(tmp_path):
    log_run(tmp_path, METRICS, {"train": HISTORY})
    events = assert_run_events(tmp_path)
    assert events["train/loss"] == [(1, 2.0), (2, 1.5)]
    assert events["final/acc"] == [(2, 0.75)] and events["final/rows/0/score"] == [(2, 3.0)]
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in recs] == ["train", "train", "final"]
    assert recs[-1]["nested/val_loss"] == 1.25 and "label" not in recs[-1]


@pytest.fixture
def no_tensorboard(monkeypatch):
    """Make `from torch.utils.tensorboard import SummaryWriter` fail as without the package."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(train_logging, "_said_missing", False)


def test_missing_tensorboard_keeps_jsonl_and_says_how_to_install_once(
    no_tensorboard, tmp_path, capsys
):
    log_run(tmp_path / "a", METRICS, {"train": HISTORY})
    log = MetricsLog(tmp_path / "b")
    log.write({"step": 1, "loss": 1.0})
    log.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pip install 'lmlab[tensorboard]'" in err and "skipped" in err
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
    assert not (tmp_path / "a" / "tb").exists() and not (tmp_path / "b" / "tb").exists()


def _fit(tmp_path, monkeypatch, rank: int) -> None:
    """Fit a tiny model as the process of rank `rank` (a single-process world) would."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = TrainConfig(
        model="gpt2-tiny", model_overrides=dict(d_model=16, n_layers=1, n_heads=2),
        batch_size=4, max_steps=2, warmup_steps=0, eval_interval=1, eval_iters=1,
        out_dir=str(tmp_path / f"rank{rank}"), progress=False, threads=1,
    )  # fmt: skip
    task = MaxSortTask("max", 4, 8)
    Trainer(Transformer(cfg.model_config(task.vocab_size, task.block_size)), cfg, task).fit()


def test_only_rank_zero_prints_evaluation_lines_and_writes_metrics(tmp_path, monkeypatch, capsys):
    _fit(tmp_path, monkeypatch, rank=0)
    out = capsys.readouterr().out
    assert out.count(" val_loss") == 2 and out.startswith("step 1 ")  # one line per evaluation
    assert (tmp_path / "rank0" / "metrics.jsonl").read_text().count("\n") == 4
    if HAVE_TENSORBOARD:
        assert len(read_events(tmp_path / "rank0")["loss"]) == 2  # `lmlab train` writes events
    _fit(tmp_path, monkeypatch, rank=1)
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "rank1" / "metrics.jsonl").exists()
