"""lmlab checkpoints: a folder with `config.json` (our `Config`) + `model.safetensors` (+ tokenizer).

Written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written checkpoint behind. Tensors keep their dtype: save -> load is bit-identical.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from lmlab.config import Config, ConfigError
from lmlab.weights.errors import WeightsError
from lmlab.weights.hf_folder import read_json, read_safetensors

if TYPE_CHECKING:
    from lmlab.model import Transformer
    from lmlab.tokenizers.base import Tokenizer

FORMAT_KEY = "lmlab_format"  # marks our config.json apart from a transformers one
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def is_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` holds an lmlab checkpoint (not an HF folder)."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return FORMAT_KEY in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to store: tied output weights once, everything contiguous on the CPU."""
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("unembed.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


@contextmanager
def replace_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it atomically takes `folder`'s place.

    Refuses to replace a non-empty folder that is neither an lmlab checkpoint nor an HF export.
    """
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and _replaceable(folder)):
        raise WeightsError(
            f"{folder} exists and is not a model folder lmlab wrote; refusing to overwrite it: "
            "choose a new folder or delete it"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replaceable(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return not names or is_checkpoint(folder) or {"config.json", "model.safetensors"} <= names


def save_checkpoint(
    model: Transformer,
    folder: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (and `tokenizer`) to `folder` atomically; an existing checkpoint is replaced."""
    with replace_folder(folder) as tmp:
        meta = {FORMAT_KEY: FORMAT_VERSION, **model.cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        info = {"format": "pt", "lmlab": str(FORMAT_VERSION)}
        info.update({k: str(v) for k, v in (metadata or {}).items()})
        save_file(_tensors(model), tmp / WEIGHTS, metadata=info)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(folder)


def read_checkpoint(folder: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """`(Config, lmlab state dict)` of a checkpoint folder written by `save_checkpoint`."""
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    version = raw.pop(FORMAT_KEY, None)
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{folder}: lmlab checkpoint format {version!r} is not supported (this lmlab reads "
            f"{FORMAT_VERSION}); save it again with this version"
        )
    try:
        cfg = Config.from_dict(raw)
    except (ConfigError, TypeError) as e:
        raise WeightsError(f"{folder}/config.json: {e}") from None
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise WeightsError(
            f"{folder}: no {WEIGHTS} beside config.json; the checkpoint is incomplete"
        )
    return cfg, read_safetensors(weights)
