"""Format preparation (paper §4.3): supervised fine-tuning on a small saved subset in the Prompt and NC formats,
so the base model, the teacher and meta-training all start from a model that has seen the answer format."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.formats import Format, encode_pair, pad_batch, to_device

if TYPE_CHECKING:
    import torch



@dataclass
class PrepareOptions:
    """Subset size, optimisation and the weight of the NC-format loss relative to the Prompt format."""

    n_examples: int = 240
    """Size of the saved random subset of the split used for preparation (ids in subset_ids.json)."""
    steps: int = 30
    """AdamW steps."""
    batch_size: int = 8
    """Triplets per step, drawn from the subset."""
    lr: float = 3e-5
    """AdamW learning rate."""
    nc_weight: float = 0.5
    """Weight of the NC-format loss (query → answer) beside the Prompt-format loss (context + query → answer)."""
    seed: int = 0
    """Seed of the subset and of the batches."""

    def validate(self) -> None:
        for key in ("n_examples", "steps", "batch_size", "lr"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.nc_weight < 0:
            raise InputError(f"config key 'nc_weight' must be >= 0, got {self.nc_weight}")


def choose_subset(triplets: Sequence[Triplet], n: int, seed: int) -> list[Triplet]:
    """A seeded random subset of `n` triplets (all of them if there are fewer)."""
    order = list(range(len(triplets)))
    random.Random(seed).shuffle(order)
    return [triplets[i] for i in sorted(order[:n])]


def answer_nll(model, tokenizer, triplets: Sequence[Triplet], setting: str, fmt: Format) -> torch.Tensor:
    """Mean over triplets of the per-token NLL of answer + suffix after the setting's prefix."""
    import torch

    from promptstep.updates import at_least_fp32

    encoded = [encode_pair(tokenizer, fmt.prefix(t, setting), t.answer + fmt.answer_suffix, fmt.answer_prefix)
               for t in triplets]
    batch = pad_batch([e.ids for e in encoded], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logits = model(**to_device(batch, device), use_cache=False).logits
    losses = []
    for row, enc in enumerate(encoded):
        start, n = len(enc.prefix_ids), len(enc.answer_ids)
        logp = torch.log_softmax(at_least_fp32(logits[row, start - 1 : start - 1 + n]), -1)
        target = torch.tensor(enc.answer_ids, device=logp.device)
        losses.append(-logp.gather(1, target[:, None]).mean())
    return torch.stack(losses).mean()


def prepare_format(model, tokenizer, subset: Sequence[Triplet], options: PrepareOptions, fmt: Format | None = None,
                   progress: bool = True, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Fine-tune `model` in place with AdamW on Prompt-format (+ nc_weight x NC-format) answer NLL; return logs
    (`on_step` sees each step's log row as it is made: trackers)."""
    import torch
    from tqdm.auto import tqdm

    options.validate()
    fmt = fmt or Format()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr)
    rng = random.Random(options.seed)
    logs = []
    began = time.time()
    for step in tqdm(range(1, options.steps + 1), desc="prepare", disable=not progress, unit="step"):
        batch = rng.sample(list(subset), min(options.batch_size, len(subset)))
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            prompt_loss = answer_nll(model, tokenizer, batch, "prompt", fmt)
            nc_loss = answer_nll(model, tokenizer, batch, "nc", fmt)
            (prompt_loss + options.nc_weight * nc_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        logs.append({"step": step, "prompt_nll": prompt_loss.item(), "nc_nll": nc_loss.item(),
                     "elapsed_s": round(time.time() - began, 2)})
        if on_step:
            on_step(logs[-1])
    return logs
