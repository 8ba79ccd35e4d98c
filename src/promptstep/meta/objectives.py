"""Outer objectives: forward KL to a frozen prompted teacher (LC), gold-answer NLL (LG), and the LM regulariser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from promptstep.data.triplets import Triplet
from promptstep.formats import Format, encode_pair, encode_text, lm_batch, to_device
from promptstep.updates import ParamDict, at_least_fp32

OBJECTIVES = ("lc", "lg")


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
    """Log-probabilities (n_answer, vocab), fp32, at the positions that predict the last `n_answer` tokens."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], device=device)
    if params is None:
        logits = model(input_ids=input_ids, use_cache=False).logits
    else:
        logits = functional_call(model, params, args=(), kwargs={"input_ids": input_ids, "use_cache": False}).logits
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
