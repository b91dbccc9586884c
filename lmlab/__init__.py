"""lmlab: a lab for small transformer language models."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so `import lmlab` stays fast.
_LAZY = {
    "Config": "lmlab.config",
    "preset": "lmlab.families",
    "Transformer": "lmlab.model",
    "ActivationCache": "lmlab.interp.activation_cache",
    "run_with_cache": "lmlab.interp.activation_cache",
    "HookedLM": "lmlab.interp.hooked_lm",
    "load": "lmlab.weights.load",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmlab' has no attribute {name!r}")


__all__ = list(_LAZY)
