"""Device names from flags and configs, checked against what this machine has, and the default
number of torch threads."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from lmlab.errors import DeviceError, InputError


def available_devices() -> list[str]:
    """Devices usable here: cpu, then cuda:N for each GPU, then mps when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; `DeviceError` naming the available ones when it is not here."""
    here = available_devices()
    fix = f"use one of: {', '.join(here)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {str(device)!r} is not a torch device — {fix}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r}: CUDA is not available here — {fix}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) — {fix}"
            )
        return dev
    if dev.type == "mps" and "mps" in here:
        return dev
    raise DeviceError(f"device {str(device)!r} is not available here — {fix}")


# ---------------------------------------------------------------------------- torch threads

THREADS_ENV = "LMLAB_THREADS"
SYS_CPU = Path("/sys/devices/system/cpu")  # per-CPU topology (core_id, physical_package_id)
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")  # "max 100000" or "<quota> <period>"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")  # cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us
BUSY_MARGIN = 0.5  # cores counted free only when the 1-minute load leaves this much idle


def default_threads() -> tuple[int, str]:
    """Torch threads for this process and why: `LMLAB_THREADS`, else `OMP_NUM_THREADS`, else the
    physical cores this process may use (affinity, SMT siblings counted once, cgroup CPU quota),
    split between torchrun's local ranks, and fewer when the 1-minute load average says other
    work already occupies them.

    On a loaded machine extra threads wait on each other at every parallel region
    (docs/BENCHMARKS.md, "Torch threads"), so a busy 2-core machine gets one thread.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise InputError(
                f"{THREADS_ENV}={raw!r} is not a thread count; set a whole number >= 1 or unset it"
            )
        return int(raw), f"{THREADS_ENV}={raw}"
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:  # OpenMP's own syntax; anything else OpenMP ignores too
        return int(omp), f"OMP_NUM_THREADS={omp}"
    cpus = _usable_cpus()
    cores = _physical_cores(cpus)
    n, why = cores, f"{cores} physical core{'s' * (cores != 1)}"
    quota = _cgroup_quota()
    if quota is not None and quota < n:
        n, why = max(1, math.floor(quota)), f"cgroup CPU quota {quota:g}"
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "")  # torchrun: processes sharing this machine
    if ranks.isdigit() and int(ranks) > 1 and n > 1:
        n, why = max(1, n // int(ranks)), f"{why} shared by {ranks} local ranks"
    load = _load1()
    total = os.cpu_count() or len(cpus)
    free = math.floor(total - load + BUSY_MARGIN)
    if load > 0 and free < n:
        n, why = max(1, free), f"machine busy: load {load:.1f} on {total} CPUs"
    return n, why


def _usable_cpus() -> list[int]:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _physical_cores(cpus: list[int]) -> int:
    """Distinct (package, core) pairs among `cpus` (SMT siblings count once); len(cpus) when the
    topology cannot be read."""
    cores = set()
    for c in cpus:
        topo = SYS_CPU / f"cpu{c}" / "topology"
        try:
            pkg = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((pkg, core))
    return max(1, len(cores))


def _cgroup_quota() -> float | None:
    """CPUs the cgroup CPU quota allows (e.g. 1.5), None when unlimited or unreadable."""
    try:
        quota, period = CGROUP_V2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((CGROUP_V1 / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP_V1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _load1() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
