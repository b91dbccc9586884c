"""Configs compose: recipes nest `train: TrainConfig`, `--train.lr=...` reaches the trainer, TOML
`[train]` tables merge into the recipe's defaults, and bad nested keys give one-line errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from lmlab import recipes
from lmlab.cli import build_parser, join_values, main
from lmlab.config import ConfigError
from lmlab.recipes import _gpu_pretrain, addition, shakespeare_char
from lmlab.settings import from_toml, parse_overrides, to_toml
from lmlab.train import TrainConfig


class Reached(Exception):
    """Raised by a stand-in trainer once it has seen the settings it was given."""


def _catch(seen: list):
    def fake(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Reached

    return fake


def test_train_lr_override_reaches_the_trainer_of_three_recipes(tmp_path, monkeypatch):
    """The same code path as a user's `lmlab run NAME --train.lr=...`, up to the trainer call."""
    seen: list = []
    monkeypatch.setattr(shakespeare_char, "run_training", _catch(seen))
    monkeypatch.setattr(_gpu_pretrain, "train", _catch(seen))
    monkeypatch.setattr(addition, "Trainer", lambda model, cfg, *a: _catch(seen)(cfg))
    monkeypatch.setattr(shakespeare_char, "prepare_shakespeare_char", _fake_chars)
    monkeypatch.setattr(shakespeare_char, "TokenData", lambda *a: None)
    monkeypatch.setattr(recipes.get("ablations"), "prepare_shakespeare_char", _fake_chars)
    monkeypatch.setattr(recipes.get("ablations"), "TokenData", lambda *a: None)
    monkeypatch.setattr(_gpu_pretrain.torch.cuda, "is_available", lambda: True)
    runs = {
        "addition": ["--train.lr=0.0123", "--train.min_lr", "0.001"],
        "gpt2-124m": ["--train.lr", "0.0123", f"--train.data={tmp_path}"],
        "ablations": ["--train.lr=0.0123", "--train.min_lr=0.001", "--only=RoPE"],
        "shakespeare-char": ["--train.lr=0.0123", "--train.max_steps=7"],
    }
    for name, flags in runs.items():
        with pytest.raises(Reached):
            main(["run", name, *flags, "--out", str(tmp_path / "runs")])
        cfg = seen[-1]
        assert isinstance(cfg, TrainConfig) and cfg.lr == 0.0123, (name, cfg)
    assert len(seen) == len(runs)
    assert seen[-1].max_steps == 7 and seen[-1].min_lr == 3e-4  # other defaults kept
    assert seen[1].model == "gpt2" and seen[1].model_overrides == {"vocab_size": 50304}
    assert seen[2].model_overrides["positions"] == "rope"  # the variant on top of the defaults


def _fake_chars():
    class Vocab:
        vocab_size = 65

    return None, Vocab()


def test_real_tiny_run_records_the_overridden_lr(tmp_path, capsys):
    """`lmlab run addition --train.lr=...`: config.toml holds it, the trainer's metrics used it."""
    args = ["run", "addition", "--train.lr=0.0234", "--train.min_lr=0.0234", "--train.max_steps=3",
            "--train.warmup_steps=0", "--train.schedule=constant", "--train.log_interval=1",
            "--train.eval_interval=3", "--train.progress=false", "--digits=2", "--n_test=20",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    (run,) = (tmp_path / "addition").iterdir()
    text = (run / "config.toml").read_text()
    assert "[train]\n" in text and "lr = 0.0234\n" in text
    cfg = from_toml(addition.Config, run / "config.toml")  # the written config reads back
    assert cfg.train.lr == 0.0234 and cfg.digits == 2 and cfg.train.max_steps == 3
    records = [
        json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs and all(lr == pytest.approx(0.0234) for lr in lrs)


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_config_round_trips_through_toml(name, tmp_path):
    """A run's config.toml fed back with --config gives the same settings."""
    cls = recipes.get(name).Config
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cls()))
    assert from_toml(cls, path) == cls()


def test_toml_train_table_merges_into_the_recipe_defaults(tmp_path, capsys):
    path = tmp_path / "add.toml"
    path.write_text(
        "digits = 2\n[train]\nlr = 5e-3\nmax_steps = 10\n[train.model_overrides]\nn_layers = 3\n"
    )
    cfg = from_toml(addition.Config, path, ["--train.max_steps=20"])
    base = addition.Config().train
    assert cfg.digits == 2 and cfg.train.lr == 5e-3 and cfg.train.max_steps == 20
    assert cfg.train.model_overrides == {**base.model_overrides, "n_layers": 3}
    assert cfg.train.batch_size == base.batch_size == 128  # untouched recipe default
    assert main(["run", "addition", "--config", str(path), "--show-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["train"]["lr"] == 5e-3 and shown["train"]["model_overrides"]["n_layers"] == 3


def test_lmlab_train_takes_both_spellings(capsys):
    shown = []
    for flag in ("--lr=0.02", "--train.lr=0.02", "--train.lr 0.02"):
        assert main(["train", "defaults", *flag.split(), "--show-config"]) == 0
        shown.append(json.loads(capsys.readouterr().out))
    assert shown[0] == shown[1] == shown[2] and shown[0]["lr"] == 0.02


def test_key_space_value_is_joined_only_where_unambiguous():
    p = build_parser()
    assert join_values(["run", "addition", "--train.lr", "-1e-3", "--digits", "2"], p) == [
        "run", "addition", "--train.lr=-1e-3", "--digits=2"]  # fmt: skip
    # a bare flag before the command's positional, or followed by another flag, stays bare
    assert join_values(["train", "--resume", "x.toml"], p) == ["train", "--resume", "x.toml"]
    assert join_values(["train", "x.toml", "--resume", "--lr=1"], p)[2] == "--resume"
    # a declared option keeps its own value
    assert join_values(["run", "addition", "--out", "r"], p) == ["run", "addition", "--out", "r"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train.lrr=3"], r"unknown config key 'train\.lrr'.*did you mean '--train\.lr'\?"),
        (["--trian.lr=3"], r"unknown config key 'trian'.*did you mean '--train\.lr'\?"),
        (["--lr=abc"], r"train\.lr='abc' is not a number"),  # flat name of train.lr
        (["--train.lr=abc"], r"train\.lr='abc' is not a number"),
        (["--train.max_steps=1.5"], r"train\.max_steps=1\.5 is not a whole number"),
        (["--train=3"], r"train is a group of settings.*--train\.\w+=VALUE"),
        (["--digits.x=3"], r"digits is a single value, not a table; write it as --digits=VALUE"),
        (["--train.max_steps"], r"has no value; write it as --train\.max_steps=VALUE"),
        (["--train.schedule=cosin"], r"schedule='cosin' is not one of"),
    ],
)
def test_bad_nested_flags_give_one_line_errors(flags, message, capsys):
    assert main(["run", "addition", *flags, "--show-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[train]\nlrr = 3\n", r"unknown config key 'train\.lrr' in .*did you mean 'train\.lr'"),
        ("lr = 3\n", r"unknown config key 'lr' in .*did you mean 'train\.lr'"),
        ('[train]\nlr = "x"\n', r"train\.lr = 'x' in .* must be a float \(default: train\.lr"),
        ("train = 3\n", r"train = 3 in .* must be a table of settings: write \[train\]"),
    ],
)
def test_bad_toml_train_tables(toml, message, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        from_toml(addition.Config, path)
    assert "\n" not in str(info.value)


def test_overrides_parse_into_nested_tables():
    got = parse_overrides(addition.Config, ["--train.lr=1e-2", "train.model_overrides.d_model=32"])
    assert got == {"train": {"lr": 1e-2, "model_overrides": {"d_model": 32}}}
    # dotted table keys take TOML literals; a bare word stays a string
    got = parse_overrides(TrainConfig, ["--data_options.digits=2", "--data_options.kind=max"])
    assert got == {"data_options": {"digits": 2, "kind": "max"}}


def test_recipes_that_train_nest_the_train_config():
    """Each knob has one name: recipes on the shared training core carry no copies of its fields."""
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in ("addition", "shakespeare-char", "ablations", "muon-vs-adamw",
                 "pretrain-then-finetune", "gpt2-124m", "gpt-oss-588m", "grpo-addition",
                 "grpo-arithmetic", "max-circuit", "trigram", "induction-formation"):  # fmt: skip
        fields = {f.name for f in dataclasses.fields(recipes.get(name).Config)}
        if name == "grpo-arithmetic":  # `model`: the pretrained model to load, as in GRPOConfig
            fields.remove("model")
        assert "train" in fields and not fields & shared, (name, fields & shared)


def test_run_under_torchrun_writes_one_run_folder(tmp_path, monkeypatch):
    """Ranks > 0 of `torchrun -m lmlab run ...` run the recipe in a scratch folder they delete;
    only rank 0 creates runs/NAME/<time>/."""
    seen = []
    monkeypatch.setattr(addition, "run", lambda cfg, out: seen.append(out.path) or {"x": 1})
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "addition", "--train.lr=0.01", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "addition").exists() and not seen[0].exists()
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "addition", "--train.lr=0.01", "--out", str(tmp_path)]) == 0
    assert seen[1].parent == tmp_path / "addition" and (seen[1] / "metrics.json").is_file()
