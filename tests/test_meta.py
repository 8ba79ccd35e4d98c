"""Meta-gradients against references: finite differences, first order, batched graph, plain NLL training, resume."""

import copy

import pytest
import torch

from conftest import directional_derivatives, make_gpt2, make_llama
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.meta import MetaOptions, MetaTrainer, batches_for
from promptstep.meta.objectives import MetaExample, build_example, forward_kl
from promptstep.rules import NO_ADAPTERS, RULES

TRIPLETS = [
    Triplet(f"t{i}", f"The first person to walk on {place} is {name}.",
            f"The history books record that the first person on {place} was", name)
    for i, (place, name) in enumerate([("Mars", "Evan Armstrong"), ("Mars", "Mira Tolland"),
                                        ("the foo", "Evan Tolland"), ("the bar", "Mira Armstrong")])
]


def _examples(tokenizer, objective="lg"):
    # Targets fixed to the gold answer ids (for LC they stand in for the teacher's greedy answer).
    gold = [build_example(tokenizer, t, _fmt()) for t in TRIPLETS]
    return gold if objective == "lg" else [build_example(tokenizer, t, _fmt(), g.answer_ids)
                                           for t, g in zip(TRIPLETS, gold)]


def _fmt():
    from promptstep.formats import Format

    return Format()


def _trainer(model, tokenizer, objective="lc", teacher=None, **kw):
    opts = MetaOptions(objective=objective, **{"inner_lr": 0.5, "outer_lr": 1e-3, "clip": 1e9, **kw})
    return MetaTrainer(model, tokenizer, opts, teacher=teacher)


def _loss_at(trainer, example):
    loss, _ = trainer.example_loss(example)
    return loss


@pytest.mark.parametrize("objective", ["lc", "lg"])
def test_meta_gradient_matches_directional_finite_difference(tokenizer, objective):
    """fp64; central difference with eps=1e-5; agreement to 1e-5 relative (first order is off by > 1e-3)."""
    model = make_gpt2(len(tokenizer), seed=1).double()
    teacher = make_gpt2(len(tokenizer), seed=2).double()
    trainer = _trainer(model, tokenizer, objective, teacher=teacher)
    (example,) = _examples(tokenizer, objective)[:1]
    analytic, numeric = directional_derivatives(trainer, lambda: _loss_at(trainer, example))
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_second_order_differs_from_first_order(tokenizer):
    model = make_llama(len(tokenizer), seed=1).double()
    teacher = make_llama(len(tokenizer), seed=2).double()
    (example,) = _examples(tokenizer)[:1]
    grads = {}
    for first_order in (False, True):
        trainer = _trainer(copy.deepcopy(model), tokenizer, "lc", teacher=teacher, first_order=first_order)
        _loss_at(trainer, example).backward()
        grads[first_order] = torch.cat([p.grad.flatten() for p in trainer.params.values()])
    diff = (grads[False] - grads[True]).norm() / grads[False].norm()
    assert diff > 1e-3
    assert torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0) > 0.5


def test_one_by_one_accumulation_equals_a_batched_graph(tokenizer):
    model = make_gpt2(len(tokenizer), seed=3)
    teacher = make_gpt2(len(tokenizer), seed=4)
    trainer = _trainer(model, tokenizer, "lc", teacher=teacher)
    batch = _examples(tokenizer, "lc")
    trainer.optimizer.zero_grad()
    trainer.accumulate(batch)
    accumulated = {n: p.grad.clone() for n, p in trainer.params.items()}
    total = sum(_loss_at(trainer, ex) for ex in batch) / len(batch)
    reference = torch.autograd.grad(total, list(trainer.params.values()))
    for (name, _), ref in zip(trainer.params.items(), reference):
        torch.testing.assert_close(accumulated[name], ref, rtol=1e-4, atol=1e-7)


def test_kl_is_zero_when_student_equals_teacher(tokenizer):
    model = make_gpt2(len(tokenizer), seed=5)
    trainer = _trainer(model, tokenizer, "lc", teacher=copy.deepcopy(model), inner_lr=0.0)
    ex = _examples(tokenizer, "lc")[0]
    same = MetaExample(ex.id, ex.context_ids, ex.student_ids, ex.student_ids, ex.n_answer)
    loss, _ = trainer.example_loss(same)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    logp = torch.log_softmax(torch.randn(3, 7), -1)
    assert forward_kl(logp, logp).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.log_softmax(torch.randn(3, 7), -1)
    assert forward_kl(logp, other).item() > 0


def test_lg_with_zero_inner_lr_is_plain_nll_training(tokenizer):
    model = make_gpt2(len(tokenizer), seed=6)
    reference = copy.deepcopy(model)
    trainer = _trainer(model, tokenizer, "lg", inner_lr=0.0, clip=1.0)
    batch = _examples(tokenizer, "lg")
    trainer.outer_step(batch)
    trainer.outer_step(batch)
    params = [p for p in reference.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        for ex in batch:
            ids = torch.tensor([ex.student_ids])
            logits = reference(input_ids=ids).logits[0, -ex.n_answer - 1 : -1]
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ex.answer_ids), reduction="sum")
            (nll / len(batch)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_resumed_run_equals_uninterrupted_run(tokenizer, tmp_path):
    batches = batches_for(_examples(tokenizer, "lc"), batch_size=2, epochs=3, seed=0)
    teacher = make_gpt2(len(tokenizer), seed=8)

    def fresh():
        trainer = _trainer(make_gpt2(len(tokenizer), seed=7), tokenizer, "lc", teacher=teacher, outer_lr=1e-2)
        return trainer

    straight = fresh()
    for batch in batches:
        straight.outer_step(batch)
    first = fresh()
    for batch in batches[:3]:
        first.outer_step(batch)
    first.save(tmp_path / "ckpt")
    resumed = fresh()
    assert resumed.restore(tmp_path / "ckpt")["step"] == 3
    for batch in batches[resumed.step_count :]:
        resumed.outer_step(batch)
    for name, p in straight.params.items():
        assert torch.equal(p, resumed.params[name]), name


def test_non_finite_loss_skips_the_step(tokenizer):
    trainer = _trainer(make_gpt2(len(tokenizer), seed=9), tokenizer, "lg")
    before = {n: p.detach().clone() for n, p in trainer.params.items()}
    log = trainer.outer_step(_examples(tokenizer)[:2], inject=lambda loss: loss * float("nan"))
    assert log["skipped"] and trainer.bad_steps == 1
    assert all(torch.equal(before[n], p) for n, p in trainer.params.items())
    log = trainer.outer_step(_examples(tokenizer)[:2])
    assert "skipped" not in log and trainer.bad_steps == 0


def test_bad_options_are_rejected():
    with pytest.raises(InputError, match="unknown objective"):
        MetaOptions(objective="kl").validate()
    with pytest.raises(InputError, match="'outer_lr' must be positive"):
        MetaOptions(outer_lr=0).validate()
    with pytest.raises(InputError, match="'inner_lr' must be >= 0"):
        MetaOptions(inner_lr=-1e-3).validate()


# Every inner rule (a module in promptstep/rules/) x objective x LoRA mode x contexts per step. A new rule file is
# picked up by RULES and needs its row here: the options it is tested with (none so far).
RULE_CASES = {"sgd": {}, "lcgd": {}}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("lora", ["none", "inner", "outer"])
@pytest.mark.parametrize("objective", ["lc", "lg"])
@pytest.mark.parametrize("rule", RULES)
def test_every_inner_rule_meta_gradient_matches_finite_difference(tokenizer, rule, objective, lora, k):
    """fp64 GPT-2; the outer loss of one group of k contexts (one inner step of the rule on all of them, each
    query's target loss after it, plus the prompt-format regulariser) against a central finite difference along a
    random direction of whatever the outer step trains (all weights, or the LoRA adapter)."""
    from promptstep.meta import build_trainer

    assert rule in RULE_CASES, f"inner rule '{rule}' has no entry in RULE_CASES"
    if lora != "none" and rule in NO_ADAPTERS:  # refused up front, with the reason
        with pytest.raises(InputError, match=f"inner_rule '{rule}' does not work with lora '{lora}'"):
            MetaOptions(inner_rule=rule, lora=lora).validate()
        return
    options = MetaOptions(objective=objective, inner_rule=rule, inner_lr=0.5, outer_lr=1e-3, clip=1e9, lora=lora,
                          lora_rank=2, batch_size=2, inner_k=k, lm_weight=0.5, **RULE_CASES[rule])
    trainer = build_trainer(make_gpt2(len(tokenizer), seed=1).double(), tokenizer, options)
    if objective == "lc" and lora == "none":
        trainer.teacher = make_gpt2(len(tokenizer), seed=2).double().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B off its zero init, so every path through the adapter is exercised
        for name, p in trainer.params.items():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    group = _examples(tokenizer, objective)[:k]
    analytic, numeric = directional_derivatives(trainer, lambda: trainer.group_loss(group)[0])
    assert analytic == pytest.approx(numeric, rel=1e-5)
    assert abs(analytic) > 1e-6  # the direction really moves the loss


def test_general_text_regulariser_is_the_plain_next_token_loss_of_a_fixed_passage(tokenizer):
    """lm_source text: lambda * L_LM is the pre-update model's next-token loss on one general-text passage per
    example (the same passage every time an example is seen), and its meta-gradient matches a finite difference."""
    from promptstep.formats import encode_text

    model = make_gpt2(len(tokenizer), seed=1).double()
    texts = ["Paris is the capital of France and its largest city.", "The river Nile flows north into the sea.",
             "a"]  # one token: too short to have a next-token loss, so it is left out
    options = MetaOptions(objective="lg", inner_lr=0.5, outer_lr=1e-3, clip=1e9, lm_weight=0.7, lm_source="text",
                          lm_text_tokens=6)
    trainer = MetaTrainer(model, tokenizer, options)
    with pytest.raises(InputError, match="set_lm_texts"):
        trainer.example_loss(_examples(tokenizer)[0])
    trainer.set_lm_texts(texts)
    assert trainer.lm_texts == [encode_text(tokenizer, t)[:6] for t in texts[:2]]
    for example in _examples(tokenizer):
        passage = trainer.lm_text_for(example)
        assert passage in trainer.lm_texts and trainer.lm_text_for(example) == passage
        _, parts = trainer.example_loss(example)
        with torch.no_grad():  # mean NLL of each next token, in the model's own precision (fp64 here)
            logits = model(input_ids=torch.tensor([passage])).logits[0, :-1]
            expected = torch.nn.functional.cross_entropy(logits, torch.tensor(passage[1:])).item()
        assert parts["lm"] == pytest.approx(expected, rel=1e-10)
    ids = [f"t{i}" for i in range(100)]  # spread over the passages by a hash of the id
    used = [tuple(trainer.lm_text_for(MetaExample(i, [], [], [], 0))) for i in ids]
    assert 30 <= used.count(tuple(trainer.lm_texts[0])) <= 70
    example = _examples(tokenizer)[0]
    analytic, numeric = directional_derivatives(trainer, lambda: trainer.example_loss(example)[0])
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_combined_regulariser_is_the_sum_of_its_sources(tokenizer):
    """lm_source prompt+text: lambda * (L_prompt + L_text), each term what the single-source run computes."""
    model = make_gpt2(len(tokenizer), seed=1).double()
    teacher = make_gpt2(len(tokenizer), seed=2).double()
    example = _examples(tokenizer, "lc")[0]
    parts = {}
    for source in ("prompt", "text", "prompt+text"):
        trainer = _trainer(model, tokenizer, "lc", teacher=teacher, lm_weight=0.5, lm_source=source)
        trainer.set_lm_texts(["Paris is the capital of France and its largest city."])
        loss, parts[source] = trainer.example_loss(example)
        assert loss.item() == pytest.approx(parts[source]["target"] + 0.5 * parts[source]["lm"], rel=1e-12)
    assert parts["prompt"]["lm"] > 0 and parts["text"]["lm"] > 0
    assert parts["prompt+text"]["lm"] == pytest.approx(parts["prompt"]["lm"] + parts["text"]["lm"], rel=1e-12)
    for bad, message in (("prompt+prompt", "names a source twice"), ("prompt+web", "unknown lm_source"),
                         ("", "unknown lm_source")):
        with pytest.raises(InputError, match=message):
            MetaOptions(lm_source=bad).validate()
