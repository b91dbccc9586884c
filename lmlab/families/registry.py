"""The registries: families by name, HF `model_type` and GGUF architecture, and named presets."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from lmlab.config import Config, ConfigError
from lmlab.families.base import Family

FAMILIES: dict[str, Family] = {}  # Config.family -> Family
_BY_HF: dict[str, Family] = {}
_BY_GGUF: dict[str, Family] = {}
PRESETS: dict[str, Callable[[], Config]] = {}
PUBLISHED_PARAMS: dict[str, float] = {}  # preset -> published parameter count (for tests and docs)


def register_family(family: Family) -> Family:
    """Add `family` to the registry; its name, model types and GGUF archs must be new."""
    if not family.name:
        raise ConfigError(f"{type(family).__name__} has no name; set the class attribute `name`")
    if family.gguf_archs and type(family).gguf_hf_config is Family.gguf_hf_config:
        raise ConfigError(
            f"family {family.name!r} lists GGUF architectures {list(family.gguf_archs)} but does "
            "not define gguf_hf_config; define it or drop gguf_archs"
        )
    clashes = [
        f"{what} {key!r}"
        for what, table, keys in (
            ("family", FAMILIES, (family.name,)),
            ("HF model_type", _BY_HF, family.hf_model_types),
            ("GGUF architecture", _BY_GGUF, family.gguf_archs),
        )
        for key in keys
        if key in table and type(table[key]) is not type(family)
    ]
    if clashes:
        raise ConfigError(
            f"family {family.name!r} claims {', '.join(clashes)}, already registered; rename it"
        )
    FAMILIES[family.name] = family
    _BY_HF.update(dict.fromkeys(family.hf_model_types, family))
    _BY_GGUF.update(dict.fromkeys(family.gguf_archs, family))
    return family


def family_for_hf(model_type: str | None) -> Family:
    """The family that reads transformers configs of `model_type`."""
    if model_type not in _BY_HF:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_BY_HF))}"
        )
    return _BY_HF[model_type]


def family_for_gguf(arch: str) -> Family:
    """The family that reads GGUF files of `general.architecture` `arch`."""
    if arch not in _BY_GGUF:
        raise ConfigError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(_BY_GGUF))}"
        )
    return _BY_GGUF[arch]


def hf_model_types() -> list[str]:
    """Every supported transformers `model_type`."""
    return sorted(_BY_HF)


def gguf_archs() -> list[str]:
    """Every supported GGUF `general.architecture`."""
    return sorted(_BY_GGUF)


def get_family(name: str) -> Family:
    """The family registered as `name` (a `Config.family` value)."""
    if name not in FAMILIES:
        near = difflib.get_close_matches(name, list(FAMILIES), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"Config.family={name!r} is not a registered family.{hint} "
            f"Registered: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[name]


def family_of(cfg: Config) -> Family:
    """The family of `cfg`: by `cfg.family`, or, for configs saved without one, from its knobs."""
    if cfg.family:
        return get_family(cfg.family)
    fitting = [f for f in FAMILIES.values() if f.fits(cfg)]
    if not fitting:
        raise ConfigError(
            f"{cfg.name}: Config.family is empty and no family fits its knobs; set Config.family to "
            f"one of {', '.join(sorted(FAMILIES))}"
        )
    return fitting[0]


# ---------------------------------------------------------------------- presets


def register_preset(name: str, published: float | None = None) -> Callable:
    """Decorator adding a preset factory (a function returning a `Config`) under `name`."""

    def deco(fn: Callable[[], Config]) -> Callable[[], Config]:
        if name in PRESETS and PRESETS[name].__module__ != fn.__module__:
            raise ConfigError(f"preset {name!r} is registered twice; give one of them a new name")
        PRESETS[name] = fn
        if published is not None:
            PUBLISHED_PARAMS[name] = published
        return fn

    return deco


def preset(name: str, **overrides: Any) -> Config:
    """The named preset, optionally with some fields overridden; unknown names suggest near ones."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"unknown preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}"
        )
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def presets() -> list[str]:
    """Every preset name, sorted."""
    return sorted(PRESETS)
