"""Dataclass settings from TOML files and `--key=value` overrides, with errors that name the fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lmlab.config import ConfigError

T = TypeVar("T")


def from_toml(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Build dataclass `cls` from its defaults, then a TOML file, then `key=value` overrides.

    A field whose type is a dataclass (a recipe's `train: TrainConfig`) is a TOML table (`[train]`)
    and takes dotted overrides (`--train.lr=3e-4`); both change only the keys they name, on top of
    the field's default. Table fields (`dict`) merge into their defaults the same way.
    """
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
        values = check_types(values, cls, str(p))
    merge(values, parse_overrides(cls, overrides or []))
    return build(cls, values)


def merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge nested dict `new` into `into` (tables merge key by key, other values replace)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def build(cls: type[T], values: dict[str, Any], base: T | None = None) -> T:
    """An instance of `cls` from checked nested `values`, on top of `base` (or the defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, current = values[f.name], getattr(base, f.name) if base is not None else _default(f)
        if isinstance(value, dict) and _is_section(hints[f.name]):
            value = build(hints[f.name], value, current if _is_section(type(current)) else None)
        elif isinstance(value, dict) and isinstance(current, dict):
            value = merge(dict(current), value)
        kwargs[f.name] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _is_section(hint: Any) -> bool:
    """Whether a field of type `hint` is a nested settings group (a dataclass)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _unknown(key: str, cls: type, prefix: str, source: str = "", rest: str = "") -> ConfigError:
    """The error for a key that is not a field of `cls`, suggesting the nearest ones (and the
    group that has a field of that name: `lr` -> `train.lr`); `rest` is the path after `key`."""
    valid = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    near = [prefix + n + rest for n in difflib.get_close_matches(key, valid, n=3)]
    near += [
        f"{prefix}{f.name}.{key}{rest}"
        for f in dataclasses.fields(cls)
        if _is_section(hints[f.name]) and key in {g.name for g in dataclasses.fields(hints[f.name])}
    ]
    dash = "--" if source.startswith(" (from") else ""  # a flag's fix is spelt as a flag
    hint = f"did you mean {' or '.join(repr(dash + n) for n in near)}? " if near else ""
    where = f"[{prefix[:-1]}]" if prefix else "keys"
    return ConfigError(
        f"unknown config key {prefix + key!r}{source}; {hint}valid {where}: {', '.join(valid)}"
    )


def check_types(values: dict[str, Any], cls: type, where: str, prefix: str = "") -> dict[str, Any]:
    """TOML `values` checked against the field types of `cls` (ints widen to floats, arrays to
    tuples, tables of dataclass fields recurse); an unknown key or a mismatch raises
    `ConfigError` naming the field path, the value, the file and the type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, cls, prefix, f" in {where}")
        if _is_section(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{prefix}{key} = {_shown(value)} in {where} must be a table of settings: "
                    f"write [{prefix}{key}] on its own line, then its keys"
                )
            out[key] = check_types(value, hints[key], where, f"{prefix}{key}.")
            continue
        try:
            out[key] = typed(value, hints[key])
        except _Mismatch as e:
            default = _default(fields[key])
            example = (
                "" if default is None else f" (default: {prefix}{key} = {_toml_value(default)})"
            )
            raise ConfigError(f"{prefix}{key} = {_shown(value)} in {where} {e}{example}") from None
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
    """Parse `key=value` (or `--key=value`, `--train.lr=3e-4`) strings into a nested dict of typed
    values for the fields of `cls`; a bare `--flag` sets a bool field to true."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        path = resolve_key(cls, key)
        node, owner, prefix, hint = out, cls, "", None
        for i, name in enumerate(path):
            fields = {f.name for f in dataclasses.fields(owner)}
            if name not in fields:
                rest = "".join(f".{p}" for p in path[i + 1 :])
                raise _unknown(name, owner, prefix, f" (from {item!r})", rest)
            hint = typing.get_type_hints(owner)[name]
            last = i == len(path) - 1
            if _is_section(hint):
                if last:
                    raise ConfigError(
                        f"{prefix}{name} is a group of settings, not a value; set one of its "
                        f"fields, e.g. --{prefix}{name}.{dataclasses.fields(hint)[0].name}=VALUE"
                    )
                node, owner, prefix = node.setdefault(name, {}), hint, f"{prefix}{name}."
                continue
            if not last:
                if typing.get_origin(hint) is not dict and hint is not dict:
                    raise ConfigError(
                        f"--{key}: {prefix}{name} is a single value, not a table; "
                        f"write it as --{prefix}{name}=VALUE"
                    )
                args = typing.get_args(hint)
                elem = args[1] if len(args) == 2 else typing.Any
                table = node.setdefault(name, {})
                for sub in path[i + 1 : -1]:
                    table = table.setdefault(sub, {})
                dotted = f"{prefix}{name}.{'.'.join(path[i + 1 :])}"
                table[path[-1]] = _literal(raw) if elem is typing.Any else coerce(raw, elem, dotted)
                break
            if not sep:
                if hint is not bool:
                    raise ConfigError(
                        f"override {item!r} has no value; write it as --{prefix}{name}=VALUE"
                    )
                raw = "true"
            node[name] = coerce(raw, hint, prefix + name)
    return out


def resolve_key(cls: type, key: str) -> list[str]:
    """The field path of command-line `key` in `cls` (dashes read as underscores): `train.lr`, or
    the flat `lr` when `cls` has no field `lr` and exactly one group (`train`) has one, so each
    knob has one name users can type everywhere. An ambiguous flat key raises `ConfigError`."""
    path = [part.replace("-", "_") for part in key.split(".")]
    if not (dataclasses.is_dataclass(cls) and path[0]):
        return path
    if path[0] in {f.name for f in dataclasses.fields(cls)}:
        return path
    hints = typing.get_type_hints(cls)
    groups = [
        f.name
        for f in dataclasses.fields(cls)
        if _is_section(hints[f.name])
        and path[0] in {g.name for g in dataclasses.fields(hints[f.name])}
    ]
    if len(groups) > 1:
        spelled = " or ".join(f"--{g}.{key.replace('-', '_')}" for g in groups)
        raise ConfigError(f"--{key} is a setting of {' and '.join(groups)}; write {spelled}")
    return groups + path


def field_type(cls: type, key: str) -> Any:
    """The type of the field command-line `key` names in `cls` (see `resolve_key`), or None when
    it names none; a key inside a table field (`data_options.x`) has the table's value type."""
    try:
        path = resolve_key(cls, key)
    except ConfigError:
        return None
    owner: Any = cls
    for i, name in enumerate(path):
        if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
            return None
        if name not in {f.name for f in dataclasses.fields(owner)}:
            return None
        hint = typing.get_type_hints(owner)[name]
        if i < len(path) - 1 and (typing.get_origin(hint) is dict or hint is dict):
            args = typing.get_args(hint)
            return args[1] if len(args) == 2 else typing.Any
        owner = hint
    return owner


def _literal(raw: str) -> Any:
    """Command-line text for a field of any type: a TOML value (3, 0.5, true, [1, 2]) or a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


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
    """Write a dataclass (or dict) as TOML: nested dataclasses and dicts become tables
    (`[train]`, `[train.model_overrides]`); None values are left out (TOML has no null)."""
    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return "\n".join(_table(d, "")).lstrip("\n") + "\n"


def _table(d: dict[str, Any], name: str) -> list[str]:
    lines = [f"[{name}]"] if name else []
    lines += [
        f"{_key(k)} = {_toml_value(v)}"
        for k, v in d.items()
        if v is not None and not isinstance(v, dict)
    ]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", *_table(v, f"{name}.{_key(k)}" if name else _key(k))]
    return lines


def _key(k: Any) -> str:
    k = str(k)
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else _toml_value(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
