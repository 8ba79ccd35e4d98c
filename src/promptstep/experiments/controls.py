"""Controls that ask whether the learned step stores *the fact* (paper §5.3–5.5, Tables 4 and 5).

* irrelevant context: one step on a random other context, then the query; scored against the query's own
  answer and against the other context's answer (the *leak*: the model answers with what it just read);
* multi-fact contexts: the queried fact plus `d` distractor facts of other triplets, in a seeded order;
* the 2x2 correctness breakdown of each example without and with the step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, context_batch, evaluate_prompted, score_answers, summarize
from promptstep.formats import encode_pair
from promptstep.metrics import exact_match, mean_se, normalize_answer, starts_with_answer

LEAK_METRICS = ("leak_em", "leak_starts", "leak_tok_acc")
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
    """Per triplet: one FT step on a random other triplet's context, then its own query, scored against its own
    answer (em, tok_acc, ...) and the other's (leak_em, leak_starts, leak_tok_acc); weights restored."""
    device = next(model.parameters()).device
    (_, step), = options.ft_steps()
    records = []
    pairs = list(zip(triplets, irrelevant_partners(triplets, seed)))
    for triplet, other in tqdm(pairs, desc="eval irrelevant", disable=not progress, unit="ex"):
        with step.applied(model, [context_batch(tokenizer, other, options.fmt, device)]):
            (record,) = evaluate_prompted(model, tokenizer, [triplet], "nc", options, progress=False)
            leaked = encode_pair(tokenizer, options.fmt.prefix(triplet, "nc"), other.answer, options.fmt.answer_prefix)
            ((leak_acc, _),) = score_answers(model, [leaked], tokenizer.pad_token_id)
        record.update(setting="irrelevant", irrelevant_id=other.id, irrelevant_answer=other.answer,
                      leak_tok_acc=leak_acc, **leak_scores(record["prediction"], other))
        records.append(record)
    return records


def summarize_irrelevant(records: Sequence[dict]) -> dict[str, float]:
    """The usual summary of the irrelevant-context records plus the mean ± SE of each leak metric."""
    (entry,) = summarize(records).values()
    for metric in LEAK_METRICS:
        entry[metric], entry[f"{metric}_se"] = mean_se(r[metric] for r in records)
    return entry


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
