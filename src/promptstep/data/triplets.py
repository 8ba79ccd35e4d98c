"""The (context, query, answer) triplet and its JSONL file format, with line-numbered validation."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from promptstep.errors import InputError
from promptstep.files import parse_json, read_text
from promptstep.runs import give_default_mode

REQUIRED_FIELDS = ("id", "context", "query", "answer")
TAG_TYPES = (str, int, float, bool)


class Tags(Mapping):
    """A read-only, hashable mapping of metadata (string keys; string, number or boolean values)."""

    def __init__(self, data: Mapping | Iterable = ()) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str | int | float | bool:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"Tags({self._data!r})"


@dataclass(frozen=True)
class Triplet:
    """One item: a context to learn from, a query about it, and its answer.

    `answers` holds every accepted answer (SQuAD has several); it always contains `answer`.
    Optional, written to JSONL only when set: `distractors`, the other names the context gives (an output
    equal to one of them "answered a distractor"), and `tags`, metadata to group results by (e.g. family,
    n_facts, position, name_style).
    """

    id: str
    context: str
    query: str
    answer: str
    answers: tuple[str, ...] = field(default=())
    distractors: tuple[str, ...] | None = None
    tags: Mapping | None = None

    def __post_init__(self) -> None:
        if not self.answers:
            object.__setattr__(self, "answers", (self.answer,))
        elif self.answer not in self.answers:
            object.__setattr__(self, "answers", (self.answer, *self.answers))
        if self.distractors is not None and not isinstance(self.distractors, tuple):
            object.__setattr__(self, "distractors", tuple(self.distractors))
        if self.tags is not None and not isinstance(self.tags, Tags):
            object.__setattr__(self, "tags", Tags(self.tags))

    def to_json(self) -> dict:
        record = {
            "id": self.id,
            "context": self.context,
            "query": self.query,
            "answer": self.answer,
            "answers": list(self.answers),
        }
        if self.distractors is not None:
            record["distractors"] = list(self.distractors)
        if self.tags is not None:
            record["tags"] = dict(self.tags)
        return record


def _parse_distractors(value: object, answers: list[str], where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InputError(f"{where}: field 'distractors' must be a list of strings, got {type(value).__name__}")
    if not all(isinstance(d, str) for d in value):
        raise InputError(f"{where}: field 'distractors' must hold only strings")
    for name in value:
        if not name.strip():
            raise InputError(f"{where}: field 'distractors' holds an empty name")
        if name in answers:
            raise InputError(f"{where}: field 'distractors' holds '{name}', which is also an answer")
    if len(set(value)) != len(value):
        raise InputError(f"{where}: field 'distractors' repeats a name")
    return tuple(value)


def _parse_tags(value: object, where: str) -> Tags:
    if not isinstance(value, dict):
        raise InputError(f"{where}: field 'tags' must be an object, got {type(value).__name__}")
    for key, tag in value.items():
        if not key.strip():
            raise InputError(f"{where}: field 'tags' has an empty key")
        if not isinstance(tag, TAG_TYPES):
            kind = "null" if tag is None else type(tag).__name__
            raise InputError(f"{where}: tag '{key}' must be a string, number or boolean, got {kind}")
        if isinstance(tag, float) and not math.isfinite(tag):
            raise InputError(f"{where}: tag '{key}' is not a finite number")
    return Tags(value)


def _parse_record(record: object, where: str) -> Triplet:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise InputError(f"{where}: missing field '{name}'")
        value = record[name]
        if not isinstance(value, str):
            raise InputError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise InputError(f"{where}: field '{name}' is empty")
    answers = record.get("answers", [record["answer"]])
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: field 'answers' must be a non-empty list of strings")
    if any(not a.strip() for a in answers):
        raise InputError(f"{where}: field 'answers' holds an empty answer")
    return Triplet(
        id=record["id"],
        context=record["context"],
        query=record["query"],
        answer=record["answer"],
        answers=tuple(answers),
        distractors=_parse_distractors(record["distractors"], answers, where) if "distractors" in record else None,
        tags=_parse_tags(record["tags"], where) if "tags" in record else None,
    )


def load_triplets(path: str | os.PathLike) -> list[Triplet]:
    """Read and validate a triplet JSONL file; raise InputError naming file and line on the first problem."""
    path = Path(path)
    text = read_text(path)
    triplets: list[Triplet] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = parse_json(line, where)
        triplet = _parse_record(record, where)
        if triplet.id in seen:
            raise InputError(f"{where}: duplicate id '{triplet.id}' (first on line {seen[triplet.id]})")
        seen[triplet.id] = number
        triplets.append(triplet)
    if not triplets:
        raise InputError(f"{path}: holds no triplets")
    return triplets


def write_triplets(path: str | os.PathLike, triplets: Iterable[Triplet]) -> None:
    """Write triplets as JSONL, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        give_default_mode(Path(tmp))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for triplet in triplets:
                handle.write(json.dumps(triplet.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
