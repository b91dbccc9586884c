"""Read a Hugging Face model folder: `config.json` + `*.safetensors` (sharded or not), never pickles.

GPT-OSS folders as published keep their expert weights in MXFP4 (`*_blocks` + `*_scales`);
those are dequantized here so the rest of lmlab only ever sees dense tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmlab.weights.errors import WeightsError
from lmlab.weights.mxfp4 import dequantize_mxfp4_state_dict

INDEX = "model.safetensors.index.json"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a WeightsError naming the file and the problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(
            f"{path}: cannot read JSON ({e}); the file is corrupt: restore it"
        ) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an HF-style folder, following the shard index when present."""
    index = folder / INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no 'weight_map'; the index is corrupt: download it again")
        files = [folder / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(
                f"{folder}: the shard index lists {len(files)} files but {missing} are missing; "
                "the download is incomplete: download the missing shards"
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = [p for p in _PICKLES if (folder / p).exists()]
    if pickles:
        raise WeightsError(
            f"{folder}: only pickle weights ({', '.join(pickles)}) found; lmlab never unpickles files it "
            "did not write. Convert them once with transformers (`AutoModel.from_pretrained(folder)"
            ".save_pretrained(out, safe_serialization=True)`) or download the safetensors version"
        )
    raise WeightsError(
        f"{folder}: no weights found (no *.safetensors, no {INDEX}); point at a folder that holds "
        "model.safetensors, a .gguf file, a preset name, or a hub id"
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, with a clear error for truncated or corrupt files."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({e}); the file is truncated or corrupt "
            "(e.g. an interrupted download): download it again"
        ) from None


def read_hf_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`(config.json dict, state dict)` of an HF folder; MXFP4 experts come out dense in bf16."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(
            f"{folder}: no config.json; an HF model folder needs config.json + *.safetensors"
        )
    hf_cfg = read_json(cfg_path)
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        sd.update(read_safetensors(f))
    if any(k.endswith("_blocks") for k in sd):
        sd = dequantize_mxfp4_state_dict(sd, torch.bfloat16)
    return hf_cfg, sd
