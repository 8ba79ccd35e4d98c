"""WikiText-style triplets from prose paragraphs: context = a prefix, query = the next word(s), answer = what follows.

The paper's example cuts mid-sentence with a 1-word query and a ~5-word continuation
("... The story focuses on" / "the" / "respected London doctor Henry Jekyll"); those are the defaults.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError


@dataclass(frozen=True)
class SpanOptions:
    """How a paragraph is cut: word counts of the query and the answer, and the range of context lengths.

    The split point (the context's length in words) is drawn uniformly from
    [min_context_words, min(max_context_words, words - query_words - answer_words)] with a generator seeded by
    (seed, paragraph id), so a paragraph is cut the same way whatever else is in the corpus.
    """

    query_words: int = 1
    answer_words: int = 5
    min_context_words: int = 20
    max_context_words: int = 150

    def validate(self) -> None:
        for key in ("query_words", "answer_words", "min_context_words", "max_context_words"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.max_context_words < self.min_context_words:
            raise InputError(f"max_context_words ({self.max_context_words}) is below min_context_words "
                             f"({self.min_context_words})")


def prose_triplets(paragraphs: Sequence[tuple[str, str]], spans: SpanOptions,
                   seed: int) -> tuple[list[Triplet], Counter]:
    """One triplet per (id, paragraph), and the count of paragraphs dropped as too short, by reason."""
    spans.validate()
    triplets: list[Triplet] = []
    dropped: Counter = Counter()
    tail = spans.query_words + spans.answer_words
    for pid, text in paragraphs:
        words = text.split()
        if len(words) < spans.min_context_words + tail:
            dropped[f"fewer than {spans.min_context_words + tail} words"] += 1
            continue
        cut = random.Random(f"promptstep-prose:{seed}:{pid}").randint(
            spans.min_context_words, min(spans.max_context_words, len(words) - tail))
        query_end = cut + spans.query_words
        triplets.append(Triplet(id=pid, context=" ".join(words[:cut]), query=" ".join(words[cut:query_end]),
                                answer=" ".join(words[query_end : query_end + spans.answer_words])))
    return triplets, dropped


def sample(triplets: list[Triplet], limit: int | None, seed: int) -> list[Triplet]:
    """At most `limit` triplets drawn with a seeded generator, kept in corpus order (all of them if no limit)."""
    if not limit or limit >= len(triplets):
        return triplets
    keep = set(random.Random(f"promptstep-sample:{seed}").sample(range(len(triplets)), limit))
    return [t for i, t in enumerate(triplets) if i in keep]


_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]'])")
_SPACE_AFTER = re.compile(r"([(\[$]) ")


def tidy_spacing(text: str) -> str:
    """Undo tokenised spacing ("word , word ( x )" -> "word, word (x)") and collapse whitespace."""
    text = " ".join(text.split())
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))
