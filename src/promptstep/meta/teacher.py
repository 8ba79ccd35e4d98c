"""The frozen LC teacher θ_B: its greedy answers and its distributions at the answer positions, each computed once
per (weights, data, format, precision) and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.evaluate import greedy_continuations
from promptstep.formats import Format, encode_text
from promptstep.model_specs import cache_dir
from promptstep.models import fingerprint as weights_fingerprint

STOP_RULE = "newline-after-text"  # part of the teacher-answer cache key: where greedy answers end


def _read_cache(path: Path, ids: list[str]) -> dict[str, list[int]] | None:
    """A cache entry, or None if there is none or it is damaged (then it is computed again and replaced)."""
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(answers, dict) or set(answers) != set(ids) or not all(
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            for v in answers.values()):
        return None
    return answers


def teacher_answers(teacher, tokenizer, triplets: Sequence[Triplet], fmt: Format, max_new_tokens: int,
                    batch_size: int = 16, progress: bool = True, fingerprint: str | None = None
                    ) -> dict[str, list[int]]:
    """The teacher's greedy answer ids to context + query for every triplet, cached on disk per model and data."""
    key_src = json.dumps([fingerprint or weights_fingerprint(teacher)[:16], fmt.separator, fmt.answer_prefix,
                          max_new_tokens, STOP_RULE, [(t.id, t.context, t.query) for t in triplets]])
    path = cache_dir() / "teacher" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.json"
    cached = _read_cache(path, [t.id for t in triplets])
    if cached is not None:
        return cached
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


TARGETS_VERSION = "answer-logprobs/1"  # part of the target store's key: what a stored tensor holds


class TeacherTargets:
    """The frozen teacher's log-probabilities (n_answer, vocab; fp32, or fp64 for an fp64 teacher) at the answer
    positions of each example,
    stored on disk once per (teacher weights, precision) and read back at every use.

    The values are a function of the teacher's weights (its fingerprint), the precision it ran under and the
    token ids it read (context + query + answer, so the data, the format and the stop rule that cut the answer
    are all in the key); one safetensors file per (ids, n_answer). A meta-step then runs no teacher forward and
    the frozen copy can leave memory.
    """

    def __init__(self, fingerprint: str, precision: str, root: Path | None = None) -> None:
        key = json.dumps([fingerprint, precision, TARGETS_VERSION])
        self.dir = (root or cache_dir() / "teacher-targets") / hashlib.sha256(key.encode()).hexdigest()[:24]

    def path(self, ids: Sequence[int], n_answer: int) -> Path:
        name = hashlib.sha256(json.dumps([list(ids), n_answer]).encode()).hexdigest()[:32]
        return self.dir / f"{name}.safetensors"

    def get(self, ids: Sequence[int], n_answer: int) -> torch.Tensor | None:
        """The stored log-probabilities of (ids, n_answer), or None if none are stored."""
        path = self.path(ids, n_answer)
        if not path.is_file():
            return None
        return load_file(path)["logprobs"]

    def put(self, ids: Sequence[int], n_answer: int, logprobs: torch.Tensor) -> None:
        """Store the log-probabilities of (ids, n_answer) (written apart, then renamed: readers see whole files)."""
        path = self.path(ids, n_answer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"logprobs": logprobs.detach().cpu().contiguous()}, tmp)
        tmp.replace(path)
