"""The three settings of the paper: No Context, Prompt, and one-step Fine-Tuning, scored per example."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.formats import (
    Encoded,
    Format,
    encode_pair,
    encode_text,
    ft_setting_names,
    lm_batch,
    pad_batch,
    to_device,
)
from promptstep.metrics import exact_match, f1_score, first_line, mean_se, normalize_answer, starts_with_answer
from promptstep.models import max_length
from promptstep.updates import InnerStep, forward_takes, keeps_logits, substituted_parameters

METRICS = ("em", "starts", "f1", "tok_acc", "nll")
# Metrics only some records carry, summarised over the records that have them (their count is `n_<metric>`):
# `distractor` (multi-fact items: the prediction is another fact's answer), `agree_prompt` (FT items evaluated with
# Prompt too: FT's prediction equals Prompt's), and the irrelevant-context leak (experiments.controls).
OPTIONAL_METRICS = ("distractor", "agree_prompt", "leak_em", "leak_starts", "leak_tok_acc")


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
        return [(name, self.inner.with_lr(lr)) for name, lr in zip(ft_setting_names(lrs), lrs)]


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


class AnswerEnd:
    """Token by token: True at the token that ends a generated answer (EOS, or the first newline token after
    non-blank text; newlines before any text do not end it)."""

    def __init__(self, newline_ids: set[int], blank_ids: set[int], eos_ids: set[int]) -> None:
        self.newline_ids, self.blank_ids, self.eos_ids = newline_ids, blank_ids, eos_ids
        self.started = False

    def __call__(self, token: int) -> bool:
        if token in self.eos_ids or (token in self.newline_ids and (self.started or token not in self.blank_ids)):
            return True
        self.started = self.started or token not in self.blank_ids
        return False


def cut_at_answer_end(ids: Sequence[int], newline_ids: set[int], blank_ids: set[int], eos_ids: set[int]
                      ) -> list[int]:
    """`ids` up to and including EOS or the first newline token after non-blank text (the generation's end)."""
    out: list[int] = []
    ended = AnswerEnd(newline_ids, blank_ids, eos_ids)
    for token in ids:
        out.append(token)
        if ended(token):
            break
    return out


def _token_ids(value) -> set[int]:
    return set(value if isinstance(value, list) else [value] if value is not None else [])


@torch.no_grad()
def greedy_continuations(model, tokenizer, prefixes: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation ids of each prefix, up to and including EOS or the newline that ends the answer.

    Newlines before any text are kept and do not end the answer (raw chat models often start with one).
    """
    batch = pad_batch(list(prefixes), tokenizer.pad_token_id, left=True)
    width, limit = batch["input_ids"].shape[1], max_length(model, tokenizer)
    if width + max_new_tokens > limit:  # fit_lengths keeps every command below this; a library caller may not
        raise InputError(f"generating {max_new_tokens} tokens after a {width}-token prompt would pass the model's "
                         f"{limit}-token window (fit the triplets first: formats.fit_lengths)")
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
    eos_ids = _token_ids(tokenizer.eos_token_id)
    return [cut_at_answer_end(row, newline_ids, blank_ids, eos_ids)
            for row in out[:, batch["input_ids"].shape[1] :].tolist()]


# Generation-config fields that make `generate` differ from plain greedy decoding, with their neutral values.
_GREEDY_NEUTRAL = {
    "num_beams": (None, 1), "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False), "guidance_scale": (None, 1.0),
    "stop_strings": (None,), "penalty_alpha": (None,), "dola_layers": (None,), "watermarking_config": (None,),
    "remove_invalid_values": (None, False), "prompt_lookup_num_tokens": (None,), "token_healing": (None, False),
}


def plain_greedy(model) -> bool:
    """Whether `generate(do_sample=False)` is plain greedy decoding for this model: its generation config asks for
    no beams, penalties, forced, suppressed or biased tokens, minimum length or stop strings (what
    `score_and_generate` reproduces)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    return all(getattr(config, key, None) in neutral for key, neutral in _GREEDY_NEUTRAL.items())


def _keep_first(cache, length: int) -> bool:
    """Cut a key/value cache back to its first `length` positions; False if this cache cannot be cut."""
    try:
        extra = cache.get_seq_length() - length
        if extra:
            cache.crop(-extra)  # a negative count removes that many positions from the end
        return cache.get_seq_length() == length
    except (AttributeError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return False


@torch.no_grad()
def score_and_generate(model, tokenizer, encoded: Encoded, max_new_tokens: int
                       ) -> tuple[tuple[float, float], list[int]]:
    """Teacher-forced (token accuracy, mean NLL per token) of the answer after its prefix, and the greedy
    continuation ids of the prefix (cut as `greedy_continuations` cuts them), from one forward of prefix + answer.

    Greedy decoding with the answer as its draft: that forward's predictions at the answer positions are the
    greedy tokens for as long as they agree with the answer, and the prediction at the first disagreement (or
    after the whole answer) is the next one; only beyond it does decoding go on, one token at a time from the
    forward's key/value cache cut back to the agreed tokens. A model that answers correctly is scored and
    generated in a single forward. The same tokens as `generate` for models with `plain_greedy` decoding, up to
    exact ties in floating point (the forwards differ in shape; they are tested equal to the reference path).
    """
    device = next(model.parameters()).device
    prefix, answer = list(encoded.prefix_ids), list(encoded.answer_ids)
    n = len(answer)
    inputs = {"input_ids": torch.tensor([prefix + answer], device=device), "use_cache": True}
    if keeps_logits(model):
        inputs["logits_to_keep"] = n + 1
    with record_function("scoring"):
        out = model(**inputs)
        logits = out.logits[0, -n - 1 :].float()  # the positions predicting answer[0], ..., answer[n-1], and after
        target = torch.tensor(answer, device=logits.device)
        logp = torch.log_softmax(logits[:n], dim=-1)
        nll = -logp.gather(1, target[:, None]).mean().item()
        acc = (logp.argmax(-1) == target).float().mean().item()
        greedy = logits.argmax(-1).tolist()
    with record_function("generation"):
        newline_ids, blank_ids = (set(ids.tolist()) for ids in special_token_sets(tokenizer))
        eos_ids = _token_ids(tokenizer.eos_token_id) | _token_ids(getattr(model.generation_config, "eos_token_id",
                                                                          None))
        ended = AnswerEnd(newline_ids, blank_ids, eos_ids)
        agreed = 0
        while agreed < n and greedy[agreed] == answer[agreed]:
            agreed += 1
        generated: list[int] = []
        for token in answer[:agreed] + [greedy[agreed]]:
            generated.append(token)
            if ended(token) or len(generated) >= max_new_tokens:
                return (acc, nll), generated
        name = "cache" if forward_takes(model, "cache") else "past_key_values"  # transformers >= 5.24 | before
        step = {"use_cache": True, **({"logits_to_keep": 1} if keeps_logits(model) else {})}
        cache = getattr(out, name)
        if not _keep_first(cache, len(prefix) + agreed):  # recompute the cache of the tokens so far
            ids = torch.tensor([prefix + generated[:-1]], device=device)
            cache = getattr(model(input_ids=ids, **step), name)
        while True:
            out = model(input_ids=torch.tensor([[generated[-1]]], device=device), **{name: cache}, **step)
            token = int(out.logits[0, -1].float().argmax())
            generated.append(token)
            if ended(token) or len(generated) >= max_new_tokens:
                return (acc, nll), generated
            cache = getattr(out, name)


def generate_answers(model, tokenizer, prefixes: Sequence[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy generated text after each prefix (special tokens dropped; cut at the stop as above)."""
    ids = greedy_continuations(model, tokenizer, prefixes, max_new_tokens)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def _record(triplet: Triplet, setting: str, generation: str, acc: float, nll: float, n_tok: int) -> dict:
    prediction = first_line(generation)
    record = {
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
    if triplet.distractors:  # a multi-fact item: did it answer with one of the other facts' names?
        record["distractor"] = exact_match(prediction, triplet.distractors)
    if triplet.tags:
        record["tags"] = dict(triplet.tags)
    return record


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
    """FT records: per triplet and learning rate, step on the context, then answer the query with the stepped
    weights.

    The stepped weights stand in for the model's own while it answers (`substituted_parameters`: nothing is
    copied in or out), one step's gradient serves every learning rate (`InnerStep.adapted_each`), and with plain
    greedy decoding one forward of query + answer gives both the scores and the start of the generation
    (`score_and_generate`); otherwise the answer is scored and generated as in NC / Prompt.
    """
    device = next(model.parameters()).device
    fast = plain_greedy(model)
    steps = options.ft_steps()
    records: list[dict] = []
    for triplet in tqdm(triplets, desc="eval ft", disable=not progress, unit="ex"):
        batch = context_batch(tokenizer, triplet, options.fmt, device)
        encoded = encode_pair(tokenizer, options.fmt.prefix(triplet, "ft"), triplet.answer, options.fmt.answer_prefix)
        stepped = options.inner.adapted_each(model, [batch], [step.lr for _, step in steps])
        for label, step in steps:
            with record_function("FT step"):
                adapted = next(stepped)
            with substituted_parameters(model, adapted):
                if fast:
                    (acc, nll), ids = score_and_generate(model, tokenizer, encoded, options.max_new_tokens)
                    record = _record(triplet, "ft", tokenizer.decode(ids, skip_special_tokens=True), acc, nll,
                                     len(encoded.answer_ids))
                else:
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
    mark_agreement(records)
    return records


def mark_agreement(records: Sequence[dict], reference: str = "prompt", prefix: str = "ft") -> None:
    """Give every record whose setting starts with `prefix` an `agree_prompt` field: 1.0 when its normalised
    prediction equals that of the `reference` record of the same item ("simulates prompting" means FT says what
    Prompt says, right or wrong), where such a record exists."""
    said = {r["id"]: normalize_answer(r["prediction"]) for r in records if r["setting"] == reference}
    for record in records:
        if record["setting"].startswith(prefix) and record["setting"] != reference and record["id"] in said:
            record["agree_prompt"] = float(normalize_answer(record["prediction"]) == said[record["id"]])


def summarize(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per setting: count, and mean and standard error of every metric (and of each optional metric over the
    records that carry it, with their count `n_<metric>` where that is not every record)."""
    summary: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == setting]
        entry: dict[str, float] = {"n": len(rows)}
        for metric in METRICS:
            mean, se = mean_se(r[metric] for r in rows)
            entry[metric] = mean
            entry[f"{metric}_se"] = se
        for metric in OPTIONAL_METRICS:
            values = [r[metric] for r in rows if metric in r]
            if values:
                entry[metric], entry[f"{metric}_se"] = mean_se(values)
                if len(values) != len(rows):
                    entry[f"n_{metric}"] = len(values)
        summary[setting] = entry
    return summary


GROUP_TAGS = ("n_facts", "family_split", "name_style")


def summarize_by_tag(records: Sequence[dict], tags: Sequence[str] = GROUP_TAGS) -> dict[str, dict]:
    """For each tag that records carry (number of facts, seen / held-out family, name style): a summary per value,
    e.g. {"n_facts": {"1": {...per setting...}, "2": {...}}}; records without the tag are left out."""
    grouped: dict[str, dict] = {}
    for tag in tags:
        values = sorted({str(r["tags"][tag]) for r in records if tag in r.get("tags", {})})
        if values:
            grouped[tag] = {value: summarize([r for r in records if str(r.get("tags", {}).get(tag)) == value])
                            for value in values}
    return grouped


@torch.no_grad()
def heldout_perplexity(model, tokenizer, texts: Sequence[str], max_tokens: int = 128) -> dict[str, float]:
    """Perplexity of plain text (no step, no prompt): exp of the mean next-token NLL over every predicted token of
    each text's first `max_tokens` tokens (fewer if the model's window is shorter) — how well the model still models
    language."""
    device = next(model.parameters()).device
    max_tokens = min(max_tokens, max_length(model, tokenizer))
    total_nll, total_tokens = 0.0, 0
    for text in texts:
        ids = encode_text(tokenizer, text)[:max_tokens]
        if len(ids) < 2:
            continue
        batch = to_device(lm_batch([ids], tokenizer.pad_token_id), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), batch["input_ids"][0, 1:], reduction="sum")
        total_nll += nll.item()
        total_tokens += len(ids) - 1
    if not total_tokens:
        raise InputError("held-out perplexity: no text has two tokens")
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "texts": len(texts)}

