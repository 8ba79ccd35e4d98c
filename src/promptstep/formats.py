"""How each setting renders its text, and joint tokenisation of prefix and answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError

SETTINGS = ("nc", "prompt", "ft")


def ft_setting_names(lrs: tuple[float, ...]) -> list[str]:
    """The FT setting of each learning rate: 'ft' when there is one, else 'ft@LR'; InputError if two rates
    print alike (their rows would merge into one setting with n doubled)."""
    if len(lrs) == 1:
        return ["ft"]
    names = [f"ft@{lr:g}" for lr in lrs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InputError(f"learning rates {lrs[names.index(name)]!r} and {lrs[i]!r} are both written {name}; "
                             "give rates that differ in their first 6 digits")
    return names

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


def needed_length(tokenizer, triplet: Triplet, fmt: Format, new_tokens: int = 0) -> int:
    """Tokens of the longest sequence any command builds from `triplet`: its Prompt-format prefix followed by the
    answer (scored, or trained on with the answer's suffix), or by `new_tokens` generated tokens (greedy answers,
    the LC teacher's included, stop at most there). Every other sequence (NC, FT, the context alone) is shorter."""
    prefix = fmt.prefix(triplet, "prompt")
    answered = encode_pair(tokenizer, prefix, triplet.answer + fmt.answer_suffix, fmt.answer_prefix)
    return max(len(answered.ids), len(encode_text(tokenizer, prefix)) + new_tokens)


TRUNCATE_HINT = " (pass --truncate true to cut its context)"


def fit_lengths(triplets: list[Triplet], tokenizer, limit: int, fmt: Format, truncate: bool, source: str,
                new_tokens: int = 0, hint: str = TRUNCATE_HINT) -> list[Triplet]:
    """Check that every sequence built from each triplet, generation of `new_tokens` included, fits in `limit`
    tokens (`needed_length`); if `truncate`, cut contexts from the left until it does. The one place lengths
    are fitted: eval, controls, multi-context, transfer, prepare and meta-train (whose LC teacher generates)."""
    fitted = []
    for triplet in triplets:
        length = needed_length(tokenizer, triplet, fmt, new_tokens)
        if length <= limit:
            fitted.append(triplet)
            continue
        generated = f" (with {new_tokens} tokens generated after the prompt)" if new_tokens else ""
        if not truncate:
            raise InputError(f"{source}: triplet '{triplet.id}' is {length} tokens in the Prompt format{generated}, "
                             f"over the model's limit of {limit}{hint}")
        fitted.append(_truncated(triplet, tokenizer, limit, fmt, new_tokens, length, source, generated))
    return fitted


def _truncated(triplet: Triplet, tokenizer, limit: int, fmt: Format, new_tokens: int, length: int, source: str,
               generated: str) -> Triplet:
    """`triplet` with its context cut from the left until `needed_length` fits in `limit` (re-measured after each
    cut: decoding and re-encoding the kept tokens can merge them differently)."""
    context_ids = tokenizer(triplet.context, add_special_tokens=False).input_ids
    keep = len(context_ids) - (length - limit) - 1
    while keep >= 1:
        context = tokenizer.decode(context_ids[-keep:]).strip()
        if context:
            cut = replace(triplet, context=context)
            length = needed_length(tokenizer, cut, fmt, new_tokens)
            if length <= limit:
                return cut
            keep -= length - limit
        else:
            keep -= 1
    raise InputError(f"{source}: triplet '{triplet.id}' does not fit in {limit} tokens{generated} even without "
                     "context")
