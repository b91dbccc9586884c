"""lmlab checkpoints: a folder with `config.json` (our `Config`) + `model.safetensors` (+ tokenizer).

Written through `lmlab.weights.writer.model_files`: staged, then renamed into place file by file,
`config.json` last, so a crash never leaves a half-written file; only a new or empty folder is
written unless `overwrite=True`, and other files in the folder are never touched. Tensors keep
their dtype: save -> load is bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from lmlab.config import Config, ConfigError
from lmlab.weights.errors import WeightsError
from lmlab.weights.hf_folder import read_json, read_safetensors
from lmlab.weights.writer import model_files

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


def save_checkpoint(
    model: Transformer,
    folder: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (and `tokenizer`) to a new or empty `folder` (`overwrite`: only these files)."""
    with model_files(folder, overwrite=overwrite) as tmp:
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
