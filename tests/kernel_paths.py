"""Run a test on an optional CPU kernel's fast path, or on its fallback forced by LMLAB_KERNELS.

Tests of a kernel-dependent path take `path` in PATHS: "fast" skips (naming why, e.g. the missing
CPU feature) where lmlab does not use the kernel here; "fallback" runs everywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from lmlab import kernels

PATHS = ("fast", "fallback")

# What torch and oneDNN may use capped to an AVX2-only CPU (like the AMD EPYCs without AVX-512).
# Inductor's cache does not key on ATEN_CPU_CAPABILITY: code it compiled under one ISA, reused
# under the other, crashed (seen 2026-12-04), so emulated runs keep a cache of their own.
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "TORCHINDUCTOR_CACHE_DIR": str(Path(tempfile.gettempdir()) / "torchinductor_lmlab_avx2"),
}


def use_path(path: str, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set up `path` for `kernel`: skip "fast" where lmlab does not use it (for torch's kernels,
    with lmlab's own `native_gemv`, which layers choose first, turned off); "fallback" forces every
    optional kernel off."""
    if path == "fallback":
        monkeypatch.setenv(kernels.ENV, "plain")
        kernels.reset()
        assert not getattr(kernels.available(), kernel)
        return
    if kernel != "native_gemv":
        monkeypatch.setenv(kernels.ENV, "-native_gemv")
    if not getattr(kernels.available(), kernel):
        pytest.skip(f"lmlab does not use {kernel} here: {kernels.reasons()[kernel]}")


def spy(monkeypatch: pytest.MonkeyPatch, namespace: str, op: str) -> list[int]:
    """Record each call of `torch.ops.<namespace>.<op>` (which still runs) in the returned list."""
    ns = getattr(torch.ops, namespace)
    real, calls = getattr(ns, op), []

    def wrapper(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(ns, op, wrapper)
    return calls
