"""Save and load LoRA adapters in the Hugging Face PEFT layout.

A folder with `adapter_config.json` and `adapter_model.safetensors` whose tensors carry
transformers module names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`),
so `peft.PeftModel.from_pretrained(hf_model, folder)` loads what lmlab trained, and back.

The two files are one unit: they are written into a temporary folder beside the target, which is
then renamed into place, so a reader sees the old adapter or the new one, never half of each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from lmlab.config import Config
from lmlab.errors import InputError, MissingFileError, OverwriteError
from lmlab.packaged import PACKAGED
from lmlab.peft.lora import LoraConfig, apply_lora, lora_layers, module_name_maps
from lmlab.runs import recover_folder, replace_folder
from lmlab.weights.errors import WeightsError
from lmlab.weights.hf_folder import read_json, read_safetensors
from lmlab.weights.hub import looks_like_repo_id

PREFIX = "base_model.model."


FILES = ("adapter_config.json", "adapter_model.safetensors")


def save_lora(
    model: nn.Module,
    folder: str | Path,
    base_model_name: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the adapter (only the LoRA tensors) in the HF PEFT layout; returns the folder.

    `base_model_name_or_path` is `base_model_name` if given, else what `base_model_id` finds, so
    `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` loads the right base model.

    `folder` must be new or empty; `overwrite=True` replaces an existing adapter there (other
    files in the folder, such as a README, are kept).
    """
    folder = Path(folder)
    _check_folder(folder, overwrite)
    layers = lora_layers(model)
    if not layers:
        raise InputError("this model has no LoRA layers to save; call apply_lora(model, ...) first")
    if any(lin.lora_merged for lin in layers.values()):
        raise InputError("LoRA is merged into the weights; call unmerge_lora(model) before saving")
    cfg: LoraConfig = model.lora_config
    to_hf, _ = module_name_maps(model.cfg)
    missing = [n for n in layers if n not in to_hf]
    if missing:
        raise InputError(
            f"no transformers module name for {missing[:3]} in family {model.cfg.family!r} "
            "(some families fuse q/k/v into one projection); target modules that exist in "
            "transformers too"
        )
    tensors = {}
    for n, lin in layers.items():
        k = PREFIX + to_hf[n]
        tensors[f"{k}.lora_A.weight"] = lin.lora_A.weight.detach().float().contiguous()
        tensors[f"{k}.lora_B.weight"] = lin.lora_B.weight.detach().float().contiguous()
        if hasattr(lin, "lora_magnitude_vector"):
            tensors[f"{k}.lora_magnitude_vector"] = lin.lora_magnitude_vector.detach().float()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name or base_model_id(model.cfg),
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": sorted(to_hf[n] for n in layers),
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with replace_folder(folder, overwrite=folder.exists()) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(save(tensors))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def base_model_id(cfg: Config) -> str:
    """The name transformers loads this model by: `cfg.extra["hub_id"]`, the hub repository of a
    packaged model, a hub id it was loaded by, the local HF folder it came from, else `cfg.name`."""
    if cfg.extra.get("hub_id"):
        return str(cfg.extra["hub_id"])
    if cfg.name in PACKAGED:
        return PACKAGED[cfg.name].hub_repo
    if looks_like_repo_id(cfg.name):
        return cfg.name
    source = Path(str(cfg.extra.get("source", "")))
    if cfg.extra.get("source") and (source / "config.json").is_file():
        return str(source.resolve())
    return cfg.name


def _check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite` (an empty folder is taken as new)."""
    recover_folder(folder)
    if folder.exists() and not folder.is_dir():
        raise OverwriteError(
            f"{folder} is a file; an adapter is saved as a folder: pick a new path"
        )
    if overwrite or not folder.is_dir():
        return
    names = sorted(p.name for p in folder.iterdir())
    if names:
        what = (
            "an adapter" if set(FILES) & set(names) else f"{len(names)} entries ({names[0]}, ...)"
        )
        raise OverwriteError(
            f"{folder} already holds {what}; refusing to overwrite it: save to a new folder, or "
            "pass overwrite=True to replace the adapter (other files there are kept)"
        )


def load_lora(model: nn.Module, folder: str | Path) -> list[str]:
    """Apply a LoRA adapter saved by lmlab or by HF PEFT; returns the adapted lmlab module names."""
    folder = Path(folder)
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MissingFileError(
                f"{p} not found; an adapter folder holds adapter_config.json and "
                "adapter_model.safetensors (HF PEFT layout)"
            )
    hf_cfg = read_json(cfg_path)
    if hf_cfg.get("peft_type") != "LORA":
        raise WeightsError(
            f"{folder} holds a {hf_cfg.get('peft_type')!r} adapter; load_lora reads LORA"
        )
    if hf_cfg.get("rank_pattern") or hf_cfg.get("alpha_pattern"):
        raise WeightsError("adapters with rank_pattern/alpha_pattern are not supported yet")
    tensors = read_safetensors(w_path)
    _, from_hf = module_name_maps(model.cfg)
    base = hf_cfg.get("base_model_name_or_path")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        m = re.fullmatch(
            r"(.+?)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)", k
        )
        hf_name = m.group(1)[len(PREFIX) :] if m and m.group(1).startswith(PREFIX) else None
        if hf_name is None or hf_name not in from_hf:
            raise WeightsError(
                f"adapter tensor {k!r} names no module of this {model.cfg.name} model: the adapter "
                f"was made for a different base model ({base!r}); expected names like "
                f"{PREFIX}{next(iter(from_hf))}.lora_A.weight"
            )
        modules.setdefault(from_hf[hf_name], {})[m.group(2).split(".")[0]] = v
    lcfg = LoraConfig(
        r=int(hf_cfg["r"]),
        lora_alpha=float(hf_cfg["lora_alpha"]),
        lora_dropout=float(hf_cfg.get("lora_dropout", 0.0)),
        target_modules=[re.escape(n) for n in sorted(modules)],
        use_rslora=bool(hf_cfg.get("use_rslora", False)),
        use_dora=bool(hf_cfg.get("use_dora", False)),
    )
    mods = dict(model.named_modules())
    for n, parts in modules.items():
        lin = mods[n]
        want = {"lora_A": (lcfg.r, lin.in_features), "lora_B": (lin.out_features, lcfg.r)}
        want["lora_magnitude_vector"] = (lin.out_features,)
        for part, t in parts.items():
            if tuple(t.shape) != want[part]:
                raise WeightsError(
                    f"adapter tensor {part} for {n} has shape {tuple(t.shape)}, this model needs "
                    f"{want[part]}: the adapter was made for a different base model ({base!r})"
                )
    names = apply_lora(model, lcfg)
    with torch.no_grad():
        for n, parts in modules.items():
            lin = mods[n]
            lin.lora_A.weight.copy_(parts["lora_A"])
            lin.lora_B.weight.copy_(parts["lora_B"])
            if "lora_magnitude_vector" in parts:
                lin.lora_magnitude_vector.copy_(parts["lora_magnitude_vector"])
    return names
