"""Several contexts per update: batched step = mean-loss step, sequential = consecutive steps, group summaries,
and meta-training with inner_k contexts per inner step — all against hand-written references."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import make_gpt2, make_llama
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions
from promptstep.experiments.multicontext import evaluate_groups, random_groups, summarize_groups, updated_parameters
from promptstep.formats import Format
from promptstep.meta import MetaOptions, MetaTrainer
from promptstep.meta.objectives import build_example

TRIPLETS = [
    Triplet("a", "The first person to walk on Mars is Evan Armstrong.", "The first person on Mars was",
            "Evan Armstrong"),
    Triplet("b", "Mira Tolland is the inventor of the glass violin.", "The glass violin was invented by",
            "Mira Tolland"),
    Triplet("c", "foobar foobar the foo", "the bar of the", "foo"),
    Triplet("d", "Question: who painted the ceiling? Answer: Michelangelo", "the ceiling was painted by",
            "Michelangelo"),
]
LR = 0.3


def _token_nll_sum(model, ids):
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")


def _manual_step(model, texts, tokenizer):
    """Reference: one SGD step on (sum of every context token's NLL) / (number of those tokens), each context
    run alone (no padding), gradient by loss.backward()."""
    model = copy.deepcopy(model)
    model.zero_grad()
    ids = [tokenizer(t).input_ids for t in texts]
    loss = sum(_token_nll_sum(model, i) for i in ids) / sum(len(i) - 1 for i in ids)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return model


# fp64 models; Llama's eager attention takes its softmax in fp32, so padding changes its last digits.
@pytest.mark.parametrize("make,atol", [(make_gpt2, 1e-12), (make_llama, 1e-8)])
def test_batched_update_is_one_step_on_the_mean_loss_over_all_context_tokens(tokenizer, make, atol):
    model = make(len(tokenizer), seed=1).double()
    options = EvalOptions(lrs=(LR,))
    adapted = updated_parameters(model, tokenizer, TRIPLETS[:3], "batched", options)
    reference = _manual_step(model, [t.context for t in TRIPLETS[:3]], tokenizer)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(adapted[name], p, rtol=0, atol=atol, msg=name)
    single = updated_parameters(model, tokenizer, TRIPLETS[:1], "batched", options)
    assert any(not torch.allclose(single[n], adapted[n]) for n in adapted)  # three contexts != one


def test_sequential_updates_are_consecutive_single_context_steps(tokenizer):
    model = make_gpt2(len(tokenizer), seed=2).double()
    adapted = updated_parameters(model, tokenizer, TRIPLETS[:3], "sequential", EvalOptions(lrs=(LR,)))
    reference = model
    for triplet in TRIPLETS[:3]:
        reference = _manual_step(reference, [triplet.context], tokenizer)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(adapted[name], p, rtol=1e-10, atol=1e-12, msg=name)


def test_random_groups_are_seeded_and_distinct():
    groups = random_groups(10, 4, 5, seed=3)
    assert groups == random_groups(10, 4, 5, seed=3) != random_groups(10, 4, 5, seed=4)
    assert all(len(set(g)) == 4 and all(0 <= i < 10 for i in g) for g in groups)
    with pytest.raises(InputError, match="at least 5 triplets"):
        random_groups(4, 5, 1, seed=0)


def test_group_summary_gives_the_standard_error_over_group_means():
    # Two groups of two queries: group means of em are 1.0 and 0.5 -> mean 0.75, SE = std([1, .5]) / sqrt(2).
    rows = [(0, 1.0), (0, 1.0), (1, 1.0), (1, 0.0)]
    records = [{"setting": "sequential@2", "updates": 2, "group": g, "em": em, "starts": 0.0, "f1": 0.0,
                "tok_acc": 0.0, "nll": 1.0} for g, em in rows]
    entry = summarize_groups(records)["sequential@2"]
    assert (entry["n"], entry["groups"]) == (4, 2)
    assert entry["em"] == pytest.approx(0.75)
    assert entry["em_se"] == pytest.approx(0.25)  # sqrt(0.125 / 2)


def test_evaluate_groups_answers_every_query_and_restores_the_weights(tokenizer):
    model = make_gpt2(len(tokenizer), seed=4)
    before = copy.deepcopy(model.state_dict())
    options = EvalOptions(lrs=(LR,), max_new_tokens=2)
    records = evaluate_groups(model, tokenizer, TRIPLETS, (1, 2), ("sequential", "batched"), 3, options,
                              progress=False)
    counts = {s: sum(r["setting"] == s for r in records) for s in ("1", "sequential@2", "batched@2")}
    assert counts == {"1": 3, "sequential@2": 6, "batched@2": 6}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_meta_training_with_inner_k_steps_once_on_the_group_then_scores_each_query(tokenizer):
    model = make_gpt2(len(tokenizer), seed=5).double()
    trainer = MetaTrainer(model, tokenizer, MetaOptions(objective="lg", inner_lr=LR, batch_size=2, inner_k=2))
    group = [build_example(tokenizer, t, Format()) for t in TRIPLETS[:2]]
    loss, _ = trainer.group_loss(group)
    adapted = _manual_step(model, [t.context for t in TRIPLETS[:2]], tokenizer)
    expected = 0.0
    for example in group:
        logits = adapted(input_ids=torch.tensor([example.student_ids])).logits[0, -example.n_answer - 1 : -1]
        expected += F.cross_entropy(logits, torch.tensor(example.answer_ids), reduction="sum").item()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(InputError, match="inner_k"):
        MetaOptions(batch_size=4, inner_k=3).validate()
