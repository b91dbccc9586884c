"""Where lmlab finds shared data sets and caches (overridable with environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Folder with shared data sets: `$LMLAB_DATA`, else `../shared/data` beside the repo."""
    env = os.environ.get("LMLAB_DATA")
    return Path(env) if env else _REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Folder for downloads and assembled model files: `$LMLAB_CACHE`, else `~/.cache/lmlab`."""
    env = os.environ.get("LMLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lmlab"
