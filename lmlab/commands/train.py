"""`lmlab train CONFIG.toml [--key=value ...]`: train a model from scratch (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import typing

import torch

from lmlab.config import Config, check_keys
from lmlab.settings import coerce, from_toml

HELP = (
    "train a model from scratch: lmlab train CONFIG.toml [--key=value ...] [--model.FIELD=value] "
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
        help="--key=value TrainConfig fields; --model.FIELD=value model fields; --data.KEY=value task "
        "options; --resume continues from the newest good checkpoint in out_dir (ckpt_*.pt)",
    )


def split_overrides(items: list[str]) -> tuple[list[str], dict, dict]:
    """Separate `--model.X=v` and `--data.X=v` from plain TrainConfig overrides (bare flags mean true)."""
    plain, model, data = [], {}, {}
    hints = typing.get_type_hints(Config)
    for item in items:
        key, sep, raw = item.removeprefix("--").partition("=")
        if key.startswith("train."):  # recipes' spelling of the same TrainConfig field
            key, item = key.removeprefix("train."), item.replace("train.", "", 1)
        if not sep:
            item, raw = f"{item}=true", "true"
        if key.startswith("model."):
            field = key.removeprefix("model.").replace("-", "_")
            check_keys({field: None}, Config)
            model[field] = coerce(raw, hints[field], field)
        elif key.startswith("data."):
            data[key.removeprefix("data.")] = (
                json.loads(raw) if raw[:1].isdigit() or raw in ("true", "false") else raw
            )
        else:
            plain.append(item)
    return plain, model, data


def main(args: argparse.Namespace) -> int:
    from lmlab.train.run import train
    from lmlab.train.sample import sample

    plain, model_over, data_over = split_overrides(args.overrides)
    cfg = from_toml(_TrainConfig(), None if args.config == "defaults" else args.config, plain)
    cfg.model_overrides = {**cfg.model_overrides, **model_over}
    cfg.data_options = {**cfg.data_options, **data_over}
    cfg.allow_change += [n.replace("-", "_") for a in args.allow_change for n in a.split(",") if n]
    cfg.validate()
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
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
