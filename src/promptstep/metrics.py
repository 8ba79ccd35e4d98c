"""Answer metrics (SQuAD v1.1 normalisation, EM, F1) and summary statistics with standard errors."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(generation: str) -> str:
    """The generated answer: the first non-blank line, stripped."""
    return generation.strip().split("\n", 1)[0].strip()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def starts_with_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction begins with a normalised gold answer, word for word."""
    words = normalize_answer(prediction).split()
    return float(any(words[: len(gold)] == gold for gold in (normalize_answer(a).split() for a in answers)))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD v1.1 token F1, the maximum over gold answers."""
    return max(_f1(prediction, a) for a in answers)


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    data = [float(v) for v in values]
    if not data:
        return float("nan"), float("nan")
    mean = sum(data) / len(data)
    if len(data) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in data) / (len(data) - 1)
    return mean, math.sqrt(var / len(data))
