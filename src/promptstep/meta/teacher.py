"""The frozen LC teacher θ_B: its distributions at the answer positions, and its greedy answers (computed once
per (weights, data, format) and cached on disk)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.evaluate import greedy_continuations
from promptstep.formats import Format, encode_text
from promptstep.models import cache_dir
from promptstep.models import fingerprint as weights_fingerprint

STOP_RULE = "newline-after-text"  # part of the teacher-answer cache key: where greedy answers end


def teacher_answers(teacher, tokenizer, triplets: Sequence[Triplet], fmt: Format, max_new_tokens: int,
                    batch_size: int = 16, progress: bool = True, fingerprint: str | None = None
                    ) -> dict[str, list[int]]:
    """The teacher's greedy answer ids to context + query for every triplet, cached on disk per model and data."""
    key_src = json.dumps([fingerprint or weights_fingerprint(teacher)[:16], fmt.separator, fmt.answer_prefix,
                          max_new_tokens, STOP_RULE, [(t.id, t.context, t.query) for t in triplets]])
    path = cache_dir() / "teacher" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    answers: dict[str, list[int]] = {}
    chunks = range(0, len(triplets), batch_size)
    for start in tqdm(chunks, desc="teacher answers", disable=not progress, unit="batch"):
        part = triplets[start : start + batch_size]
        prefixes = [encode_text(tokenizer, fmt.prefix(t, "prompt")) for t in part]
        for triplet, ids in zip(part, greedy_continuations(teacher, tokenizer, prefixes, max_new_tokens)):
            answers[triplet.id] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # runs (or processes) filling the same entry write apart
    tmp.write_text(json.dumps(answers), encoding="utf-8")
    tmp.replace(path)
    return answers
