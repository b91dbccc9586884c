"""Writing a model folder without touching what the user keeps there.

Export and `save_checkpoint` write only their own files: a folder that already holds anything is
refused unless `overwrite=True`, and even then only the files the writer produces (plus stale
weight shards of a previous model, which loaders would otherwise mix in) are replaced; a README,
eval results or notes stay byte-identical. Files are staged in `.lmlab-tmp-<pid>-model/` inside the
folder and renamed into place one by one, `config.json` last; a killed writer's leftovers are
removed by the next write into that folder.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmlab.errors import OverwriteError
from lmlab.runs import TMP_PREFIX, clean_tmp, commit_files, tmp_name

# weight files of a model in the folder: replaced as a whole, so old shards never linger
_WEIGHTS = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")
# temporaries of lmlab versions that staged a sibling folder (`.out.tmp1234`, `.out.old1234`)
_LEGACY = r"\.{name}\.(tmp|old)\d+"


def check_target(folder: str | Path, *, overwrite: bool = False) -> Path:
    """Raise `OverwriteError` unless `folder` is new, empty (but for lmlab temporaries) or overwrite."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OverwriteError(
            f"{folder} is a file; a model is written as a folder: choose a new output folder"
        )
    if overwrite or not folder.is_dir():
        return folder
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(TMP_PREFIX))
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise OverwriteError(
            f"{folder} is not empty ({_count(others)}: {shown}); a model is written only into "
            "a new or empty folder: choose another output folder, or pass --overwrite "
            "(overwrite=True) to replace just the files it writes and keep every other file"
        )
    return folder


def _count(names: list[str]) -> str:
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"


def _clean_legacy(folder: Path) -> None:
    """Remove sibling temporaries that older lmlab versions left when killed mid-export."""
    pattern = re.compile(_LEGACY.format(name=re.escape(folder.name)))
    if folder.parent.is_dir():
        for p in folder.parent.iterdir():
            if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


@contextmanager
def model_files(folder: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files replace their namesakes in `folder`."""
    folder = check_target(folder, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    clean_tmp(folder)
    _clean_legacy(folder)
    stage = folder / tmp_name("model")
    stage.mkdir()
    try:
        yield stage
        new = {p.name for p in stage.iterdir()}
        stale = [
            p
            for p in folder.iterdir()
            if p.is_file() and _WEIGHTS.fullmatch(p.name) and p.name not in new
        ]
        commit_files(stage, folder, remove=stale)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
