"""Dataclass settings from TOML files and `--key=value` overrides, with errors that name the fix."""

from __future__ import annotations

import dataclasses
import math
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
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p} is not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        check_keys(values, cls)
        values = check_types(values, cls, str(p))
    values.update(parse_overrides(cls, overrides or []))
    return cls(**values)


def check_types(values: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """TOML `values` checked against the field types of `cls` (ints widen to floats, arrays to
    tuples); a mismatch raises `ConfigError` naming the field, the value, the file and the type."""
    hints = typing.get_type_hints(cls)
    defaults = {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
    out = {}
    for key, value in values.items():
        try:
            out[key] = typed(value, hints[key])
        except _Mismatch as e:
            default = defaults.get(key)
            example = "" if default is None else f" (default: {key} = {_toml_value(default)})"
            raise ConfigError(f"{key} = {_shown(value)} in {where} {e}{example}") from None
    return out


class _Mismatch(Exception):
    """A TOML value is not of the field's type; the message completes `KEY = VALUE in FILE ...`."""


def typed(value: Any, hint: Any) -> Any:
    """`value` as field type `hint`, or `_Mismatch` saying what it must be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return typed(value, a)
            except _Mismatch as e:
                last = e
        if len(inner) == 1:
            raise last
        raise _Mismatch(f"must be one of {' or '.join(describe(a) for a in inner)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, float):
            raise _Mismatch("is not a whole number; this field takes an int")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Mismatch("must be a finite float")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, list):
            return _sequence(value, hint)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            elem = args[1] if len(args) == 2 else typing.Any
            return {k: typed(v, elem) for k, v in value.items()}
    else:
        return value  # a type this checker does not know: the dataclass judges it
    raise _Mismatch(f"must be {describe(hint)}")


def _sequence(value: list, hint: Any) -> list | tuple:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _Mismatch(f"must be {describe(hint)}")
        elems = list(args)
    else:
        elems = [args[0] if args else typing.Any] * len(value)
    try:
        vals = [typed(v, e) for v, e in zip(value, elems, strict=True)]
    except _Mismatch:
        raise _Mismatch(f"must be {describe(hint)}") from None
    return tuple(vals) if origin is tuple else vals


def describe(hint: Any) -> str:
    """The type `hint` in words, for error messages."""
    names = {bool: "true or false", int: "an int", float: "a float", str: "a string (in quotes)"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is dict or hint is dict:
        return "a table ([name] section or {key = value})"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values ({', '.join(_plain(a) for a in args)})"
    if origin in (list, tuple) or hint in (list, tuple):
        return f"a list of {_plain(args[0])} values" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _plain(hint: Any) -> str:
    return describe(hint).removeprefix("an ").removeprefix("a ").removesuffix(" (in quotes)")


def _shown(value: Any) -> str:
    """A TOML value as the user wrote it (strings quoted)."""
    if isinstance(value, (bool, int, float, list, tuple)):
        return _toml_value(value)
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


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
        if len(inner) == 1:
            return coerce(raw, inner[0], key)
        for a in inner:
            try:
                return coerce(raw, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={raw!r} is not {describe(hint)}")
    if origin in (tuple, list):
        parts = [p.strip() for p in raw.strip("[]()").split(",") if p.strip()]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise ConfigError(
                    f"{key}={raw!r} has {len(parts)} values; it takes {len(args)}, comma-separated"
                )
            elems = list(args)
        else:
            elems = [args[0] if args else str] * len(parts)
        vals = [coerce(p, e, key) for p, e in zip(parts, elems, strict=True)]
        return tuple(vals) if origin is tuple else vals
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={raw!r} is not a boolean; use true or false")
    if hint is int:
        return _whole(raw, key)
    if hint is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a number — give a float like 0.001") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}={raw} is not a finite number — give a float like 0.001")
        return value
    if hint is typing.Any:
        return raw
    return hint(raw)


def _whole(raw: str, key: str) -> int:
    """An int from `raw`; "1e3" and "10.0" are accepted, "1.7" is refused (never truncated)."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a whole number — give an int like 10") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key}={raw} is not a whole number — give an int like 10")
    if not value.is_integer():
        raise ConfigError(f"{key}={raw} is not a whole number — give an int like {round(value)}")
    return int(value)


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
