"""`lmlab list`: the recipes and presets."""

from __future__ import annotations

import argparse

from lmlab import recipes
from lmlab.families import PRESETS

HELP = "list the recipes (lmlab run NAME) and model presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", action="store_true", help="list model presets instead of recipes")


def main(args: argparse.Namespace) -> int:
    if args.presets:
        for name in sorted(PRESETS):
            print(name)
        return 0
    for name in recipes.names():
        print(f"{name:28s} {recipes.get(name).SUMMARY}")
    return 0
