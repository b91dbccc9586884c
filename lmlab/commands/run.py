"""`lmlab run RECIPE [--key=value ...]`: run an experiment and write its report folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from lmlab import recipes
from lmlab.runs import RunDir
from lmlab.settings import from_toml

HELP = "run a recipe: lmlab run NAME [--config FILE.toml] [--key=value ...] [--train.KEY=value ...]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe name (see `lmlab list`)")
    p.add_argument("--config", default=None, help="TOML file with recipe settings")
    p.add_argument("--out", default="runs", help="root folder for run folders (default: runs)")
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved settings and exit"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="--key=value (or --key value) recipe settings; --train.KEY=value the recipe's training "
        "settings (TrainConfig), e.g. --train.lr=3e-4 --train.max_steps=100; see --show-config",
    )


def main(args: argparse.Namespace) -> int:
    recipe = recipes.get(args.recipe)
    cfg = from_toml(recipe.Config, args.config, args.overrides)
    if args.show_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    if int(os.environ.get("RANK", "0")):  # under torchrun only rank 0 writes the run folder
        with tempfile.TemporaryDirectory(prefix="lmlab-rank-") as scratch:
            recipe.run(cfg, RunDir(Path(scratch)))
        return 0
    out = RunDir.create(args.recipe, args.out)
    out.write_config(cfg)
    print(f"lmlab run {args.recipe}: writing to {out.path}")
    metrics = recipe.run(cfg, out)
    out.write_metrics(metrics)
    print(f"report: {out.file('report.md')}")
    return 0
