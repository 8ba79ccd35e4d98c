"""Probes for the instruments: MR polarity with demonstrations, and Character Description with its context.

A probe is one test input in three settings. ZS and FT read `zs_ids`; ICL reads `icl_ids` (demonstrations
or context in front). States are recorded at the last token of each; the attention scores run to the
`n_keys` test-input tokens that end both sequences. FT trains on the group's `demos`, in ICL order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from promptstep.analysis.metrics import option_prediction
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.formats import Format, encode_pair, encode_text

MR_FILE = "pang_lee_polarity.cor"
MR_TEMPLATE = "Review: {text} Sentiment:"  # Deutch et al.'s MR template and verbalizers
MR_VERBALIZERS = ("Negative", "Positive")
MR_SEPARATOR = "\n"


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 0 negative, 1 positive


@dataclass(frozen=True)
class Probe:
    """One test input: its sequences, the shared test-input suffix, and what counts as correct."""

    id: str
    zs_ids: tuple[int, ...]
    icl_ids: tuple[int, ...]
    n_keys: int
    target_id: int  # first token of the gold answer (verbalizer) at the prediction position
    option_ids: tuple[int, ...] = ()  # first token of each verbalizer (classification)
    label: int | None = None  # gold option index
    logits_at: int = -1  # where the prediction is read (-2 when the label token is appended)

    def correct(self, logits) -> bool:
        """Option-restricted argmax for classification, full-vocabulary argmax otherwise."""
        if self.option_ids:
            return option_prediction(logits, self.option_ids) == self.label
        return int(logits.argmax()) == self.target_id


@dataclass(frozen=True)
class ProbeGroup:
    """Probes that share one FT training set: `demos`, token ids of each text, in ICL order."""

    demos: tuple[tuple[int, ...], ...]
    probes: tuple[Probe, ...]


def special_prefix(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts in front of a text (e.g. BOS), or none."""
    with_special = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return with_special[: len(with_special) - len(plain)] if with_special[-len(plain) :] == plain else []


def _pieces(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common suffix of two id sequences."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def load_reviews() -> list[Review]:
    """The 200 Pang & Lee polarity sentences (100 negative, 100 positive) in gensim's test data."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise InputError("the MR task reads pang_lee_polarity.cor from gensim (pip install gensim)") from None
    path = Path(datapath(MR_FILE))
    reviews = []
    for number, line in enumerate(path.read_text(encoding="cp1252").splitlines(), 1):  # the original encoding
        tag, _, text = line.strip().partition(" ")
        if tag not in ("__label__neg", "__label__pos") or not text.strip():
            raise InputError(f"{path}:{number}: expected '__label__neg|__label__pos TEXT'")
        reviews.append(Review(text.strip(), int(tag == "__label__pos")))
    return reviews


def split_reviews(reviews: Sequence[Review], n_demos: int, n_test: int, seed: int) -> tuple[list[Review], list[Review]]:
    """Seeded shuffle; the first `n_demos` are the demonstrations, the next `n_test` the test inputs."""
    if n_demos + n_test > len(reviews):
        raise InputError(f"n_demos + n_test = {n_demos + n_test} is more than the {len(reviews)} MR sentences")
    order = list(range(len(reviews)))
    random.Random(seed).shuffle(order)
    shuffled = [reviews[i] for i in order]
    return shuffled[:n_demos], shuffled[n_demos : n_demos + n_test]


def demo_orders(k: int, count: int, seed: int) -> list[list[int]]:
    """The identity order of k demonstrations, then `count` − 1 further distinct random orders (seeded)."""
    if count > math.factorial(k):
        raise InputError(f"permutations {count} is more than the {math.factorial(k)} orders of {k} demonstrations")
    orders = [list(range(k))]
    seen = {tuple(orders[0])}  # a set: checking a list would take count^2 steps (40,320 orders of 8 demos)
    rng = random.Random(seed)
    while len(orders) < count:
        order = rng.sample(range(k), k)
        if tuple(order) not in seen:
            seen.add(tuple(order))
            orders.append(order)
    return orders


def mr_group(tokenizer, demos: Sequence[Review], tests: Sequence[Review], position: str) -> ProbeGroup:
    """ICL = BOS + (demonstration + newline)* + test prompt; FT = one SGD step per demonstration, in that order.

    Pieces are tokenised separately and concatenated, so the test prompt has the same ids in every setting.
    With position "label" the first verbalizer's first token is appended (Dai's code records there).
    """
    start = special_prefix(tokenizer)
    demo_ids = [_pieces(tokenizer, MR_TEMPLATE.format(text=d.text) + " " + MR_VERBALIZERS[d.label]) for d in demos]
    context = [i for ids in demo_ids for i in ids + _pieces(tokenizer, MR_SEPARATOR)]
    probes = []
    for index, review in enumerate(tests):
        prompt = MR_TEMPLATE.format(text=review.text)
        options = tuple(encode_pair(tokenizer, prompt, v).answer_ids[0] for v in MR_VERBALIZERS)
        if len(set(options)) < len(options):
            raise InputError(f"the MR verbalizers {MR_VERBALIZERS} share their first token in this tokenizer")
        test = _pieces(tokenizer, prompt)
        if position == "label":
            test.append(options[0])
        probes.append(Probe(f"mr-{index:03d}", tuple(start + test), tuple(start + context + test), len(test),
                            options[review.label], options, review.label, -2 if position == "label" else -1))
    return ProbeGroup(tuple(tuple(start + ids) for ids in demo_ids), tuple(probes))


def character_groups(tokenizer, triplets: Sequence[Triplet], fmt: Format, position: str) -> list[ProbeGroup]:
    """One group per triplet: ZS = the query (NC), ICL = context ⊕ query (Prompt), FT = one step on the context.

    The test-input keys are the query tokens both sequences end with; position "label" appends the gold
    answer's first token.
    """
    start = len(special_prefix(tokenizer))
    groups = []
    for triplet in triplets:
        zs = encode_text(tokenizer, fmt.prefix(triplet, "nc"))
        icl = encode_text(tokenizer, fmt.prefix(triplet, "prompt"))
        target = encode_pair(tokenizer, fmt.prefix(triplet, "nc"), triplet.answer, fmt.answer_prefix).answer_ids[0]
        n_keys = min(common_suffix(zs, icl), len(zs) - start)
        if n_keys < 1:
            raise InputError(f"triplet '{triplet.id}': the query shares no tokens with the end of the prompt")
        if position == "label":
            zs, icl, n_keys = [*zs, target], [*icl, target], n_keys + 1
        probe = Probe(triplet.id, tuple(zs), tuple(icl), n_keys, target,
                      logits_at=-2 if position == "label" else -1)
        groups.append(ProbeGroup((tuple(encode_text(tokenizer, fmt.inner_text(triplet))),), (probe,)))
    return groups
