"""Dataclass settings from TOML files and `--key=value` overrides, with errors that name the fix."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from lmlab.config import ConfigError, check_keys

T = TypeVar("T")


def from_toml(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Build dataclass `cls` from its defaults, then a TOML file, then `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"config file {str(p)!r} does not exist; pass the path to a .toml file"
            )
        try:
            values = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p} is not valid TOML: {e}") from None
        check_keys(values, cls)
    values.update(parse_overrides(cls, overrides or []))
    return cls(**values)


def parse_overrides(cls: type, overrides: list[str]) -> dict[str, Any]:
    """Parse `key=value` (or `--key=value`) strings into typed values for the fields of `cls`."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        if not sep:
            raise ConfigError(f"override {item!r} has no value; write it as --{key}=VALUE")
        check_keys({key: None}, cls)
        out[key] = coerce(raw, hints[key], key)
    return out


def coerce(raw: str, hint: Any, key: str = "value") -> Any:
    """Convert command-line text to the annotated type (bool, int, float, str, tuple, list, Optional)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return coerce(raw, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={raw!r} is not a valid {hint}")
    if origin in (tuple, list):
        parts = [p.strip() for p in raw.strip("[]()").split(",") if p.strip()]
        elem = args[0] if args else str
        vals = [coerce(p, elem, key) for p in parts]
        return tuple(vals) if origin is tuple else vals
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={raw!r} is not a boolean; use true or false")
    if hint in (int, float):
        try:
            return (
                hint(float(raw)) if hint is int and raw.replace(".", "", 1).isdigit() else hint(raw)
            )
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a valid {hint.__name__}") from None
    if hint is typing.Any:
        return raw
    return hint(raw)


def to_toml(obj: Any) -> str:
    """Write a flat dataclass (or dict) as TOML; None values are left out (TOML has no null)."""
    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    lines = [
        f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None and not isinstance(v, dict)
    ]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [
                f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None
            ]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
