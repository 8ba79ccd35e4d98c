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
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from promptstep.errors import InputError
from promptstep.files import decode_utf8, read_bytes

C = TypeVar("C")


MAX_SHOWN = 60  # characters of a bad value quoted in an error line


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def shown(value: Any) -> str:
    """repr(value), shortened: an error line quotes the value, never megabytes of it."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text):,} characters)"


FLOAT32_MAX = 3.4028234663852886e38
YAML_NON_FINITE = (".nan", ".inf", "+.inf", "-.inf")  # YAML's spelling of NaN and infinity (refused as numbers)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (a YAML value or a CLI string) to type `tp`, or raise InputError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~", "")):
            return None
        return coerce(value, options[0], key)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(coerce(v, inner, key) for v in items)
    if value is None:
        raise InputError(f"config key '{key}': expected {_describe(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (*TRUE_WORDS, *FALSE_WORDS):
            return value.lower() in TRUE_WORDS
        raise InputError(f"config key '{key}': expected true/false, got {shown(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected an integer, got {shown(value)}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"config key '{key}': expected an integer, got {shown(value)}") from None
    if tp is float:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected a number, got {shown(value)}")
        text = value.strip().lower().replace(".", "") if isinstance(value, str) and value.strip().lower() in \
            YAML_NON_FINITE else value
        try:
            number = float(text)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"config key '{key}': expected a number, got {shown(value)}") from None
        if not math.isfinite(number):
            raise InputError(f"config key '{key}': expected a finite number, got {shown(value)}")
        if abs(number) > FLOAT32_MAX:
            raise InputError(f"config key '{key}': {number:g} is beyond the range of float32 (the tensors' type, "
                             "largest 3.4e+38)")
        return number
    if tp is str:
        if isinstance(value, (dict, list, tuple)):
            raise InputError(f"config key '{key}': expected a string, got {shown(value)}")
        return str(value)
    raise InputError(f"config key '{key}': unsupported type {_describe(tp)}")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what no config needs and what makes small files dangerous: aliases (a few
    hundred bytes of nested aliases expand to gigabytes), keys given twice (the later one would silently win),
    and keys that are not strings."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} (promptstep configs do not take "
                                              "YAML aliases)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(None, None, "a key that is not a string",
                                                        key_node.start_mark)
            if key_node.value in seen and key_node.value != "<<":
                raise yaml.constructor.ConstructorError(None, None, f"key '{key_node.value}' given twice",
                                                        key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


class _TextLoader(_StrictLoader):
    """User option files: a plain scalar stays the text it is, exactly as the same value on the command line (so
    `name: off` is the name 'off', `name: 007` is '007', `lr: 1e-3` is 1e-3), except null (`~`, `null`, empty);
    each option's type then converts it."""

    yaml_implicit_resolvers: dict = {}


_TextLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                  ["~", "n", "N", ""])


def read_yaml(path: str | Path, what: str = "", text: bool = False) -> dict[str, Any]:
    """A YAML file that must hold a mapping with string keys (`what` prefixes the file in error lines).

    text=True reads a user's option file (plain scalars stay text, as on the command line); the default reads
    files promptstep wrote (YAML types)."""
    where = f"{what} {path}".strip()
    try:
        raw = read_bytes(path)
    except InputError as err:
        raise InputError(f"{what} {err}".strip()) from None
    source = decode_utf8(raw, where)
    try:
        data = yaml.load(source, Loader=_TextLoader if text else _StrictLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{where}{at}: not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of keys to values")
    return data


def build_config(cls: type[C], preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """An instance of dataclass `cls` from a YAML preset, then overrides; unknown keys, keys given twice, bad
    values and repeated values of a list option (unless its field's metadata allows `repeats`) raise."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source, mapping in ((str(preset), read_yaml(preset, "config", text=True) if preset else {}),
                            ("command line", overrides or {})):
        given: dict[str, str] = {}
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise InputError(f"{source}: config key {shown(key)} is not a string")
            name = key.replace("-", "_")
            if name not in fields:
                raise InputError(f"{source}: unknown config key '{key}' (known: {', '.join(sorted(fields))})")
            if name in given and source != "command line":  # on the command line a later option wins
                raise InputError(f"{source}: config key '{key}' given twice (also as '{given[name]}')")
            given[name] = key
            values[name] = coerce(value, hints[name], key)
            repeated = _first_repeat(values[name])
            if repeated is not None and not fields[name].metadata.get("repeats"):
                raise InputError(f"config key '{key}' lists {shown(repeated)} twice (each value once: a repeated "
                                 "value would be run twice and its results merged)")
    try:
        config = cls(**values)
    except TypeError as err:
        raise InputError(f"config: {err}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def _first_repeat(value: Any) -> Any:
    """The first item of tuple `value` that occurs in it twice, or None."""
    if not isinstance(value, tuple):
        return None
    seen: list = []
    for item in value:
        if item in seen:
            return item
        seen.append(item)
    return None


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
