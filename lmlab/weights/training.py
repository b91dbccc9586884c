"""Training checkpoints (`lmlab train` writes them into its out_dir): find the newest intact one,
read the model out of it, and say how to turn one into a loadable model (`lmlab convert`).

`lmlab.load` does not read them: a training checkpoint is a torch pickle holding optimizer state and
no tokenizer, so it is converted once into a model folder (safetensors, never unpickled again).
Which file of a run folder to use is `lmlab.checkpoints`'s call (its manifest and checksums).
"""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmlab.config import Config, ConfigError
from lmlab.errors import CheckpointError, MissingFileError

if TYPE_CHECKING:
    from lmlab.tokenizers.base import Tokenizer

SUFFIXES = (".pt", ".pth", ".ckpt")  # files `torch.save` writes, by convention
_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)
_READ_ERRORS += (zipfile.BadZipFile, KeyError, AttributeError, TypeError)


def convert_hint(path: str | Path) -> str:
    """The message for a training checkpoint given where a model is expected."""
    return (
        f"{path}: this is a training checkpoint; turn it into a model with "
        f"`lmlab convert {path} OUT` and then load OUT"
    )


def is_training_run(path: str | Path) -> bool:
    """Whether `path` is a torch checkpoint file or a run folder with checkpoints (by name only)."""
    from lmlab import checkpoints as train_ckpt

    path = Path(path)
    if path.is_file():
        return path.suffix in SUFFIXES
    return path.is_dir() and train_ckpt.exists(path)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: itself, or the newest intact one of a run folder."""
    from lmlab import checkpoints as train_ckpt

    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(
            f"{path}: no such file or folder; pass the out_dir of an `lmlab train` run or one of "
            "its checkpoint files (ckpt_<step>.pt)"
        )
    if path.is_file():
        return path
    bad: list[str] = []
    for entry in train_ckpt.candidates(path):
        why = train_ckpt.problem(entry)
        if why is None:
            if bad:  # the same wording and channel as the training code's fallback
                listed = "; ".join(bad)
                print(
                    f"warning: {listed}; using the previous checkpoint {entry.path}",
                    file=sys.stderr,
                )
            return entry.path
        bad.append(f"{entry.path.name} is {why}")
    if bad:
        raise CheckpointError(
            f"{path}: no usable training checkpoint ({'; '.join(bad)}); restore a good copy, or "
            "train again"
        )
    if (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: holds a model (config.json), not a training checkpoint; load it directly, "
            "or use `lmlab export` to write it in another format"
        )
    raise CheckpointError(
        f"{path}: no training checkpoint (checkpoints.json, ckpt_<step>.pt or ckpt.pt) in this "
        "folder; pass the out_dir of an `lmlab train` run that saved one"
    )


@dataclass
class TrainingCheckpoint:
    """The model part of a training checkpoint."""

    path: Path
    cfg: Config
    state_dict: dict[str, torch.Tensor]
    step: int | None
    train_config: dict[str, Any]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _torch_load(file: Path) -> Any:
    if not zipfile.is_zipfile(file):  # torch.save writes a zip; its directory is at the end
        raise CheckpointError(
            f"{file}: not a readable training checkpoint (empty, or not a complete torch file); "
            "the file is truncated or corrupt: use an earlier checkpoint or train again"
        )
    try:
        try:  # mmap: the optimizer state is never read into memory
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{file}: not a readable training checkpoint ({_first_line(e)}); the file is "
            "truncated or corrupt: use an earlier checkpoint or train again"
        ) from None


def read_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """Config, model weights, step and train config of a run folder or checkpoint file."""
    file = find_checkpoint(path)
    state = _torch_load(file)
    if not (
        isinstance(state, dict)
        and isinstance(state.get("model"), dict)
        and isinstance(state.get("model_config"), dict)
    ):
        what = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{file}: not an lmlab training checkpoint (found {what}; expected 'model' and "
            "'model_config'); pass a checkpoint written by `lmlab train`"
        )
    try:
        cfg = Config.from_dict(dict(state["model_config"]))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: its model_config is not valid ({e})") from None
    sd = {}
    for k, v in state["model"].items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{file}: model entry {k!r} is not a tensor; the file is corrupt")
        sd[str(k).removeprefix("_orig_mod.").removeprefix("module.")] = v
    if cfg.tie_embeddings:
        sd.pop("unembed.weight", None)
    step = state.get("step")
    train_cfg = state.get("train_config")
    return TrainingCheckpoint(
        file,
        cfg,
        sd,
        int(step) if isinstance(step, int) else None,
        dict(train_cfg) if isinstance(train_cfg, dict) else {},
    )


def run_tokenizer(train_config: dict[str, Any], cfg: Config) -> Tokenizer | None:
    """The tokenizer the run's data was prepared with, when its data folder still says and it fits
    `cfg`'s vocabulary; else None."""
    from lmlab.tokenizers import TokenizerError, check_vocab

    try:
        tok = _data_tokenizer(train_config)
        if tok is not None:
            check_vocab(tok, cfg)
    except (OSError, ValueError, AttributeError, TokenizerError):
        return None
    return tok


def _data_tokenizer(train_config: dict[str, Any]) -> Tokenizer | None:
    from lmlab.paths import cache_dir
    from lmlab.tokenizers import CharTokenizer, load_tokenizer

    data = str(train_config.get("data") or "")
    if data == "shakespeare-char":
        folder = cache_dir() / "data" / "shakespeare_char"
    elif data and not data.startswith("task:"):
        folder = Path(data)
    else:
        return None
    if not (folder / "meta.json").is_file():
        return None
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    name = meta.get("tokenizer_name") or meta.get("tokenizer")
    if name == "char" and meta.get("chars"):
        return CharTokenizer(meta["chars"])
    if isinstance(name, str) and name not in ("bytes", "char"):
        return load_tokenizer(name)
    return None
