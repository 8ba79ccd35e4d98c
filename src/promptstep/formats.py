"""How each setting renders its text, and joint tokenisation of prefix and answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError

SETTINGS = ("nc", "prompt", "ft")

if TYPE_CHECKING:
    import torch



@dataclass(frozen=True)
class Format:
    """Text layout: Prompt = context + separator + query; NC and FT = query; answers follow `answer_prefix`.

    Training targets (format preparation, gold meta-targets) end with `answer_suffix`, so a trained model
    ends its answer with a newline, where greedy generation stops.
    """

    separator: str = " "
    answer_prefix: str = " "
    answer_suffix: str = "\n"

    def prefix(self, triplet: Triplet, setting: str) -> str:
        """The text the model answers after: the query, with the context in front for 'prompt'."""
        if setting == "prompt":
            return triplet.context + self.separator + triplet.query
        if setting in ("nc", "ft"):
            return triplet.query
        raise InputError(f"unknown setting '{setting}' (choose from {', '.join(SETTINGS)})")

    def inner_text(self, triplet: Triplet) -> str:
        """The text the inner gradient step trains on: the context alone."""
        return triplet.context


@dataclass(frozen=True)
class Encoded:
    """Token ids of a prefix and of the answer that follows it (the answer owns any boundary merge)."""

    prefix_ids: list[int]
    answer_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix_ids + self.answer_ids


def encode_pair(tokenizer, prefix: str, answer: str, answer_prefix: str = " ") -> Encoded:
    """Tokenise prefix + answer as one string; tokens not shared with the prefix alone belong to the answer."""
    full = tokenizer(prefix + answer_prefix + answer).input_ids
    alone = tokenizer(prefix).input_ids
    shared = 0
    for a, b in zip(full, alone):
        if a != b:
            break
        shared += 1
    if shared == len(full):
        raise InputError(f"answer {answer!r} adds no tokens after {prefix[-40:]!r}")
    return Encoded(prefix_ids=full[:shared], answer_ids=full[shared:])


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a plain text (what an LM loss is taken on)."""
    return tokenizer(text).input_ids


def pad_batch(sequences: list[list[int]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad id lists into `input_ids` and `attention_mask` tensors (right padding unless `left`)."""
    import torch  # here, not at the top: the CLI imports this module for --help

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of a batch moved to `device`."""

    return {k: v.to(device) for k, v in batch.items()}


def lm_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch with `labels` for a next-token loss over every real token."""

    batch = pad_batch(sequences, pad_id)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def fit_lengths(triplets: list[Triplet], tokenizer, limit: int, fmt: Format, truncate: bool,
                source: str) -> list[Triplet]:
    """Check that every Prompt-format sequence fits in `limit` tokens; cut contexts from the left if `truncate`."""
    fitted = []
    for triplet in triplets:
        length = len(encode_pair(tokenizer, fmt.prefix(triplet, "prompt"), triplet.answer, fmt.answer_prefix).ids)
        if length <= limit:
            fitted.append(triplet)
            continue
        if not truncate:
            raise InputError(
                f"{source}: triplet '{triplet.id}' is {length} tokens in the Prompt format, over the model's limit "
                f"of {limit} (pass --truncate true to cut its context)"
            )
        context_ids = tokenizer(triplet.context, add_special_tokens=False).input_ids
        keep = len(context_ids) - (length - limit) - 1
        if keep < 1:
            raise InputError(f"{source}: triplet '{triplet.id}' does not fit in {limit} tokens even without context")
        context = tokenizer.decode(context_ids[-keep:]).lstrip()
        fitted.append(Triplet(triplet.id, context, triplet.query, triplet.answer, triplet.answers))
    return fitted
