"""Typed dataclass configs filled from a YAML preset and `--key value` overrides, validated on the way in."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from promptstep.errors import InputError

C = TypeVar("C")


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (a YAML value or a CLI string) to type `tp`, or raise InputError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(_coerce(v, inner, key) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise InputError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise InputError(f"config key '{key}': expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"config key '{key}': expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InputError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise InputError(f"config key '{key}': unsupported type {_describe(tp)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"config {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config {path}: expected a mapping of keys to values")
    return data


def build_config(cls: type[C], preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """An instance of dataclass `cls` from a YAML preset, then overrides; unknown keys and bad values raise."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source, mapping in ((str(preset), read_yaml(preset) if preset else {}), ("command line", overrides or {})):
        for key, value in mapping.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise InputError(f"{source}: unknown config key '{key}' (known: {', '.join(sorted(fields))})")
            values[name] = _coerce(value, hints[name], key)
    try:
        config = cls(**values)
    except TypeError as err:
        raise InputError(f"config: {err}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def config_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples as lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
