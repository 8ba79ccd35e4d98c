"""SQuAD v1.1 as triplets (passage, "Question: ..." query, answer), from the official JSON files or the hub.

Both sources become the same rows (the hub's schema: id, title, context, question, answers{text, answer_start})
and go through one function, `squad_triplets`, so the hub path runs the code the local fixtures test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from promptstep.data.hub import load_hub_split
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.files import looks_like_path, read_json

SQUAD_FILES = {"train": "train-v1.1.json", "test": "dev-v1.1.json"}
HUB_SPLITS = {"train": "train", "test": "validation"}
QUERY_TEMPLATE = "Question: {question} Answer:"


def _field(obj: object, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"{where}: field '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def squad_json_rows(path: str | Path) -> Iterator[dict]:
    """Rows in the hub's schema from an official SQuAD v1.1 JSON file, validating its structure."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (expected the official SQuAD v1.1 JSON)")
    document = read_json(path)
    for i, article in enumerate(_field(document, "data", list, str(path))):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _field(paragraph, "context", str, where)
            if not context.strip():
                raise InputError(f"{where}: empty paragraph context")
            for k, qa in enumerate(_field(paragraph, "qas", list, where)):
                qa_where = f"{where}.qas[{k}]"
                answers = _field(qa, "answers", list, qa_where)
                yield {
                    "id": str(_field(qa, "id", str, qa_where)),
                    "title": title,
                    "context": context,
                    "question": _field(qa, "question", str, qa_where),
                    "answers": {
                        "text": [_field(a, "text", str, f"{qa_where}.answers[{n}]") for n, a in enumerate(answers)],
                        "answer_start": [_field(a, "answer_start", int, f"{qa_where}.answers[{n}]")
                                         for n, a in enumerate(answers)],
                    },
                    "where": qa_where,
                }


def squad_hub_rows(name: str, split: str) -> Iterator[dict]:
    """Rows of a SQuAD-format dataset on the Hugging Face hub (needs the optional `datasets` package)."""
    dataset = load_hub_split(name, None, HUB_SPLITS[split],
                             "pass --source DIR with train-v1.1.json and dev-v1.1.json")
    for n, row in enumerate(dataset):
        yield {**row, "where": f"{name}[{HUB_SPLITS[split]}] row {n}"}


def squad_rows(source: str, split: str) -> Iterator[dict]:
    """Rows of `split` ('train' or 'test') from a local directory or JSON file, else from the hub id `source`."""
    path = Path(source)
    if path.is_dir():
        return squad_json_rows(path / SQUAD_FILES[split])
    if path.suffix == ".json" or path.exists() or looks_like_path(source):
        return squad_json_rows(path)
    return squad_hub_rows(source, split)


def squad_triplets(rows: Iterable[dict], query_template: str = QUERY_TEMPLATE,
                   max_context_words: int | None = None) -> tuple[list[Triplet], Counter]:
    """Triplets (answer = the first gold answer, `answers` = all of them) and the count of rows dropped, by reason.

    Malformed rows (no answers, an answer_start outside the passage, empty question) raise InputError;
    rows that are well-formed but unusable are dropped and counted: a duplicate id, no gold answer whose text
    is found at its answer_start (gold answers that are not are left out), a passage over `max_context_words`.
    """
    triplets: list[Triplet] = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    for row in rows:
        where = row.get("where", row.get("id", "?"))
        context, question = row["context"], row["question"].strip()
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        if not question:
            raise InputError(f"{where}: empty question")
        if not texts or len(texts) != len(starts):
            raise InputError(f"{where}: needs at least one answer with text and answer_start")
        for text, start in zip(texts, starts):
            if not text.strip():
                raise InputError(f"{where}: empty answer text")
            if not 0 <= start < len(context):
                raise InputError(f"{where}: answer_start {start} is outside the passage ({len(context)} characters)")
        if row["id"] in seen:
            dropped["duplicate id"] += 1
            continue
        seen.add(row["id"])
        located = [text for text, start in zip(texts, starts) if context[start : start + len(text)] == text]
        if not located:
            dropped["no answer text at its answer_start"] += 1
            continue
        if max_context_words and len(context.split()) > max_context_words:
            dropped[f"passage over {max_context_words} words"] += 1
            continue
        answers = tuple(dict.fromkeys(t.strip() for t in located))
        triplets.append(Triplet(id=row["id"], context=context.strip(),
                                query=query_template.format(question=question),
                                answer=answers[0], answers=answers))
    return triplets, dropped
