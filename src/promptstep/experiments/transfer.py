"""Cross-dataset transfer (paper §5.5, Table 3): a model meta-trained on a source dataset is taught a target
dataset's answer format, either afterwards (sequential: format fine-tuning on the target's preparation subset)
or at the same time (joint: the meta-loss on the source plus the format loss on the target in every outer step).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from promptstep.data.triplets import Triplet
from promptstep.formats import Format
from promptstep.prepare import PrepareOptions, answer_nll


def format_loss(model, tokenizer, batch: Sequence[Triplet], options: PrepareOptions, fmt: Format) -> torch.Tensor:
    """The format-preparation loss of a batch: Prompt-format answer NLL + nc_weight x NC-format answer NLL."""
    return (answer_nll(model, tokenizer, batch, "prompt", fmt)
            + options.nc_weight * answer_nll(model, tokenizer, batch, "nc", fmt))


def joint_objective(model, tokenizer, subset: Sequence[Triplet], options: PrepareOptions, weight: float,
                    fmt: Format | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `MetaTrainer` inject hook: adds `weight` x the format loss of a fresh random batch of the target's
    preparation subset (at the current weights) to each outer loss."""
    fmt = fmt or Format()
    rng = random.Random(f"promptstep-joint:{options.seed}")
    pool = list(subset)

    def add_format_loss(meta_loss: torch.Tensor) -> torch.Tensor:
        batch = rng.sample(pool, min(options.batch_size, len(pool)))
        return meta_loss + weight * format_loss(model, tokenizer, batch, options, fmt)

    return add_format_loss
