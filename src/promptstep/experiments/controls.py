"""Controls that ask whether the learned step stores *the fact* (paper §5.3–5.5, Tables 4 and 5).

* irrelevant context: one step on a random other context, then the query; scored against the query's own
  answer and against the other context's answer (the *leak*: the model answers with what it just read);
* multi-fact contexts: the queried fact plus `d` distractor facts of other triplets, in a seeded order;
* the 2x2 correctness breakdown of each example without and with the step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, context_batch, evaluate_prompted, mark_agreement, score_answers, summarize
from promptstep.formats import encode_pair
from promptstep.metrics import exact_match, normalize_answer, starts_with_answer

CATEGORIES = ("always_incorrect", "always_correct", "correct_without_only", "only_correct_with")


class OtherFacts:
    """Draws, for a triplet, other triplets that state a different fact: another context and no common answer."""

    def __init__(self, triplets: Sequence[Triplet], rng: random.Random, tries: int = 1000) -> None:
        self.triplets, self.rng, self.tries = triplets, rng, tries
        self.answers = [{normalize_answer(a) for a in t.answers} for t in triplets]

    def draw(self, index: int, count: int) -> list[Triplet]:
        """`count` distinct such triplets for triplets[index], by rejection sampling."""
        own, chosen, seen = self.triplets[index], [], {index}
        for _ in range(self.tries):
            if len(chosen) == count:
                break
            j = self.rng.randrange(len(self.triplets))
            if j in seen:
                continue
            seen.add(j)
            if self.triplets[j].context != own.context and not self.answers[index] & self.answers[j]:
                chosen.append(self.triplets[j])
        if len(chosen) < count:
            raise InputError(f"triplet '{own.id}': found only {len(chosen)} other triplets with a different context "
                             f"and answer, {count} needed")
        return chosen


def irrelevant_partners(triplets: Sequence[Triplet], seed: int) -> list[Triplet]:
    """For each triplet, a random other triplet (different context and answer) whose context it steps on."""
    others = OtherFacts(triplets, random.Random(f"promptstep-irrelevant:{seed}"))
    return [others.draw(i, 1)[0] for i in range(len(triplets))]


def leak_scores(prediction: str, other: Triplet) -> dict[str, float]:
    """Whether a prediction is the irrelevant context's answer (exactly, or as its first words)."""
    return {"leak_em": exact_match(prediction, other.answers),
            "leak_starts": starts_with_answer(prediction, other.answers)}


def evaluate_irrelevant(model, tokenizer, triplets: Sequence[Triplet], options: EvalOptions, seed: int = 0,
                        progress: bool = True) -> list[dict]:
    """Per triplet, with a random other triplet's context: `irrelevant` = one FT step on that context, then the
    triplet's own query; `irrelevant_prompt` = that context in the prompt before the query (what "simulating
    prompting" should match). Both are scored against the triplet's own answer (em, tok_acc, ...) and against the
    other's (leak_em, leak_starts, leak_tok_acc); FT records carry `agree_prompt`. Weights restored."""
    device = next(model.parameters()).device
    (_, step), = options.ft_steps()
    records = []
    pairs = list(zip(triplets, irrelevant_partners(triplets, seed)))
    for triplet, other in tqdm(pairs, desc="eval irrelevant", disable=not progress, unit="ex"):
        with step.applied(model, [context_batch(tokenizer, other, options.fmt, device)]):
            (record,) = evaluate_prompted(model, tokenizer, [triplet], "nc", options, progress=False)
            records.append(_with_leak(model, tokenizer, record, "irrelevant", triplet, other, options, "nc"))
    swapped = [replace(triplet, context=other.context) for triplet, other in pairs]
    prompted = evaluate_prompted(model, tokenizer, swapped, "prompt", options, progress=progress)
    for record, (triplet, other) in zip(prompted, pairs):
        swapped_triplet = replace(triplet, context=other.context)
        records.append(_with_leak(model, tokenizer, record, "irrelevant_prompt", swapped_triplet, other, options,
                                  "prompt"))
    mark_agreement(records, reference="irrelevant_prompt", prefix="irrelevant")
    return records


def _with_leak(model, tokenizer, record: dict, setting: str, triplet: Triplet, other: Triplet, options: EvalOptions,
               layout: str) -> dict:
    """`record` renamed to `setting` with its leak scores: the other fact's answer after the same prefix."""
    leaked = encode_pair(tokenizer, options.fmt.prefix(triplet, layout), other.answer, options.fmt.answer_prefix)
    ((leak_acc, _),) = score_answers(model, [leaked], tokenizer.pad_token_id)
    record.update(setting=setting, irrelevant_id=other.id, irrelevant_answer=other.answer, leak_tok_acc=leak_acc,
                  **leak_scores(record["prediction"], other))
    return record


def summarize_irrelevant(records: Sequence[dict]) -> dict[str, float]:
    """The summary of the FT irrelevant-context records: the usual metrics plus each leak metric (mean ± SE)."""
    return summarize([r for r in records if r["setting"] == "irrelevant"])["irrelevant"]


def correctness_breakdown(records: Sequence[dict], metric: str = "em", without: str = "nc", with_: str = "ft"
                          ) -> dict[str, float]:
    """Share of examples in each cell of (correct without the step) x (correct with it); correct = metric == 1."""
    before = {r["id"]: r[metric] >= 1.0 for r in records if r["setting"] == without}
    after = {r["id"]: r[metric] >= 1.0 for r in records if r["setting"] == with_}
    ids = [i for i in before if i in after]
    if not ids:
        raise InputError(f"no example has both a '{without}' and a '{with_}' record")
    counts = dict.fromkeys(CATEGORIES, 0)
    for i in ids:
        key = {(False, False): "always_incorrect", (True, True): "always_correct",
               (True, False): "correct_without_only", (False, True): "only_correct_with"}[(before[i], after[i])]
        counts[key] += 1
    return {"n": len(ids), **{k: v / len(ids) for k, v in counts.items()}}


def with_distractors(triplets: Sequence[Triplet], d: int, seed: int, separator: str = " ") -> list[Triplet]:
    """Each triplet with `d` other triplets' contexts (different context and answer) joined into its context,
    the queried fact at a random position; ids get a '+d{d}' suffix."""
    if d < 0:
        raise InputError(f"distractors must be >= 0, got {d}")
    rng = random.Random(f"promptstep-distractors:{seed}:{d}")
    others = OtherFacts(triplets, rng)
    out = []
    for index, triplet in enumerate(triplets):
        facts = [t.context for t in others.draw(index, d)]
        facts.insert(rng.randrange(d + 1), triplet.context)
        out.append(Triplet(f"{triplet.id}+d{d}", separator.join(facts), triplet.query, triplet.answer,
                           triplet.answers))
    return out
