"""The (context, query, answer) triplet and its JSONL file format, with line-numbered validation."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from promptstep.errors import InputError

REQUIRED_FIELDS = ("id", "context", "query", "answer")


@dataclass(frozen=True)
class Triplet:
    """One item: a context to learn from, a query about it, and its answer.

    `answers` holds every accepted answer (SQuAD has several); it always contains `answer`.
    """

    id: str
    context: str
    query: str
    answer: str
    answers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.answers:
            object.__setattr__(self, "answers", (self.answer,))
        elif self.answer not in self.answers:
            object.__setattr__(self, "answers", (self.answer, *self.answers))

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "context": self.context,
            "query": self.query,
            "answer": self.answer,
            "answers": list(self.answers),
        }


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
    )


def load_triplets(path: str | os.PathLike) -> list[Triplet]:
    """Read and validate a triplet JSONL file; raise InputError naming file and line on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {err.start})") from None
    triplets: list[Triplet] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not valid JSON ({err.msg})") from None
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
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for triplet in triplets:
                handle.write(json.dumps(triplet.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
