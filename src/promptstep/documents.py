"""A user's documents for knowledge injection (one text file, a JSONL of {"id", "text"}, or a directory of .txt / .md
files) and questions about them (a JSONL of {"id", "question", optional "answer" / "answers" / "document" /
"distractors"}), with one-line errors that name the file (and line) of the first problem."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from promptstep.errors import InputError

INJECTION_MODES = ("sequential", "sum")  # how chunks combine (see inject.py); named here, where no torch loads
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Document:
    """One document: its id (unique in a collection), its text (stripped), and where it came from."""

    id: str
    text: str
    source: str


def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text of a file's bytes; a NUL byte or invalid UTF-8 means a binary file."""
    if b"\x00" in raw:
        raise InputError(f"{where}: binary file (holds NUL bytes); documents are UTF-8 text")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{where}:{line}: not UTF-8 text (byte {err.start}); documents are UTF-8 text") from None


def _text_document(path: Path, doc_id: str) -> Document:
    text = _decode(path.read_bytes(), str(path)).strip()
    if not text:
        raise InputError(f"{path}: empty document")
    return Document(id=doc_id, text=text, source=str(path))


def _jsonl_records(path: Path, required: tuple[str, ...], what: str) -> Iterator[tuple[str, dict]]:
    """(where, record) of every non-blank line of a JSONL file: objects with non-empty string `required` fields and
    unique ids; InputError naming the file and line otherwise, or if there is none."""
    text = _decode(path.read_bytes(), str(path))
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            fields = " and ".join(f"'{name}'" for name in required)
            raise InputError(f"{where}: expected a JSON object with {fields}, got {type(record).__name__}")
        for name in required:
            if name not in record:
                raise InputError(f"{where}: missing field '{name}'")
            if not isinstance(record[name], str):
                raise InputError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
            if not record[name].strip():
                raise InputError(f"{where}: field '{name}' is empty" + (" (empty document)" if name == "text" else ""))
        if record["id"] in seen:
            raise InputError(f"{where}: duplicate id '{record['id']}' (first on line {seen[record['id']]})")
        seen[record["id"]] = number
        yield where, record
    if not seen:
        raise InputError(f"{path}: holds no {what}")


def _jsonl_documents(path: Path) -> list[Document]:
    return [Document(id=record["id"], text=record["text"].strip(), source=where)
            for where, record in _jsonl_records(path, ("id", "text"), "documents")]


def _directory_documents(path: Path) -> list[Document]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            file = Path(root) / name
            if file.suffix.lower() not in TEXT_SUFFIXES:
                raise InputError(f"{file}: unknown suffix '{file.suffix}' in a document directory "
                                 f"(documents are {' or '.join(TEXT_SUFFIXES)} files)")
            files.append(file)
    if not files:
        raise InputError(f"{path}: empty directory (no {' or '.join(TEXT_SUFFIXES)} documents)")
    files.sort(key=lambda f: f.relative_to(path).as_posix())
    return [_text_document(f, f.relative_to(path).as_posix()) for f in files]


def read_documents(path: str | os.PathLike) -> list[Document]:
    """The documents at `path`, in order.

    * a `.txt` / `.md` file: one document, id = the file name;
    * a `.jsonl` file: one {"id": str, "text": str} object per line (blank lines skipped, ids unique);
    * a directory: every `.txt` / `.md` file below it (hidden ones skipped), sorted, id = relative path.

    Raises InputError (one line, naming the file and line) on: a missing path, an unknown suffix, a binary or
    non-UTF-8 file, an empty document, malformed JSONL, a duplicate id, an empty directory.
    """
    path = Path(path)
    if path.is_dir():
        return _directory_documents(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == JSONL_SUFFIX:
        return _jsonl_documents(path)
    if suffix in TEXT_SUFFIXES:
        return [_text_document(path, path.name)]
    raise InputError(f"{path}: unknown suffix '{path.suffix}' (documents are {', '.join(TEXT_SUFFIXES)} files, "
                     f"a {JSONL_SUFFIX} of {{\"id\", \"text\"}} objects, or a directory of text files)")


@dataclass(frozen=True)
class Question:
    """A question to ask a model: its id, text, accepted answers (empty if unknown), the id of the document it is
    about (None if not said), and wrong answers that the document also holds (`distractors`)."""

    id: str
    question: str
    answers: tuple[str, ...] = ()
    document: str | None = None
    distractors: tuple[str, ...] = ()


def _string_list(record: dict, name: str, where: str) -> tuple[str, ...]:
    value = record.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"{where}: field '{name}' must be a list of non-empty strings")
    return tuple(value)


def read_questions(path: str | os.PathLike, documents: set[str] | None = None) -> list[Question]:
    """The questions of a JSONL file: {"id": str, "question": str} per line, optionally "answer": str,
    "answers": [str, ...] (all accepted answers), "document": str (the id of the document it is about; with
    `documents` given, it must be one of them) and "distractors": [str, ...]. One-line InputError naming the file
    and line on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() != JSONL_SUFFIX:
        raise InputError(f"{path}: questions are a {JSONL_SUFFIX} file of {{\"id\", \"question\"}} objects")
    questions = []
    for where, record in _jsonl_records(path, ("id", "question"), "questions"):
        answers = _string_list(record, "answers", where)
        if "answer" in record:
            answer = record["answer"]
            if not isinstance(answer, str) or not answer.strip():
                raise InputError(f"{where}: field 'answer' must be a non-empty string")
            answers = (answer, *(a for a in answers if a != answer))
        document = record.get("document")
        if document is not None and (not isinstance(document, str) or not document.strip()):
            raise InputError(f"{where}: field 'document' must be a non-empty string (a document id)")
        if document is not None and documents is not None and document not in documents:
            raise InputError(f"{where}: document '{document}' is not among the documents given")
        questions.append(Question(id=record["id"], question=record["question"].strip(), answers=answers,
                                  document=document, distractors=_string_list(record, "distractors", where)))
    return questions
