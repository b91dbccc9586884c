"""Export an lmlab model to the Hugging Face layout (config.json + model.safetensors), so
`transformers` loads the folder directly, for every family whose module writes an HF config.

Before writing, the HF config is translated back with `config_from_hf` and compared with the
model's own config: a knob the HF architecture cannot express is an error, not a silent change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

from lmlab.config import Config, ConfigError
from lmlab.families import FAMILIES, Family, family_of
from lmlab.weights.errors import WeightsError
from lmlab.weights.hf import config_from_hf, lmlab_to_hf
from lmlab.weights.writer import model_files

if TYPE_CHECKING:
    from lmlab.model import Transformer
    from lmlab.tokenizers.base import Tokenizer

LMLAB_FORMAT_HINT = (
    "write an lmlab checkpoint instead: --format lmlab "
    "(lmlab.weights.checkpoint.save_checkpoint), which keeps every architecture"
)
# fields that do not change what the network computes, so export need not preserve them
# (`family` too: the family module wrote the HF config, and an empty one was inferred from the
# knobs; `sliding_window_pattern` only derives `layer_types`, which are compared)
_IGNORED = {
    "name",
    "family",
    "sliding_window_pattern",
    "extra",
    "dropout",
    "init_std",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
}


def exportable_families() -> list[str]:
    """Families whose module can write a transformers `config.json`."""
    return [name for name, f in FAMILIES.items() if type(f).hf_config is not Family.hf_config]


def hf_config(cfg: Config) -> dict[str, Any]:
    """The transformers `config.json` dict for `cfg`, from its family module."""
    try:
        family = family_of(cfg)
    except ConfigError as e:
        raise WeightsError(f"{e}; {LMLAB_FORMAT_HINT}") from None
    if family.name not in exportable_families():
        raise WeightsError(
            f"export to the HF layout supports the {', '.join(exportable_families())} families, "
            f"not {family.name!r}; {LMLAB_FORMAT_HINT}"
        )
    return family.hf_config(cfg)


def check_exportable(cfg: Config) -> dict[str, Any]:
    """The HF config of `cfg`, after checking it describes the same network; raises otherwise."""
    hf = hf_config(cfg)
    back = config_from_hf(hf, name=cfg.name)
    diff = [
        f"{f.name}={getattr(cfg, f.name)!r} (HF would give {getattr(back, f.name)!r})"
        for f in dataclasses.fields(Config)
        if f.name not in _IGNORED and getattr(cfg, f.name) != getattr(back, f.name)
    ]
    if diff:
        raise WeightsError(
            f"{cfg.name}: the transformers {hf['model_type']} architecture cannot express "
            f"{'; '.join(diff)}; {LMLAB_FORMAT_HINT}, or export a model without these knobs"
        )
    return hf


def export_hf(
    model: Transformer,
    folder: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a transformers folder (config.json + model.safetensors [+ tokenizer]).

    Only into a new or empty folder unless `overwrite=True`, which replaces just these files.
    """
    cfg = model.cfg
    hf = check_exportable(cfg)
    sd = model.state_dict()
    if cfg.tie_embeddings:
        sd.pop("unembed.weight", None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lmlab_to_hf(sd, cfg).items()}
    dtypes = {
        str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()
    }
    hf["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    with model_files(folder, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(folder)
