"""`lmlab run RECIPE [--key=value ...]`: run an experiment and write its report folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmlab import recipes
from lmlab.commands._threads import setup_threads
from lmlab.runs import RunDir
from lmlab.settings import field_type, from_toml

HELP = "run a recipe: lmlab run NAME [--config FILE.toml] [--key value ...] [--train.KEY value ...]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help=f"recipe name (see `lmlab list`): {', '.join(recipes.names())}")
    p.add_argument("--config", default=None, help="TOML file with recipe settings")
    p.add_argument("--out", default="runs", help="root folder for run folders (default: runs)")
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved settings and exit"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="--key value (or --key=value) recipe settings; --train.KEY value the recipe's "
        "training settings (TrainConfig), also written --KEY when the recipe has no KEY of its "
        "own, e.g. --lr 3e-4 --max-steps 100; a boolean alone means true (--flag=false: false); "
        "see --show-config",
    )


def setting_type(key: str, words: list[str]) -> Any:
    """The type of setting `--key` of the recipe among the command's `words` (for `lmlab.cli`)."""
    name = next((w for w in words if w in recipes.names()), None)
    return None if name is None else field_type(recipes.get(name).Config, key)


def build_config(args: argparse.Namespace) -> Any:
    """The recipe's resolved settings: defaults, then --config, then the --key settings."""
    return from_toml(recipes.get(args.recipe).Config, args.config, args.overrides)


def threads_setting(cfg: Any) -> int:
    """The thread count the recipe's settings ask for (`threads`, or `train.threads`), 0 if none."""
    values = dataclasses.asdict(cfg)
    found = [values.get("threads")] + [
        v.get("threads") for v in values.values() if isinstance(v, dict)
    ]
    return next((n for n in found if isinstance(n, int) and n > 0), 0)


def main(args: argparse.Namespace) -> int:
    recipe = recipes.get(args.recipe)
    cfg = build_config(args)
    if args.show_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    setup_threads(threads_setting(cfg), "the recipe's threads setting")
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
