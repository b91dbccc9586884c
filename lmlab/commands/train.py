"""`lmlab train CONFIG.toml [--key=value ...]`: train a model from scratch (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import typing

import torch

from lmlab.config import Config, check_keys
from lmlab.settings import coerce, from_toml

HELP = "train a model from scratch: lmlab train CONFIG.toml [--key=value ...] [--model.FIELD=value] [--resume]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help='TOML file of TrainConfig fields (see configs/), or "defaults"')
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved settings and exit"
    )
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="--key=value TrainConfig fields; --model.FIELD=value model fields; --data.KEY=value task "
        "options; --resume continues from out_dir/ckpt.pt",
    )


def split_overrides(items: list[str]) -> tuple[list[str], dict, dict]:
    """Separate `--model.X=v` and `--data.X=v` from plain TrainConfig overrides (bare flags mean true)."""
    plain, model, data = [], {}, {}
    hints = typing.get_type_hints(Config)
    for item in items:
        key, sep, raw = item.removeprefix("--").partition("=")
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
    from lmlab.data.sources import make_data
    from lmlab.model import Transformer
    from lmlab.train import Trainer, distributed
    from lmlab.train.sample import sample

    plain, model_over, data_over = split_overrides(args.overrides)
    cfg = from_toml(_TrainConfig(), None if args.config == "defaults" else args.config, plain)
    cfg.model_overrides = {**cfg.model_overrides, **model_over}
    cfg.data_options = {**cfg.data_options, **data_over}
    cfg.validate()
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    src = make_data(cfg.data, cfg.block_size, cfg.data_options)
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(src.vocab_size, src.block_size))
    trainer = Trainer(model, cfg, src.data)
    if trainer.dist.main:
        print(
            f"lmlab train: {model.cfg.name} ({sum(p.numel() for p in model.parameters()):,} parameters), "
            f"data {cfg.data}, {trainer.dist.world} process(es) on {trainer.dist.device}, out_dir {cfg.out_dir}"
        )
    try:
        history = trainer.fit()
    finally:
        distributed.cleanup()
    if not trainer.dist.main:
        return 0
    evals = [r for r in history if "val_loss" in r]
    if evals:
        print(f"step {evals[-1]['step']}: val loss {evals[-1]['val_loss']:.4f}")
    if src.decode is not None and cfg.data == "shakespeare-char":
        g = torch.Generator().manual_seed(cfg.seed)
        print("sample:\n" + src.decode(sample(model, [0], 300, generator=g)))
    print(f"checkpoint: {trainer.ckpt_path}; metrics: {trainer.out_dir / 'metrics.jsonl'}")
    return 0


def _TrainConfig() -> type:
    from lmlab.train.config import TrainConfig

    return TrainConfig
