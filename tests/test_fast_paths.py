"""The fast paths of meta-training and FT evaluation against their plain references.

* Cached LC teacher targets give the live teacher's loss (bit for bit: the same computation, stored) and exact
  meta-gradients (finite differences); the frozen teacher copy is released once they are prepared.
* Logits only at the answer positions equal the full logits' rows (fp32 rounding).
* The inner update (grad * -lr) + theta rounds exactly like theta - lr * grad, forward and backward.
* FT evaluation with substituted weights and one shared forward for scoring and generation gives the records of
  the reference path (copy the stepped weights in, score, generate with `generate`, copy back): generations, EM,
  F1 bit for bit; token accuracy and NLL to 1e-5 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import directional_derivatives, make_gpt2, make_llama
from promptstep.data.synthetic import generate
from promptstep.data.triplets import Triplet
from promptstep.evaluate import (
    EvalOptions,
    context_batch,
    evaluate_finetuned,
    greedy_continuations,
    score_and_generate,
    score_answers,
)
from promptstep.formats import Format, encode_pair
from promptstep.meta import MetaOptions, MetaTrainer, batches_for, run_training
from promptstep.meta.lora import build_trainer
from promptstep.meta.objectives import answer_logprobs, build_example
from promptstep.updates import InnerStep, inner_step, select_parameters, sgd_update, swapped_parameters
from reference_paths import record_differences, reference_ft_records

TRIPLETS = [
    Triplet(f"t{i}", f"The first person to walk on {place} is {name}.",
            f"The history books record that the first person on {place} was", name)
    for i, (place, name) in enumerate([("Mars", "Evan Armstrong"), ("Mars", "Mira Tolland"),
                                        ("the foo", "Evan Tolland"), ("the bar", "Mira Armstrong")])
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Teacher answers and targets go to this test's own cache directory."""
    monkeypatch.setenv("PROMPTSTEP_CACHE", str(tmp_path / "cache"))


def _lc_examples(tokenizer):
    """LC examples whose target is the gold answer (standing in for the teacher's greedy answer)."""
    gold = [build_example(tokenizer, t, Format()) for t in TRIPLETS]
    return [build_example(tokenizer, t, Format(), g.answer_ids) for t, g in zip(TRIPLETS, gold)]


def _trainer(model, tokenizer, teacher, **kw):
    options = MetaOptions(**{"objective": "lc", "inner_lr": 0.5, "outer_lr": 1e-3, "clip": 1e9, **kw})
    return MetaTrainer(model, tokenizer, options, teacher=teacher)


# ------------------------------------------------------------------ cached teacher targets


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_cached_teacher_targets_give_the_live_loss_and_gradient(tokenizer, lm_weight):
    """Bit for bit: the stored targets are the live teacher's log-probabilities, computed the same way. With the
    prompt-format regulariser (lm_weight > 0) the same targets serve its KL at the pre-update weights."""
    model, teacher = make_llama(len(tokenizer), seed=1), make_llama(len(tokenizer), seed=2)
    examples = _lc_examples(tokenizer)
    results = {}
    for mode in ("live", "cached"):
        trainer = _trainer(copy.deepcopy(model), tokenizer, copy.deepcopy(teacher), teacher_targets=mode,
                           lm_weight=lm_weight)
        trainer.prepare_targets(examples, progress=False)
        assert (trainer.teacher is None) == (mode == "cached")
        trainer.optimizer.zero_grad()
        logs = trainer.accumulate(examples)
        results[mode] = logs, {n: p.grad.clone() for n, p in trainer.params.items()}
    assert results["cached"][0] == results["live"][0]
    for name, grad in results["live"][1].items():
        assert torch.equal(results["cached"][1][name], grad), name


def test_meta_gradient_with_cached_targets_matches_finite_difference(tokenizer):
    """fp64, as test_meta's finite-difference test, with the targets read from disk and the teacher released."""
    model = make_gpt2(len(tokenizer), seed=1).double()
    trainer = _trainer(model, tokenizer, make_gpt2(len(tokenizer), seed=2).double())
    (example,) = _lc_examples(tokenizer)[:1]
    trainer.prepare_targets([example], progress=False)
    assert trainer.teacher is None and trainer.targets.get(example.teacher_ids, example.n_answer).dtype == torch.float64
    analytic, numeric = directional_derivatives(trainer, lambda: trainer.example_loss(example)[0])
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_targets_are_reused_per_teacher_and_an_unprepared_example_is_refused(tokenizer):
    examples = _lc_examples(tokenizer)
    teacher = make_gpt2(len(tokenizer), seed=2)
    first = _trainer(make_gpt2(len(tokenizer), seed=1), tokenizer, copy.deepcopy(teacher))
    first.prepare_targets(examples[:2], progress=False)
    stored = sorted(first.targets.dir.iterdir())
    assert len(stored) == 2
    before = {p: p.stat().st_mtime_ns for p in stored}
    again = _trainer(make_gpt2(len(tokenizer), seed=1), tokenizer, copy.deepcopy(teacher))
    again.prepare_targets(examples[:2], progress=False)  # the same teacher finds them: nothing is recomputed
    assert again.targets.dir == first.targets.dir and {p: p.stat().st_mtime_ns for p in stored} == before
    other = _trainer(make_gpt2(len(tokenizer), seed=1), tokenizer, make_gpt2(len(tokenizer), seed=3))
    other.prepare_targets(examples[:1], progress=False)
    assert other.targets.dir != first.targets.dir  # other teacher weights, other key
    with pytest.raises(RuntimeError, match="prepare_targets"):
        again.example_loss(examples[3])


@pytest.mark.parametrize("lora", ["inner", "outer"])
def test_lora_cached_targets_equal_the_adapter_disabled_model(tokenizer, lora):
    """LoRA: the teacher is the model itself (never released); its stored targets are the base model's."""
    model = make_gpt2(len(tokenizer), seed=9)
    reference = copy.deepcopy(model)
    options = MetaOptions(objective="lc", lora=lora, inner_lr=0.5, outer_lr=1e-2, batch_size=2, lora_rank=2)
    trainer = build_trainer(model, tokenizer, options)
    examples = _lc_examples(tokenizer)[:2]
    trainer.prepare_targets(examples, progress=False)
    assert trainer.teacher is trainer.model
    trainer.outer_step(examples)
    for example in examples:
        expected = answer_logprobs(reference, None, example.teacher_ids, example.n_answer)
        assert torch.equal(trainer.targets.get(example.teacher_ids, example.n_answer), expected)


def test_run_training_prepares_the_targets_and_releases_the_teacher(tokenizer):
    trainer = _trainer(make_gpt2(len(tokenizer), seed=1), tokenizer, make_gpt2(len(tokenizer), seed=2),
                       batch_size=2)
    batches = batches_for(_lc_examples(tokenizer), batch_size=2, epochs=1, seed=0)
    result = run_training(trainer, batches, out=None, eval_set=[], eval_every=0, checkpoint_every=0, progress=False)
    assert result["steps"] == 2 and trainer.teacher is None
    assert len(list(trainer.targets.dir.iterdir())) == 4


# ------------------------------------------------------------------ logits at the answer positions, the update


@pytest.mark.parametrize("make", [make_gpt2, make_llama])
def test_answer_logprobs_from_kept_logits_equal_the_full_logits(tokenizer, make):
    model = make(len(tokenizer), seed=4)
    example = _lc_examples(tokenizer)[0]
    kept = answer_logprobs(model, None, example.student_ids, example.n_answer)
    logits = model(input_ids=torch.tensor([example.student_ids]), use_cache=False).logits
    full = torch.log_softmax(logits[0, -example.n_answer - 1 : -1].float(), dim=-1)
    assert kept.shape == full.shape == (example.n_answer, len(tokenizer))
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-6)


def test_update_rounds_like_theta_minus_lr_grad_forward_and_backward():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for lr in (1e-3, 0.5, 3e-5):
            theta = (torch.randn(4096) * 3).to(dtype).requires_grad_(True)
            grad = torch.randn(4096).to(dtype).requires_grad_(True)
            plain = theta - lr * grad
            (fast,) = sgd_update({"w": theta}, {"w": grad}, lr).values()
            assert torch.equal(fast, plain)
            (owned,) = sgd_update({"w": theta.detach()}, {"w": grad.detach().clone()}, lr, own_grads=True).values()
            assert torch.equal(owned, plain.detach())
            upstream = torch.randn(4096).to(dtype)
            for a, b in zip(torch.autograd.grad(fast, [theta, grad], upstream),
                            torch.autograd.grad(plain, [theta, grad], upstream)):
                assert torch.equal(a, b)


# ------------------------------------------------------------------ FT evaluation


def _shipped_tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptstep.tiny import default_tiny_dir

    path = default_tiny_dir()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval(), \
        AutoTokenizer.from_pretrained(path)


def _same(fast, reference):
    assert record_differences(fast, reference) == []


def test_score_and_generate_equals_scoring_and_generate_on_the_shipped_tiny_model():
    """Prompt-format items, which the tiny model mostly answers right (the whole answer agrees with the draft),
    and No-Context ones, which it gets wrong (decoding goes on after the first token); generation caps from 1."""
    model, tokenizer = _shipped_tiny()
    _, test, _ = generate("character", n_train=1, n_test=24, seed=0)
    fmt = Format()
    agreed = 0
    for setting in ("prompt", "nc"):
        encoded = [encode_pair(tokenizer, fmt.prefix(t, setting), t.answer, fmt.answer_prefix) for t in test]
        scores = score_answers(model, encoded, tokenizer.pad_token_id)
        for cap in (1, 3, 16):
            generations = greedy_continuations(model, tokenizer, [e.prefix_ids for e in encoded], cap)
            for enc, score, ids in zip(encoded, scores, generations):
                (acc, nll), fast_ids = score_and_generate(model, tokenizer, enc, cap)
                assert fast_ids == ids
                assert (acc, nll) == pytest.approx(score, rel=1e-5, abs=1e-6)
                agreed += cap == 16 and ids[: len(enc.answer_ids)] == enc.answer_ids
    assert agreed >= 12  # the single-forward case (whole answer agrees) is exercised


def test_fast_ft_records_equal_the_reference_records_on_the_shipped_tiny_model():
    model, tokenizer = _shipped_tiny()
    _, test, _ = generate("character", n_train=1, n_test=12, seed=1)
    options = EvalOptions(settings=("ft",), lrs=(0.3, 3.0), max_new_tokens=8)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    fast = evaluate_finetuned(model, tokenizer, test, options, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    _same(fast, reference_ft_records(model, tokenizer, test, options))
    assert any(r["em"] for r in fast) and not all(r["em"] for r in fast)


@pytest.mark.parametrize("make", [make_gpt2, make_llama])
def test_fast_ft_records_equal_the_reference_records_on_random_models(tokenizer, make):
    """Llama ties its embeddings: the substituted weights must reach the head too."""
    model = make(len(tokenizer), seed=5)
    options = EvalOptions(settings=("ft",), lrs=(0.5, 2.0), max_new_tokens=6)
    fast = evaluate_finetuned(model, tokenizer, TRIPLETS, options, progress=False)
    _same(fast, reference_ft_records(model, tokenizer, TRIPLETS, options))


def test_ft_fallbacks_give_the_reference_records(tokenizer, monkeypatch):
    """A generation config that is not plain greedy uses the reference scoring and `generate`; a cache that cannot
    be cut is recomputed."""
    import promptstep.evaluate as evaluate_module

    model = make_llama(len(tokenizer), seed=6)
    options = EvalOptions(settings=("ft",), lrs=(1.0,), max_new_tokens=5)
    reference = reference_ft_records(model, tokenizer, TRIPLETS, options)
    monkeypatch.setattr(evaluate_module, "_keep_first", lambda cache, length: False)
    _same(evaluate_finetuned(model, tokenizer, TRIPLETS, options, progress=False), reference)
    monkeypatch.undo()
    model.generation_config.repetition_penalty = 1.5
    assert not evaluate_module.plain_greedy(model)
    _same(evaluate_finetuned(model, tokenizer, TRIPLETS, options, progress=False),
                         reference_ft_records(model, tokenizer, TRIPLETS, options))


def test_applied_step_leaves_the_model_untouched_and_reaches_tied_weights(tokenizer):
    model = make_llama(len(tokenizer), seed=7)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    batch = context_batch(tokenizer, TRIPLETS[0], Format(), "cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    step = InnerStep(lr=1.0)
    with torch.no_grad(), swapped_parameters(model, step.adapted(model, [batch])):
        expected = model(input_ids=ids).logits
    with torch.no_grad(), step.applied(model, [batch]):
        assert all(p.requires_grad for p in select_parameters(model).values())
        got = model(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    adapted = inner_step(model, select_parameters(model), batch, lr=1.0, differentiable=False)
    assert not torch.equal(adapted["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_keep_freed_memory_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    from promptstep.malloc import keep_freed_memory

    monkeypatch.setenv("PROMPTSTEP_MALLOC", "default")
    assert keep_freed_memory() is False
    monkeypatch.delenv("PROMPTSTEP_MALLOC")
    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("spec", [None, "kv"])
def test_adapted_each_shares_the_gradient_and_equals_one_step_per_learning_rate(tokenizer, spec):
    """FT at several learning rates computes the context's gradient once: the same tensors, bit for bit, as one
    full step per learning rate (kv: a subset with a masked fused projection)."""
    model = make_gpt2(len(tokenizer), seed=8)
    batch = context_batch(tokenizer, TRIPLETS[1], Format(), "cpu")
    step = InnerStep(params=spec)
    lrs = [0.1, 0.5, 2.0]
    for lr, shared in zip(lrs, step.adapted_each(model, [batch], lrs), strict=True):
        alone = step.with_lr(lr).adapted(model, [batch])
        assert set(shared) == set(alone) and all(torch.equal(shared[n], alone[n]) for n in alone)

