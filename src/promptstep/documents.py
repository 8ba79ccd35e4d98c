"""A user's documents for knowledge injection: one text file, a JSONL of {"id", "text"}, or a directory of
.txt / .md files, with one-line errors that name the file (and line) of the first problem."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from promptstep.errors import InputError

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


def _jsonl_documents(path: Path) -> list[Document]:
    text = _decode(path.read_bytes(), str(path))
    documents: list[Document] = []
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
            raise InputError(f"{where}: expected a JSON object with 'id' and 'text', got {type(record).__name__}")
        for name in ("id", "text"):
            if name not in record:
                raise InputError(f"{where}: missing field '{name}'")
            if not isinstance(record[name], str):
                raise InputError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
            if not record[name].strip():
                raise InputError(f"{where}: field '{name}' is empty" + (" (empty document)" if name == "text" else ""))
        doc_id = record["id"]
        if doc_id in seen:
            raise InputError(f"{where}: duplicate id '{doc_id}' (first on line {seen[doc_id]})")
        seen[doc_id] = number
        documents.append(Document(id=doc_id, text=record["text"].strip(), source=where))
    if not documents:
        raise InputError(f"{path}: holds no documents")
    return documents


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
