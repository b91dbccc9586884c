"""Device names from flags and configs, checked against what this machine has."""

from __future__ import annotations

import torch

from lmlab.errors import DeviceError


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
