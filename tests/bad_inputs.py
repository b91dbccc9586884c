"""Harness for the bad-input tables: run a case, check it failed with one clean `error:` line and
left every file that existed before byte-identical.

A case is a `BadInput`: CLI arguments (run as `python -m lmlab ...` in a subprocess, so a traceback
would show) or an API callable, a setup that writes the files the case needs into a folder, and a
regex the one error line must match. Tables in several test files use `check_bad_input`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BadInput:
    """One hostile input: `argv` for the CLI or `call(folder)` for the API (exactly one)."""

    id: str
    match: str  # regex the error line must contain (case-insensitive)
    argv: list[str] | None = None  # lmlab arguments; "{d}" is replaced by the case's folder
    call: Callable[[Path], object] | None = None
    setup: Callable[[Path], None] | None = None
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)

    def param(self):
        return pytest.param(self, id=self.id)


def folder_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], cwd: Path, stdin: bytes | None = None, env: dict | None = None):
    """`python -m lmlab ARGV` in `cwd`; returns the CompletedProcess (text stdout/stderr)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmlab", *argv],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=300,
    )


def check_bad_input(case: BadInput, folder: Path) -> None:
    """Run `case` in `folder`: non-zero exit / an LmlabError with one `error:` line, files unchanged."""
    import re

    from lmlab.errors import LmlabError

    folder.mkdir(parents=True, exist_ok=True)
    if case.setup:
        case.setup(folder)
    before = folder_hashes(folder)
    if case.argv is not None:
        argv = [a.replace("{d}", str(folder)) for a in case.argv]
        r = run_cli(argv, folder, case.stdin, case.env)
        err = r.stderr.decode(errors="replace")
        assert r.returncode != 0, f"exit 0 for {argv}; stderr: {err[-2000:]}"
        assert "Traceback" not in err, err[-4000:]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1, f"want one line starting 'error:', got:\n{err[-2000:]}"
        message = errors[0]
    else:
        assert case.call is not None
        with pytest.raises(LmlabError) as info:
            case.call(folder)
        message = f"error: {info.value}"
        assert "\n" not in message.strip(), message
    assert re.search(case.match, message, re.IGNORECASE), f"{message!r} !~ {case.match!r}"
    after = folder_hashes(folder)
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, f"pre-existing files changed or removed: {sorted(changed)}"
