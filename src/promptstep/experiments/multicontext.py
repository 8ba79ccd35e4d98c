"""Several contexts per update (paper §5.4, Table 2): after N updates on a random group of N contexts, answer
the queries of all N.

* sequential: N separate SGD steps, one per context, in the group's (random) order — "continual training";
* batched: one SGD step on the mean next-token loss over all the N contexts' tokens (what meta-training with
  `inner_k` = N trains for).

Groups are drawn with a seeded RNG, so every model is evaluated on the same groups; summaries average each
group first and give the standard error over groups.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import METRICS, EvalOptions, context_batch, evaluate_prompted
from promptstep.experiments import MODES
from promptstep.formats import encode_text, lm_batch, to_device
from promptstep.metrics import mean_se


def random_groups(n_items: int, size: int, n_groups: int, seed: int) -> list[list[int]]:
    """`n_groups` groups of `size` distinct indices into range(n_items), drawn with a seeded RNG."""
    if size > n_items:
        raise InputError(f"a group of {size} contexts needs at least {size} triplets, got {n_items}")
    rng = random.Random(f"promptstep-groups:{seed}:{size}")
    return [rng.sample(range(n_items), size) for _ in range(n_groups)]


def setting_label(mode: str, size: int) -> str:
    """'1' for one update (both modes are the same step), else e.g. 'sequential@4'."""
    return "1" if size == 1 else f"{mode}@{size}"


def updated_parameters(model, tokenizer, triplets: Sequence[Triplet], mode: str, options: EvalOptions) -> dict:
    """The FT parameters after the group's updates: one step per context (sequential) or one on all (batched)."""
    (_, step), = options.ft_steps()
    return step.adapted(model, update_batches(model, tokenizer, triplets, mode, options))


def update_batches(model, tokenizer, triplets: Sequence[Triplet], mode: str, options: EvalOptions) -> list[dict]:
    """The batches a group's updates step on: one per context (sequential) or one of all the contexts (batched)."""
    device = next(model.parameters()).device
    if mode == "batched":
        ids = [encode_text(tokenizer, options.fmt.inner_text(t)) for t in triplets]
        return [to_device(lm_batch(ids, tokenizer.pad_token_id), device)]
    if mode != "sequential":
        raise InputError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    return [context_batch(tokenizer, triplet, options.fmt, device) for triplet in triplets]


def evaluate_groups(model, tokenizer, triplets: Sequence[Triplet], sizes: Sequence[int], modes: Sequence[str],
                    n_groups: int, options: EvalOptions, seed: int = 0, progress: bool = True) -> list[dict]:
    """Records of every query of every group after the group's updates, per (mode, size); weights restored."""
    records: list[dict] = []
    jobs = [(mode, size) for size in sizes for mode in (modes[:1] if size == 1 else modes)]
    for mode, size in jobs:
        groups = random_groups(len(triplets), size, n_groups, seed)
        label = setting_label(mode, size)
        for index, group in enumerate(tqdm(groups, desc=f"eval {label}", disable=not progress, unit="group")):
            items = [triplets[i] for i in group]
            (_, step), = options.ft_steps()
            with step.applied(model, update_batches(model, tokenizer, items, mode, options)):
                answered = evaluate_prompted(model, tokenizer, items, "nc", options, progress=False)
            for record in answered:
                record.update(setting=label, mode=mode, updates=size, group=index)
            records += answered
    return records


def summarize_groups(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per setting: number of groups and queries, and mean ± SE over groups of each group's mean metric."""
    summary: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == setting]
        groups: dict[int, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["group"], []).append(row)
        entry: dict[str, float] = {"n": len(rows), "groups": len(groups), "updates": rows[0]["updates"]}
        for metric in METRICS:
            mean, se = mean_se(sum(r[metric] for r in g) / len(g) for g in groups.values())
            entry[metric] = mean
            entry[f"{metric}_se"] = se
        summary[setting] = entry
    return summary
