"""Outer objectives: forward KL to a frozen prompted teacher (LC), gold-answer NLL (LG), and the LM regulariser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.profiler import record_function

from promptstep.data.triplets import Triplet
from promptstep.formats import Format, encode_pair, encode_text, lm_batch, to_device
from promptstep.updates import ParamDict, at_least_fp32, keeps_logits


@dataclass(frozen=True)
class MetaExample:
    """Token ids of one training triplet, ready for the inner step and the outer loss.

    The target answer (teacher's greedy answer for LC, gold answer for LG) ends both sequences.
    """

    id: str
    context_ids: list[int]
    student_ids: list[int]  # query + target answer
    teacher_ids: list[int]  # context + separator + query + target answer
    n_answer: int

    @property
    def answer_ids(self) -> list[int]:
        return self.student_ids[-self.n_answer :]


def build_example(tokenizer, triplet: Triplet, fmt: Format, answer_ids: Sequence[int] | None = None) -> MetaExample:
    """A MetaExample whose target is `answer_ids` (LC, the teacher's answer) or the gold answer plus newline."""
    if answer_ids is None:
        student = encode_pair(tokenizer, fmt.prefix(triplet, "nc"), triplet.answer + fmt.answer_suffix,
                              fmt.answer_prefix)
        prompted = encode_pair(tokenizer, fmt.prefix(triplet, "prompt"), triplet.answer + fmt.answer_suffix,
                               fmt.answer_prefix)
        # Keep one shared target: the tokens after the query; the prompted prefix is re-split to match.
        answer = student.answer_ids
        teacher_prefix = prompted.ids[: len(prompted.ids) - len(answer)]
        return MetaExample(triplet.id, encode_text(tokenizer, fmt.inner_text(triplet)), student.ids,
                           teacher_prefix + answer, len(answer))
    answer = list(answer_ids)
    if not answer:
        raise ValueError(f"empty target answer for {triplet.id}")
    query_ids = encode_text(tokenizer, fmt.prefix(triplet, "nc"))
    prompt_ids = encode_text(tokenizer, fmt.prefix(triplet, "prompt"))
    return MetaExample(triplet.id, encode_text(tokenizer, fmt.inner_text(triplet)), query_ids + answer,
                       prompt_ids + answer, len(answer))


def answer_logprobs(model: torch.nn.Module, params: ParamDict | None, ids: Sequence[int], n_answer: int
                    ) -> torch.Tensor:
    """Log-probabilities (n_answer, vocab), fp32, at the positions that predict the last `n_answer` tokens.

    The LM head runs only at the last n_answer + 1 positions where the model allows it (`keeps_logits`).
    """
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.tensor([list(ids)], device=device), "use_cache": False}
    if keeps_logits(model):
        inputs["logits_to_keep"] = n_answer + 1
    logits = (model(**inputs) if params is None else functional_call(model, params, args=(), kwargs=inputs)).logits
    return torch.log_softmax(at_least_fp32(logits[0, -n_answer - 1 : -1]), dim=-1)


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over the vocabulary and over answer positions."""
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")


def gold_nll(student_logp: torch.Tensor, answer_ids: Sequence[int]) -> torch.Tensor:
    """Negative log-likelihood of the answer tokens, summed over positions."""
    target = torch.tensor(list(answer_ids), device=student_logp.device)
    return -student_logp.gather(1, target[:, None]).sum()


def context_lm_batch(tokenizer, examples: Sequence[MetaExample], device: torch.device) -> dict[str, torch.Tensor]:
    """The LM batch (with labels, right-padded) of the examples' contexts, on `device`."""
    return to_device(lm_batch([e.context_ids for e in examples], tokenizer.pad_token_id), device)


class Objective:
    """An outer objective: the target answers of the training examples and the loss of a student's answer
    log-probabilities after the inner step. One registry entry per objective (`OBJECTIVES`)."""

    name: str = ""
    needs_teacher: bool = False

    def examples(self, trainer, triplets: Sequence[Triplet], progress: bool = True) -> list[MetaExample]:
        raise NotImplementedError

    def loss(self, trainer, student_logp: torch.Tensor, example: MetaExample) -> torch.Tensor:
        raise NotImplementedError


class Conditioning(Objective):
    """LC (paper Eq. 8): forward KL from the frozen teacher prompted with the context to the student after the
    step, at every position of the teacher's greedy answer."""

    name, needs_teacher = "lc", True

    def examples(self, trainer, triplets, progress=True):
        answers = trainer.teacher_answers(triplets, progress=progress)
        return [build_example(trainer.tokenizer, t, trainer.fmt, answers[t.id]) for t in triplets if answers[t.id]]

    def loss(self, trainer, student_logp, example):
        teacher_logp = trainer.teacher_logprobs(example.teacher_ids, example.n_answer)
        with record_function("KL / target loss"):
            return forward_kl(teacher_logp, student_logp)


class GoldLabels(Objective):
    """LG (paper Eq. 9, sign fixed): NLL of the gold answer (plus newline) under the adapted weights."""

    name = "lg"

    def examples(self, trainer, triplets, progress=True):
        return [build_example(trainer.tokenizer, t, trainer.fmt) for t in triplets]

    def loss(self, trainer, student_logp, example):
        with record_function("KL / target loss"):
            return gold_nll(student_logp, example.answer_ids)


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (Conditioning(), GoldLabels())}

