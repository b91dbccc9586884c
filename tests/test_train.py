"""Trainer: schedules, optimizer groups and registry, learning, NaN stop, resume, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab import checkpoints as ckpt
from lmlab.config import ConfigError
from lmlab.data.tasks import InductionTask, MaxSortTask
from lmlab.errors import OverwriteError
from lmlab.model import Transformer
from lmlab.settings import from_toml
from lmlab.train import TrainConfig, Trainer, TrainingError, optimizers
from lmlab.train.schedule import lr_at


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="gpt2-tiny",
        model_overrides=dict(d_model=32, n_layers=1, n_heads=2),
        batch_size=16,
        max_steps=10,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        eval_interval=5,
        eval_iters=2,
        log_interval=1,
        out_dir=str(tmp_path / "run"),
        tensorboard=False,
        progress=False,
        threads=1,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def _model(cfg: TrainConfig, task) -> Transformer:
    torch.manual_seed(cfg.seed)
    return Transformer(cfg.model_config(task.vocab_size, task.block_size))


def test_schedules():
    c = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule="cosine")
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(109, c) == pytest.approx(0.1)
    assert lr_at(60, c) == pytest.approx(0.55, abs=0.01)
    w = TrainConfig(
        lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110, schedule="wsd", decay_fraction=0.2
    )
    assert lr_at(50, w) == 1.0 and lr_at(88, w) == 1.0 and lr_at(109, w) == pytest.approx(0.0)
    assert 0 < lr_at(100, w) < 1
    k = TrainConfig(lr=0.5, min_lr=0.0, warmup_steps=0, schedule="constant")
    assert lr_at(0, k) == lr_at(999, k) == 0.5


def test_adamw_decay_groups_and_registry(tmp_path):
    model = Transformer(TrainConfig().model_config(65))
    opt = optimizers.build(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(
        p is model.embed.weight for p in no_decay["params"]
    )  # (tied) embeddings are not decayed
    assert any(p is model.blocks[0].ln1.weight for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # each parameter exactly once
    assert opt.defaults["fused"]

    calls = []

    @optimizers.register("test-sgd")
    def sgd(model, cfg):
        calls.append(cfg.lr)
        return torch.optim.SGD(model.parameters(), lr=cfg.lr)

    task = MaxSortTask(kind="max", length=4, max_value=8)
    cfg = _cfg(tmp_path, optimizer="test-sgd", max_steps=2)
    Trainer(_model(cfg, task), cfg, task).fit()
    assert calls == [3e-3]
    with pytest.raises(ConfigError, match="Did you mean 'adamw'"):
        optimizers.build(model, TrainConfig(optimizer="adamv"))


def test_trainer_learns_max_task(tmp_path):
    task = MaxSortTask(kind="max", length=6, max_value=16)
    cfg = _cfg(
        tmp_path,
        batch_size=64,
        max_steps=100,
        lr=1e-2,
        min_lr=1e-3,
        eval_interval=50,
        warmup_steps=10,
        model_overrides=dict(d_model=48, n_layers=2, n_heads=4),
    )
    history = Trainer(_model(cfg, task), cfg, task).fit()
    evals = [r for r in history if "val_loss" in r]
    assert history[0]["loss"] > 2.0 and evals[-1]["val_loss"] < 0.2  # ln(16) = 2.77 at chance
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 100 + 2 and '"tok_s"' in lines[0]


def test_grad_accumulation_matches_big_batch(tmp_path):
    task = InductionTask(vocab_size=20, seq_len=6)
    a = _cfg(tmp_path / "a", batch_size=32, grad_accum=1, max_steps=3, grad_clip=0)
    b = _cfg(tmp_path / "b", batch_size=16, grad_accum=2, max_steps=3, grad_clip=0)
    ma, mb = _model(a, task), _model(b, task)
    # Same data: two micro-batches of 16 drawn in a row equal one batch of 32 drawn by position.
    ha, hb = Trainer(ma, a, task).fit(), Trainer(mb, b, task).fit()
    la, lb = [r["loss"] for r in ha if "loss" in r], [r["loss"] for r in hb if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-5) and la[0] != la[-1]


def test_bf16_autocast_on_cpu_tracks_float32(tmp_path):
    """80 steps from the same init and batches: bf16 autocast (float32 weights) stays within 0.02
    of float32 at every step. Measured: at most 0.0044 apart, val loss 0.2683 vs 0.2679 (from
    2.29); bf16 weights instead of autocast drift to 0.073 apart (val 0.322)."""
    task = MaxSortTask(kind="max", length=4, max_value=8)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _cfg(tmp_path / dtype, dtype=dtype, max_steps=80, eval_interval=80)
        h = Trainer(_model(cfg, task), cfg, task).fit()
        runs[dtype] = ([r["loss"] for r in h if "loss" in r], h[-1]["val_loss"])
    (f32, f32_val), (bf16, bf16_val) = runs["float32"], runs["bfloat16"]
    assert len(f32) == len(bf16) == 80 and f32_val < 0.6 < 2.0 < f32[0]  # it learned
    gaps = [abs(a - b) for a, b in zip(f32, bf16, strict=True)]
    assert max(gaps) <= 0.02 and abs(f32_val - bf16_val) <= 0.02, (max(gaps), f32_val, bf16_val)
    assert max(gaps) > 0 and math.isfinite(bf16_val)  # bf16 really ran: not the float32 numbers


def test_resume_continues_bit_identically(tmp_path):
    task = InductionTask(vocab_size=20, seq_len=6)
    # dropout: the torch RNG must be restored too
    over = dict(d_model=32, n_layers=1, n_heads=2, dropout=0.1)
    full_cfg = _cfg(tmp_path / "full", max_steps=8, eval_interval=4, model_overrides=over)
    full = _model(full_cfg, task)
    Trainer(full, full_cfg, task).fit()
    half_cfg = _cfg(tmp_path / "half", max_steps=8, eval_interval=4, model_overrides=over)
    Trainer(
        _model(half_cfg, task), half_cfg, task, [lambda tr, rec: rec["step"] == 4]
    ).fit()  # stops at 4
    assert ckpt.load(ckpt.latest(tmp_path / "half" / "run"))["step"] == 4
    rest_cfg = _cfg(
        tmp_path / "half", max_steps=8, eval_interval=4, resume=True, model_overrides=over
    )
    torch.manual_seed(123)  # resuming must not depend on the fresh process's RNG or init
    rest = Transformer(rest_cfg.model_config(task.vocab_size, task.block_size))
    history = Trainer(rest, rest_cfg, task).fit()
    assert [r["step"] for r in history if "loss" in r] == list(range(1, 9))
    for (k, p), q in zip(full.state_dict().items(), rest.state_dict().values(), strict=True):
        assert torch.equal(p, q), k
    # Without --resume an existing checkpoint is not overwritten.
    with pytest.raises(OverwriteError, match="pass --resume"):
        Trainer(_model(full_cfg, task), full_cfg, task).fit()


def test_resume_with_mismatched_model_config(tmp_path):
    task = InductionTask(vocab_size=20, seq_len=6)
    cfg = _cfg(tmp_path, max_steps=4)
    Trainer(_model(cfg, task), cfg, task).fit()
    other = _cfg(
        tmp_path, max_steps=4, resume=True, model_overrides=dict(d_model=64, n_layers=1, n_heads=2)
    )
    with pytest.raises(
        ConfigError, match=r"model config differs.*d_model: checkpoint 32 vs now 64"
    ):
        Trainer(_model(other, task), other, task).fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    task = MaxSortTask(kind="max", length=4, max_value=8)
    cfg = _cfg(tmp_path, max_steps=20, checkpoint_interval=4, eval_interval=0)
    model = _model(cfg, task)
    calls = {"n": 0}

    def poison(module, args, out):  # forward passes 1..6 are fine, the 7th (step 7) yields NaN
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 7 else out

    model.unembed.register_forward_hook(poison)
    with pytest.raises(
        TrainingError,
        match=r"non-finite \(nan/inf\) at step 7.*last good checkpoint .*ckpt_000004.pt.*lower lr"
        r".*--resume --allow-change",
    ) as info:
        Trainer(model, cfg, task).fit()
    assert "\n" not in str(info.value)
    state = ckpt.load(ckpt.latest(tmp_path / "run"))
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_step = 10\n")
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        from_toml(TrainConfig, bad)
    with pytest.raises(ConfigError, match="did you mean 'd_model'"):
        TrainConfig(model_overrides={"d_modle": 3})
    with pytest.raises(ConfigError, match="schedule='cosin' is not one of"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ConfigError, match="smaller than the data's vocabulary"):
        TrainConfig(model_overrides={"vocab_size": 10}).model_config(65)


class _Regression:
    """A Task for the core that is not language modelling: y = 3 x on a linear model."""

    name = "regression"

    def __init__(self) -> None:
        self.batches = 0

    def batch(self, split, batch_size, generator):
        self.batches += 1
        x = torch.randn(batch_size, 1, generator=generator)
        return x, 3 * x

    def count(self, batch) -> int:
        return batch[0].shape[0]

    def loss(self, net, batch):
        x, y = batch
        return (net(x) - y).pow(2).sum()

    def param_groups(self, model, cfg):
        return [{"params": [model.weight], "lr_scale": 2.0}, {"params": [model.bias]}]

    def evaluate(self, trainer):
        return {"weight": float(trainer.model.weight)}


def test_core_trains_any_task_with_its_groups_and_keeps_nothing_without_out_dir(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(
        max_steps=100, batch_size=8, grad_accum=2, lr=0.1, min_lr=0.001, warmup_steps=0,
        weight_decay=0.0, eval_interval=50, out_dir="", tensorboard=False,
        progress=False, seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    task = _Regression()
    trainer = Trainer(torch.nn.Linear(1, 1), cfg, task)
    hist = trainer.fit()
    assert task.batches == 100 * 2  # grad_accum micro-batches per step
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == [pytest.approx(0.002), pytest.approx(0.001)]  # lr_scale from the task's groups
    evals = [r for r in hist if "weight" in r]
    assert [r["step"] for r in evals] == [50, 100] and evals[-1]["weight"] == pytest.approx(
        3, abs=0.05
    )
    assert "tok_s" not in hist[0]  # the task counts no tokens
    assert not list(tmp_path.iterdir())  # out_dir "": no checkpoints, metrics or plots
    with pytest.raises(ConfigError, match="out_dir"):
        Trainer(torch.nn.Linear(1, 1), cfg.replace(resume=True), _Regression()).fit()
    frozen = torch.nn.Linear(1, 1).requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        Trainer(frozen, cfg, _Regression())


class _TwoUpdates(_Regression):
    """A task with its own step (as GRPO): two optimizer updates per step, extra metrics."""

    def train_step(self, trainer):
        losses = []
        for _ in range(2):
            x, y = self.batch("train", 4, trainer.generator)
            loss = self.loss(trainer.net, trainer.shard((x, y))) / 4
            loss.backward()
            trainer.optimizer_step()
            losses.append(float(loss.detach()))
        return {"loss": sum(losses) / 2, "updates": 2.0}


def test_core_runs_a_whole_step_task_and_resumes_it_exactly(tmp_path):
    def run(steps: int, resume: bool):
        cfg = TrainConfig(
            max_steps=steps, lr=0.05, warmup_steps=0, schedule="constant", log_interval=2,
            eval_interval=0, out_dir=str(tmp_path / "run"), resume=resume, tensorboard=False,
            progress=False, seed=0,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = Trainer(torch.nn.Linear(1, 1), cfg, _TwoUpdates())
        return trainer, trainer.fit()

    trainer, hist = run(6, False)
    hist = [r for r in hist if "loss" in r]
    assert [r["step"] for r in hist] == [2, 4, 6] and all(r["updates"] == 2.0 for r in hist)
    assert trainer.optimizer.state[trainer.model.weight]["step"] == 12  # 2 updates per step
    import shutil

    shutil.rmtree(tmp_path / "run")
    run(3, False)  # constant schedule: max_steps may grow on resume
    resumed, hist2 = run(6, True)
    assert torch.equal(resumed.model.weight, trainer.model.weight)
    steps = [r["step"] for r in hist2 if "loss" in r]
    assert steps == [2, 3, 4, 6]  # the first run ended (and logged) at 3; no step repeats
    with pytest.raises(OverwriteError, match="--resume"):
        run(6, False)
