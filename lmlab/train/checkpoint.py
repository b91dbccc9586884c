"""Training-state checkpoints: model, optimizer, schedule, every RNG, data position, step, configs.

Written to a temporary file, fsynced, then renamed over `ckpt.pt`, so a kill at any moment leaves
either the previous complete checkpoint or the new one. Loaded with `weights_only=True`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.config import ConfigError

FILENAME = "ckpt.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states in a form `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` to `path` (tmp file + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save` (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_model_config(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise `ConfigError` listing every model field that differs between a checkpoint and this run."""
    diff = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k != "extra" and saved.get(k) != current.get(k)
    ]
    if diff:
        raise ConfigError(
            f"cannot resume from {path}: the model config differs ({'; '.join(diff)}). "
            "Use the same model settings as the checkpoint, or a new out_dir to start over"
        )


def clean_tmp(folder: str | Path) -> None:
    """Remove temporary files a killed writer left behind (never a complete checkpoint)."""
    for p in Path(folder).glob(f".{FILENAME}.tmp*"):
        p.unlink(missing_ok=True)
