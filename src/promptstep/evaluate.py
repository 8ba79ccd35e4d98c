"""The three settings of the paper: No Context, Prompt, and one-step Fine-Tuning, scored per example."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from promptstep.data.triplets import Triplet
from promptstep.formats import Encoded, Format, encode_pair, encode_text, lm_batch, pad_batch, to_device
from promptstep.metrics import exact_match, f1_score, first_line, mean_se, starts_with_answer
from promptstep.updates import InnerStep

METRICS = ("em", "starts", "f1", "tok_acc", "nll")


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate: settings, the FT step (the inner step, at one or several learning rates), decoding and
    batching."""

    settings: tuple[str, ...] = ("nc", "prompt", "ft")
    lrs: tuple[float, ...] = ()  # FT at each of these learning rates (empty: the inner step's own)
    inner: InnerStep = field(default_factory=InnerStep)
    max_new_tokens: int = 16
    batch_size: int = 16
    fmt: Format = field(default_factory=Format)

    def ft_steps(self) -> list[tuple[str, InnerStep]]:
        """(setting name, step) of every FT setting: plain 'ft' when only one learning rate is evaluated."""
        lrs = self.lrs or (self.inner.lr,)
        return [("ft" if len(lrs) == 1 else f"ft@{lr:g}", self.inner.with_lr(lr)) for lr in lrs]


@torch.no_grad()
def score_answers(model, encoded: Sequence[Encoded], pad_id: int) -> list[tuple[float, float]]:
    """Teacher-forced (token accuracy, mean NLL per token) of each answer after its prefix."""
    batch = pad_batch([e.ids for e in encoded], pad_id)
    device = next(model.parameters()).device
    logits = model(**to_device(batch, device), use_cache=False).logits.float()
    results = []
    for row, enc in enumerate(encoded):
        start, n = len(enc.prefix_ids), len(enc.answer_ids)
        target = torch.tensor(enc.answer_ids, device=logits.device)
        logp = torch.log_softmax(logits[row, start - 1 : start - 1 + n], dim=-1)
        nll = -logp.gather(1, target[:, None]).mean().item()
        acc = (logp.argmax(-1) == target).float().mean().item()
        results.append((acc, nll))
    return results


class StopAfterAnswerLine(StoppingCriteria):
    """Stops each sequence at its first newline that follows non-blank generated text."""

    def __init__(self, tokenizer) -> None:
        self.newline_ids, self.blank_ids = special_token_sets(tokenizer)
        self.started: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1]
        if self.started is None:
            self.started = torch.zeros_like(last, dtype=torch.bool)
        blank = torch.isin(last, self.blank_ids.to(last.device))
        done = torch.isin(last, self.newline_ids.to(last.device)) & (self.started | ~blank)
        self.started = self.started | ~blank
        return done


def special_token_sets(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of the tokens whose text contains a newline, and of those whose text is only whitespace (cached)."""
    cached = getattr(tokenizer, "_promptstep_token_sets", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = (torch.tensor([i for i, text in enumerate(texts) if "\n" in text], dtype=torch.long),
                  torch.tensor([i for i, text in enumerate(texts) if not text.strip()], dtype=torch.long))
        tokenizer._promptstep_token_sets = cached
    return cached


def cut_at_answer_end(ids: Sequence[int], newline_ids: set[int], blank_ids: set[int], eos_ids: set[int]
                      ) -> list[int]:
    """`ids` up to and including EOS or the first newline token after non-blank text (the generation's end)."""
    out: list[int] = []
    started = False
    for token in ids:
        out.append(token)
        if token in eos_ids or (token in newline_ids and (started or token not in blank_ids)):
            break
        started = started or token not in blank_ids
    return out


@torch.no_grad()
def greedy_continuations(model, tokenizer, prefixes: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation ids of each prefix, up to and including EOS or the newline that ends the answer.

    Newlines before any text are kept and do not end the answer (raw chat models often start with one).
    """
    batch = pad_batch(list(prefixes), tokenizer.pad_token_id, left=True)
    device = next(model.parameters()).device
    out = model.generate(
        **to_device(batch, device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([StopAfterAnswerLine(tokenizer)]),
    )
    newline_ids, blank_ids = (set(ids.tolist()) for ids in special_token_sets(tokenizer))
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return [cut_at_answer_end(row, newline_ids, blank_ids, eos_ids)
            for row in out[:, batch["input_ids"].shape[1] :].tolist()]


def generate_answers(model, tokenizer, prefixes: Sequence[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy generated text after each prefix (special tokens dropped; cut at the stop as above)."""
    ids = greedy_continuations(model, tokenizer, prefixes, max_new_tokens)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def _record(triplet: Triplet, setting: str, generation: str, acc: float, nll: float, n_tok: int) -> dict:
    prediction = first_line(generation)
    return {
        "id": triplet.id,
        "setting": setting,
        "answer": triplet.answer,
        "generation": generation,
        "prediction": prediction,
        "em": exact_match(prediction, triplet.answers),
        "starts": starts_with_answer(prediction, triplet.answers),
        "f1": f1_score(prediction, triplet.answers),
        "tok_acc": acc,
        "nll": nll,
        "n_answer_tokens": n_tok,
    }


def _answer_with_current_weights(model, tokenizer, triplets, setting, options) -> list[dict]:
    encoded = [encode_pair(tokenizer, options.fmt.prefix(t, setting), t.answer, options.fmt.answer_prefix)
               for t in triplets]
    with record_function("scoring"):
        scores = score_answers(model, encoded, tokenizer.pad_token_id)
    with record_function("generation"):
        generations = generate_answers(model, tokenizer, [e.prefix_ids for e in encoded], options.max_new_tokens)
    return [
        _record(t, setting, g, acc, nll, len(e.answer_ids))
        for t, e, g, (acc, nll) in zip(triplets, encoded, generations, scores)
    ]


def evaluate_prompted(model, tokenizer, triplets: Sequence[Triplet], setting: str, options: EvalOptions,
                      progress: bool = True) -> list[dict]:
    """NC or Prompt records for every triplet, in batches."""
    records: list[dict] = []
    size = options.batch_size
    chunks = range(0, len(triplets), size)
    for start in tqdm(chunks, desc=f"eval {setting}", disable=not progress, unit="batch"):
        records += _answer_with_current_weights(model, tokenizer, triplets[start : start + size], setting, options)
    return records


def context_batch(tokenizer, triplet: Triplet, fmt: Format, device: torch.device) -> dict[str, torch.Tensor]:
    """The LM batch of the triplet's inner text (its context), on `device`."""
    batch = lm_batch([encode_text(tokenizer, fmt.inner_text(triplet))], tokenizer.pad_token_id)
    return to_device(batch, device)


def evaluate_finetuned(model, tokenizer, triplets: Sequence[Triplet], options: EvalOptions,
                       progress: bool = True) -> list[dict]:
    """FT records: per triplet and learning rate, step on the context, answer the query, restore weights."""
    device = next(model.parameters()).device
    records: list[dict] = []
    for triplet in tqdm(triplets, desc="eval ft", disable=not progress, unit="ex"):
        batch = context_batch(tokenizer, triplet, options.fmt, device)
        for label, step in options.ft_steps():
            with step.applied(model, [batch]):
                (record,) = _answer_with_current_weights(model, tokenizer, [triplet], "ft", options)
            record["setting"] = label
            record["lr"] = step.lr
            records.append(record)
    return records


def evaluate(model, tokenizer, triplets: Sequence[Triplet], options: EvalOptions,
             progress: bool = True) -> list[dict]:
    """Records for every triplet in every requested setting."""
    records: list[dict] = []
    for setting in options.settings:
        if setting == "ft":
            records += evaluate_finetuned(model, tokenizer, triplets, options, progress)
        else:
            records += evaluate_prompted(model, tokenizer, triplets, setting, options, progress)
    return records


def summarize(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per setting: count, and mean and standard error of every metric."""
    summary: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == setting]
        entry: dict[str, float] = {"n": len(rows)}
        for metric in METRICS:
            mean, se = mean_se(r[metric] for r in rows)
            entry[metric] = mean
            entry[f"{metric}_se"] = se
        summary[setting] = entry
    return summary
