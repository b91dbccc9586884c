"""The CPU thread count of a command that computes, chosen once at its start and printed."""

from __future__ import annotations

import argparse
import os
import sys


def setup_threads(given: int = 0, source: str = "--threads") -> int:
    """Use `given` torch threads (from the user's `source` setting) or, when 0, the measured
    default (`lmlab.devices.default_threads`, which honours LMLAB_THREADS and OMP_NUM_THREADS);
    prints `threads: N (why)` on stderr, once per job (rank 0 alone under torchrun). Returns the
    count in use."""
    import torch

    from lmlab import devices
    from lmlab.errors import InputError

    if given < 0:
        raise InputError(f"{source}={given} must be >= 1 (or 0 for the measured default)")
    if given:
        n, why = given, source
    else:
        n, why = devices.default_threads()  # reads LMLAB_THREADS / OMP_NUM_THREADS first
    torch.set_num_threads(n)
    if os.environ.get("RANK", "0") == "0":
        print(f"threads: {n} ({why})", file=sys.stderr, flush=True)
    return n


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """`--threads N` (0: the measured default), for commands without a settings class."""
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (default 0: measured choice)"
    )
