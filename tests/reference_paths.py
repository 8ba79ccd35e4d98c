"""Plain reference implementations that the library's fast paths are held equal to (tests/test_fast_paths.py) and
timed against (benchmarks/ft_eval.py). Not a test module: nothing here is collected."""

from __future__ import annotations

from collections.abc import Sequence

from promptstep.data.triplets import Triplet
from promptstep.evaluate import EvalOptions, _answer_with_current_weights, context_batch
from promptstep.updates import swapped_parameters


def reference_ft_records(model, tokenizer, triplets: Sequence[Triplet], options: EvalOptions) -> list[dict]:
    """FT the plain way (the library's path before issue 15): per triplet and learning rate, copy the stepped
    weights into the model, score the answer with its own forward, generate with `generate`, copy the weights
    back."""
    device = next(model.parameters()).device
    records = []
    for triplet in triplets:
        batch = context_batch(tokenizer, triplet, options.fmt, device)
        for label, step in options.ft_steps():
            with swapped_parameters(model, step.adapted(model, [batch])):
                (record,) = _answer_with_current_weights(model, tokenizer, [triplet], "ft", options)
            record["setting"], record["lr"] = label, step.lr
            records.append(record)
    return records


EXACT_FIELDS_TOLERANCE = {"tok_acc": 1e-5, "nll": 1e-5}  # relative; every other field must be equal


def record_differences(fast: Sequence[dict], reference: Sequence[dict]) -> list[str]:
    """Where two record lists differ: any field but token accuracy and NLL unequal, or those two off by more than
    1e-5 relative (1e-6 absolute)."""
    if len(fast) != len(reference):
        return [f"{len(fast)} records vs {len(reference)}"]
    out = []
    for got, want in zip(fast, reference):
        if set(got) != set(want):
            out.append(f"{want.get('id')}: fields {sorted(set(got) ^ set(want))}")
            continue
        for key, value in want.items():
            tolerance = EXACT_FIELDS_TOLERANCE.get(key)
            same = (got[key] == value if tolerance is None
                    else abs(got[key] - value) <= max(tolerance * abs(value), 1e-6))
            if not same:
                out.append(f"{want.get('id')} {want.get('setting')}: {key} {got[key]!r} vs {value!r}")
    return out
