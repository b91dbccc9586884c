"""Shared fixtures: locate offline data and packaged models, skip with a reason when absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.paths import data_dir


@pytest.fixture
def one_thread(request):
    """One torch thread for small ops (no thread spinning; several times faster on a shared 2-core CPU).

    Tests marked slow that run real 135M models keep every thread. Use it per file with
    `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
