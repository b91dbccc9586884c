"""`lmlab train CONFIG.toml [--key=value ...]`: train a model from scratch (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

from lmlab.commands._threads import setup_threads
from lmlab.config import Config, ConfigError, check_keys
from lmlab.settings import coerce, field_type, from_toml

HELP = (
    "train a model from scratch: lmlab train CONFIG.toml [--key value ...] [--model.FIELD value] "
    "[--resume [--allow-change SETTING]]"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help='TOML file of TrainConfig fields (see configs/), or "defaults"')
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved settings and exit"
    )
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="SETTING",
        help="with --resume: let this setting differ from the checkpoint's (repeatable or "
        "comma-separated, e.g. --allow-change lr,batch_size); other changes are refused",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="--key value (or --key=value) TrainConfig fields; --model.FIELD value model fields; "
        "--data.KEY value task options; a boolean alone means true (--flag=false: false); "
        "--resume continues from the newest good checkpoint in out_dir (ckpt_*.pt)",
    )


def setting_type(key: str, words: list[str]) -> Any:
    """The type of setting `--key` (a TrainConfig field, `model.FIELD`, `data.KEY`), for `lmlab.cli`."""
    key = key.replace("-", "_").removeprefix("train.")
    if key.startswith("model."):
        return typing.get_type_hints(Config).get(key.removeprefix("model."))
    if key.startswith("data."):
        return Any
    return field_type(_TrainConfig(), key)


def split_overrides(items: list[str]) -> tuple[list[str], dict, dict]:
    """Separate `--model.X=v` and `--data.X=v` from plain TrainConfig overrides (a bare boolean
    `--model.X` means true; any other bare key is refused with the fix)."""
    plain, model, data = [], {}, {}
    hints = typing.get_type_hints(Config)
    for item in items:
        key, sep, raw = item.removeprefix("--").partition("=")
        if key.startswith("train."):  # recipes' spelling of the same TrainConfig field
            key, item = key.removeprefix("train."), item.replace("train.", "", 1)
        if key.startswith("model."):
            field = key.removeprefix("model.").replace("-", "_")
            check_keys({field: None}, Config)
            if not sep and hints[field] is not bool:
                raise ConfigError(f"--{key} has no value; write it as --{key} VALUE")
            model[field] = coerce(raw if sep else "true", hints[field], field)
        elif key.startswith("data."):
            if not sep:
                raise ConfigError(f"--{key} has no value; write it as --{key} VALUE")
            data[key.removeprefix("data.")] = (
                json.loads(raw) if raw[:1].isdigit() or raw in ("true", "false") else raw
            )
        else:
            plain.append(item)
    return plain, model, data


def build_config(args: argparse.Namespace) -> Any:
    """The checked `TrainConfig`: defaults, then the TOML file, then the --key settings."""
    plain, model_over, data_over = split_overrides(args.overrides)
    cfg = from_toml(_TrainConfig(), None if args.config == "defaults" else args.config, plain)
    cfg.model_overrides = {**cfg.model_overrides, **model_over}
    cfg.data_options = {**cfg.data_options, **data_over}
    cfg.allow_change += [n.replace("-", "_") for a in args.allow_change for n in a.split(",") if n]
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    import torch

    from lmlab.train.run import train
    from lmlab.train.sample import sample

    cfg = build_config(args)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    setup_threads(cfg.threads, "--threads")
    res = train(cfg)
    if not res.trainer.dist.main:
        return 0
    if res.final:
        print(f"step {res.final['step']}: val loss {res.final['val_loss']:.4f}")
    if cfg.data == "shakespeare-char" and res.source.decode is not None:
        ids = sample(res.model, [0], 300, generator=torch.Generator().manual_seed(cfg.seed))
        print("sample:\n" + res.source.decode(ids))
    print(f"checkpoint: {res.trainer.ckpt_path}; metrics: {res.trainer.out_dir / 'metrics.jsonl'}")
    return 0


def _TrainConfig() -> type:
    from lmlab.train.config import TrainConfig

    return TrainConfig
