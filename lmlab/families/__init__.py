"""Model families, one module each, and the registries that find them.

`preset(name)` builds a named `Config`; `family_for_hf(model_type)`, `family_for_gguf(arch)` and
`family_of(cfg)` give the `Family` (see `lmlab.families.base`) whose methods the weight drivers
call. Every module of this package other than `base`, `common` and `registry` is a family module
and is imported here, so adding a family is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import (
    FAMILIES,
    PRESETS,
    PUBLISHED_PARAMS,
    family_for_gguf,
    family_for_hf,
    family_of,
    get_family,
    gguf_archs,
    hf_model_types,
    preset,
    presets,
    register_family,
    register_preset,
)

_NOT_FAMILIES = {"base", "common", "registry"}

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in _NOT_FAMILIES and not _m.startswith("_"):
        importlib.import_module(f"{__name__}.{_m}")

__all__ = [
    "FAMILIES",
    "PRESETS",
    "PUBLISHED_PARAMS",
    "Family",
    "GGUFSource",
    "family_for_gguf",
    "family_for_hf",
    "family_of",
    "get_family",
    "gguf_archs",
    "hf_model_types",
    "preset",
    "presets",
    "register_family",
    "register_preset",
]
