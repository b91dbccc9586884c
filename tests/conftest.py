"""Shared fixtures: locate offline data and packaged models, skip with a reason when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.paths import data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (`$LMLAB_DATA` or `../shared/data`); skips when it is missing."""
    d = data_dir()
    if not d.is_dir():
        pytest.skip(
            f"shared data folder {d} not found; set LMLAB_DATA to the folder with tinyshakespeare.txt"
        )
    return d


def data_file(shared: Path, name: str) -> Path:
    """A file in the shared data folder, or skip the test naming what is missing."""
    p = shared / name
    if not p.is_file():
        pytest.skip(f"{p} not found; put {name} in $LMLAB_DATA")
    return p
