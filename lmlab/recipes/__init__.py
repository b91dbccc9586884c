"""Recipes: one module per experiment from the seeds.

A recipe module defines `SUMMARY` (one line), a dataclass `Config` whose defaults are the
CPU defaults, and `run(cfg, out: RunDir) -> dict` that returns the metrics and writes plots and
`report.md` into `out`. The file name with `_` -> `-` is the recipe name (`lmlab run NAME`).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from lmlab.config import ConfigError


def names() -> list[str]:
    """All recipe names, sorted."""
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_")
    )


def summaries() -> dict[str, str]:
    """Each recipe's `SUMMARY`, read from its source without importing it (so `lmlab list` and
    `lmlab run --help` do not load torch); a summary that is not a plain string is imported."""
    return {name: _summary(name) for name in names()}


def _summary(name: str) -> str:
    path = Path(__file__).with_name(f"{name.replace('-', '_')}.py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "SUMMARY" and node.value is not None:
            try:
                return str(ast.literal_eval(node.value))
            except ValueError:
                break
    return str(getattr(get(name), "SUMMARY", ""))


def get(name: str) -> ModuleType:
    """The recipe module for `name`; unknown names suggest near ones."""
    known = names()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"unknown recipe {name!r}.{hint} Run `lmlab list` to see all: {', '.join(known)}"
        )
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
