"""Run folders (`runs/<name>/<timestamp>/`) and the atomic writers every lmlab save goes through.

Temporaries are named `.lmlab-tmp-<pid>-<name>` (a folder being replaced: `.lmlab-old-<pid>-<name>`)
in the folder they belong to, so a killed writer leaves nothing that looks like a result, and the
next writer there recognizes and removes them (`clean_tmp`, `recover_folder`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import OverwriteError
from lmlab.settings import to_toml

TMP_PREFIX = ".lmlab-tmp-"  # a file or folder being written
OLD_PREFIX = ".lmlab-old-"  # a folder being replaced, kept until the new one is in place


def tmp_name(name: str, prefix: str = TMP_PREFIX) -> str:
    """The temporary name for `name` in this process: `.lmlab-tmp-<pid>-<name>`."""
    return f"{prefix}{os.getpid()}-{name}"


def _leftovers(folder: Path, prefix: str, name: str | None = None) -> list[Path]:
    """Entries of `folder` named `<prefix><pid>-<name>` (any name when `name` is None)."""
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"\d+-" + (re.escape(name) if name else ".+"))
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_tmp(folder: str | Path, name: str | None = None) -> list[str]:
    """Remove the temporaries killed lmlab writers left in `folder`; returns their names."""
    found = _leftovers(Path(folder), TMP_PREFIX, name)
    for p in found:
        _remove(p)
    return [p.name for p in found]


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_files(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def atomic_write(path: str | Path, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write a temporary file in the same folder, fsync, rename: readers never see half a file.

    With `overwrite=False` an existing `path` is an `OverwriteError` (checked before writing).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OverwriteError(
            f"{path} exists; refusing to overwrite it: choose a new path or pass overwrite=True"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def commit_files(
    stage: Path, folder: Path, *, remove: Iterable[Path] = (), last: str = "config.json"
) -> list[str]:
    """Move the files of `stage` into `folder`, one rename each; returns their names.

    `last` (the file that makes a folder a model) is taken away first and put in last, so a kill
    in between leaves a folder without it rather than new weights beside an old config.
    """
    _fsync_files(stage)
    names = sorted(p.name for p in stage.iterdir())
    if last in names:
        (folder / last).unlink(missing_ok=True)
    for p in remove:
        _remove(p)
    for name in sorted(names, key=lambda n: n == last):
        os.replace(stage / name, folder / name)
    fsync_dir(folder)
    return names


def recover_folder(target: str | Path) -> None:
    """Finish what a killed `replace_folder` left: restore a moved-away `target`, drop temps."""
    target = Path(target)
    old = _leftovers(target.parent, OLD_PREFIX, target.name)
    if old and not target.exists():
        old.pop().rename(target)  # the swap stopped between its two renames: put the old one back
    for p in old + _leftovers(target.parent, TMP_PREFIX, target.name):
        _remove(p)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def replace_folder(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `target` to fill; on success it becomes `target` in one rename.

    An existing `target` is an `OverwriteError` unless `overwrite=True`; then its entries that the
    new folder does not have (a README, notes) are carried over unchanged (hard links), the old
    folder is renamed away, the new one renamed in, and the old one deleted.
    """
    target = Path(target)
    recover_folder(target)
    if target.exists() and not overwrite:
        raise OverwriteError(
            f"{target} exists; refusing to overwrite it: choose a new path or pass overwrite=True"
        )
    if target.exists() and not target.is_dir():
        raise OverwriteError(f"{target} is a file, not a folder; choose a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.with_name(tmp_name(target.name))
    stage.mkdir()
    try:
        yield stage
        if target.exists():
            for p in target.iterdir():
                if not (stage / p.name).exists():
                    if p.is_dir() and not p.is_symlink():
                        shutil.copytree(
                            p, stage / p.name, symlinks=True, copy_function=_link_or_copy
                        )
                    else:
                        _link_or_copy(str(p), str(stage / p.name))
        _fsync_files(stage)
        old = target.with_name(tmp_name(target.name, OLD_PREFIX))
        if target.exists():
            target.rename(old)
        stage.rename(target)
        fsync_dir(target.parent)
        _remove(old)
    finally:
        _remove(stage)


@dataclass
class RunDir:
    """The folder a recipe or training run writes into."""

    path: Path

    @classmethod
    def create(cls, name: str, root: str | Path = "runs") -> RunDir:
        """A new timestamped folder `root/name/YYYYmmdd-HHMMSS`."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / name / stamp
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / name / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return cls(path)

    def file(self, name: str) -> Path:
        """Path of a file inside the run folder."""
        return self.path / name

    def write_config(self, cfg: Any) -> None:
        atomic_write(self.file("config.toml"), to_toml(cfg))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write(self.file("metrics.json"), json.dumps(metrics, indent=2, default=float) + "\n")

    def write_report(self, text: str) -> None:
        atomic_write(self.file("report.md"), text.rstrip() + "\n")
