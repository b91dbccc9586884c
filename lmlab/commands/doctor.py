"""`lmlab doctor`: versions, CPU features and which optional CPU kernels lmlab uses here."""

from __future__ import annotations

import argparse
import os
import platform
import sys

HELP = "show versions, CPU features and which optional CPU kernels lmlab uses here"


# Environment variables with which torch / oneDNN use fewer CPU features than the CPU has.
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def main(args: argparse.Namespace) -> int:
    import torch

    import lmlab
    from lmlab import kernels
    from lmlab.errors import LmlabError

    print(
        f"lmlab {lmlab.__version__}, torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"cpu: {kernels.cpu_model()} ({platform.machine()})")
    have = kernels.cpu_features()
    missing = [f for f in kernels.FEATURES if f not in have]
    print(f"cpu features: {' '.join(have) or 'none of those checked'}")
    print(f"cpu features missing: {' '.join(missing) or 'none'}")
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    print(f"torch: {capability} kernels, {torch.get_num_threads()} threads")
    try:
        plain = kernels.forced_plain()
        avail, why = kernels.available(), kernels.reasons()
    except LmlabError as e:
        print(f"lmlab doctor: error: {e}", file=sys.stderr)
        return 2
    off = os.environ.get(kernels.ENV, "").strip() or "unset"
    print(f"{kernels.ENV}: " + ("plain (every optional kernel forced off)" if plain else off))
    caps = [f"{k}={os.environ[k]}" for k in CAPS if os.environ.get(k)]
    if caps:
        print(f"ISA caps set: {' '.join(caps)}")
    print("kernels:")
    for name in kernels.NAMES:
        if getattr(avail, name):
            print(f"  {name:17s} used: {kernels.USES[name]}")
        else:
            print(f"  {name:17s} not used ({why[name]}); instead: {kernels.FALLBACKS[name]}")
    return 0
