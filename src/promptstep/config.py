"""Typed dataclass configs filled from a YAML preset and `--key value` overrides, validated on the way in.

Every config field is documented by an attribute docstring: a string literal on the line after the field, as
Sphinx, jsonargparse and tyro read them. `field_docs` reads them from the class source (no import of anything
heavy) and the CLI's `--help` shows them with each option's type and default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import sys
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


# ---------------------------------------------------------------- documentation for --help


@functools.cache
def _module_classes(path: str) -> dict[str, ast.ClassDef]:
    """The class definitions of a source file by qualified name (`Outer.Inner` for nested classes)."""
    found: dict[str, ast.ClassDef] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                found[prefix + node.name] = node
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(Path(path).read_text(encoding="utf-8")).body, "")
    return found


def _own_field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings written in `cls`'s own body, whitespace collapsed to single spaces."""
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    node = _module_classes(path).get(cls.__qualname__) if path and path.endswith(".py") else None
    if node is None:
        return {}
    docs: dict[str, str] = {}
    for statement, following in zip(node.body, node.body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """What each field of dataclass `cls` means: its attribute docstring, from the class that declares the field
    or, for a field redeclared without one, from the nearest base class that documents it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def type_label(tp: Any) -> str:
    """How an option's value is written on the command line: INT, FLOAT, TEXT, true|false, or FLOAT,... for a
    comma-separated list; an optional value (`X | None`) is labelled as X (its default says 'none')."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return type_label(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is tuple:
        return f"{type_label(typing.get_args(tp)[0])},..."
    return {bool: "true|false", int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, _describe(tp).upper())


def default_label(field: dataclasses.Field) -> str:
    """A field's default as a user would type it: none, true/false, a comma-separated list; a string that is empty or
    has blanks or control characters is quoted (`" "`)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or '""'
    if isinstance(value, str) and (not value or not value.isprintable() or " " in value):
        return json.dumps(value)
    return str(value)


def option_docs(cls: type) -> list[tuple[str, str, str, str]]:
    """(option name, type label, default label, meaning) for every field of config dataclass `cls`, in order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    return [(f.name.replace("_", "-"), type_label(hints[f.name]), default_label(f), docs[f.name])
            for f in dataclasses.fields(cls)]
