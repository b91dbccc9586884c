"""Hugging Face transformers layout <-> lmlab: the driver over each family's config and name maps.

Format quirks (fused or transposed projections, interleaved experts, wrapper prefixes, tied output
embeddings) are handled here at load time, by the methods of the `lmlab.families` module of the
checkpoint's family; this module knows no family by name.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import family_for_hf, family_of

Tensors = dict[str, torch.Tensor]


def config_from_hf(hf: dict[str, Any], name: str | None = None) -> Config:
    """Translate a transformers `config.json` dict into a `Config`."""
    mt = hf.get("model_type")
    family = family_for_hf(mt)
    return family.config_from_hf(hf, name or hf.get("_name_or_path") or mt)


def hf_renames(cfg: Config) -> dict[str, str]:
    """HF name -> lmlab name of every tensor of `cfg`'s family that is only renamed."""
    return family_of(cfg).hf_renames(cfg)


# buffers every family may store that are not weights
_IGNORED = re.compile(r"(^|\.)(position_ids|rotary_emb\.inv_freq)$")


def _normalize(sd: Tensors, cfg: Config) -> Tensors:
    """Strip wrapper prefixes and drop buffers and heads that are not weights of the bare model."""
    family = family_of(cfg)
    ignored = re.compile("|".join((_IGNORED.pattern, *family.hf_ignored)))
    out = {}
    for k, v in sd.items():
        for p, replacement in family.hf_prefixes:
            if k.startswith(p):
                k = replacement + k[len(p) :]
                break
        if ignored.search(k):
            continue
        out[k] = v
    return out


def hf_to_lmlab(sd: Tensors, cfg: Config) -> Tensors:
    """Convert a transformers state dict of `cfg.family` into lmlab names and layouts."""
    family = family_of(cfg)
    sd = _normalize(sd, cfg)
    names = family.hf_renames(cfg)
    out: Tensors = {}
    unknown = []
    for k, v in sd.items():
        if k in names:
            out[names[k]] = v
        elif not family.hf_tensor_to_lmlab(k, v, cfg, out):
            unknown.append(k)
    if unknown:
        raise KeyError(
            f"{len(unknown)} tensors have no place in a {family.name} model, e.g. {unknown[:5]}; "
            "is this checkpoint really of that family?"
        )
    if cfg.tie_embeddings:
        out.pop("unembed.weight", None)
    return out


def lmlab_to_hf(sd: Tensors, cfg: Config) -> Tensors:
    """Inverse of `hf_to_lmlab`: lmlab state dict -> transformers names and layouts (for export)."""
    family = family_of(cfg)
    inverse = {v: k for k, v in family.hf_renames(cfg).items()}
    out: Tensors = {}
    for k, v in sd.items():
        if k in inverse:
            out[inverse[k]] = v
        elif not family.lmlab_tensor_to_hf(k, v, sd, cfg, out):
            raise KeyError(f"no transformers name for {k!r} in family {family.name}")
    if family.hf_export_prefix:
        out = {
            k if k.startswith("lm_head.") else family.hf_export_prefix + k: v
            for k, v in out.items()
        }
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_state_dict(model: torch.nn.Module, hf_sd: Tensors, *, strict: bool = True) -> None:
    """Copy a transformers state dict into an lmlab `Transformer` through the family's name map.

    With `strict`, every parameter of the model must be provided, with the right shape.
    """
    cfg: Config = model.cfg
    ours = hf_to_lmlab(hf_sd, cfg)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("unembed.weight", None)
    for k, v in ours.items():
        if k not in expected:
            raise KeyError(
                f"converted tensor {k!r} does not exist in this model ({cfg.name}); the checkpoint "
                "was made for a different architecture"
            )
        if expected[k].shape != v.shape:
            raise ValueError(
                f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(expected[k].shape)}; "
                "the config does not match these weights"
            )
    missing = [k for k in expected if k not in ours]
    if strict and missing:
        raise KeyError(
            f"the checkpoint lacks {len(missing)} tensors of this model, e.g. {missing[:5]}"
        )
    model.load_state_dict(ours, strict=False)
