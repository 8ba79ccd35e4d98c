"""GPU-path options of the meta-step, exercised on CPU: bf16 autocast, activation checkpointing, MATH attention."""

import copy

import pytest
import torch

from conftest import make_gpt2, make_llama
from promptstep.errors import InputError
from promptstep.meta import MetaOptions, MetaTrainer
from promptstep.meta.objectives import build_example
from promptstep.models import check_second_order
from promptstep.precision import checkpointed_layers, compute_dtype, meta_step_context
from test_meta import TRIPLETS, _fmt


def _meta_gradient(model, tokenizer, teacher=None, **options):
    """The meta-gradient of the first triplet's LC loss (gold answer as target), and the loss."""
    opts = MetaOptions(objective="lc", inner_lr=0.5, outer_lr=1e-3, clip=1e9, **options)
    trainer = MetaTrainer(model, tokenizer, opts, teacher=teacher)
    gold = build_example(tokenizer, TRIPLETS[0], _fmt())
    example = build_example(tokenizer, TRIPLETS[0], _fmt(), gold.answer_ids)
    loss, _ = trainer.example_loss(example)
    loss.backward()
    return trainer, loss, {n: p.grad for n, p in trainer.params.items()}


def _flat(grads):
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("maker", [make_gpt2, make_llama])
def test_bf16_autocast_keeps_fp32_master_weights_and_loss(tokenizer, maker):
    teacher = maker(len(tokenizer), seed=2)
    _, loss32, grads32 = _meta_gradient(maker(len(tokenizer), seed=1), tokenizer, teacher)
    trainer, loss16, grads16 = _meta_gradient(maker(len(tokenizer), seed=1), tokenizer, teacher, precision="bf16")
    assert loss16.dtype == torch.float32  # the KL is taken on fp32 log-probs
    assert all(p.dtype == torch.float32 for p in trainer.params.values())
    assert all(g.dtype == torch.float32 for g in grads16.values())
    a, b = _flat(grads32), _flat(grads16)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98
    assert (a - b).norm() / a.norm() > 1e-4  # bf16 products really ran (the gradients are not bit-equal)
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.05)


def test_bf16_teacher_copy_is_stored_in_bf16(tokenizer):
    trainer = MetaTrainer(make_gpt2(len(tokenizer)), tokenizer, MetaOptions(precision="bf16"))
    assert {p.dtype for p in trainer.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_unknown_precision_is_refused():
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        MetaOptions(precision="fp16").validate()
    assert compute_dtype("bf16") == torch.bfloat16


def _saved_numel(trainer, example):
    """Elements autograd saves for backward outside checkpointed regions, during one example's forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.example_loss(example)
    return total


@pytest.mark.parametrize("maker", [make_gpt2, make_llama])
def test_gradient_checkpointing_gives_the_same_second_order_meta_gradient(tokenizer, maker):
    """fp64, full-parameter inner step: checkpointed layers recompute with the adapted weights, so the
    meta-gradient is the same to rounding (without that, it is off by 5-20 % in relative norm)."""
    teacher = maker(len(tokenizer), seed=2).double()
    _, loss, plain = _meta_gradient(maker(len(tokenizer), seed=1).double(), tokenizer, teacher)
    trainer, loss_ckpt, checked = _meta_gradient(maker(len(tokenizer), seed=1).double(), tokenizer, teacher,
                                                 grad_checkpointing=True)
    assert loss_ckpt.item() == loss.item()
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-10, atol=1e-12, msg=name)
    gold = build_example(tokenizer, TRIPLETS[1], _fmt())
    reference = MetaTrainer(maker(len(tokenizer), seed=1).double(), tokenizer, MetaOptions(objective="lg"))
    assert _saved_numel(trainer, gold) < 0.8 * _saved_numel(reference, gold)  # it does save activations
    assert not any(m.training for m in trainer.model.modules())  # eval mode again outside the meta-step
    assert all(layer.gradient_checkpointing for layer in checkpointed_layers(trainer.model))


def test_sdpa_model_runs_the_meta_step_under_math_attention(tokenizer):
    """Fused SDPA has no double backward; the meta-step context restricts it to the MATH kernel, which gives
    the same meta-gradient as eager attention."""
    sdpa = make_gpt2(len(tokenizer), seed=1, attn="sdpa")
    with pytest.raises(InputError, match="no double backward"):
        check_second_order(sdpa)
    with meta_step_context(sdpa):
        check_second_order(sdpa)
    teacher = make_gpt2(len(tokenizer), seed=2)
    _, _, eager_grads = _meta_gradient(make_gpt2(len(tokenizer), seed=1), tokenizer, teacher)
    _, _, sdpa_grads = _meta_gradient(sdpa, tokenizer, copy.deepcopy(teacher))
    for name in eager_grads:
        torch.testing.assert_close(sdpa_grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_meta_train_cli_with_bf16_and_checkpointing(tmp_path, saved_gpt2_256):
    from promptstep.cli import main

    data = tmp_path / "data"
    assert main(["data", "character", "--out", str(data), "--n-train", "4", "--n-test", "2"]) == 0
    args = ["meta-train", "--data", str(data), "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--name", "m",
            "--eval-n", "2", "--max-new-tokens", "2", "--batch-size", "2", "--precision", "bf16",
            "--grad-checkpointing", "true", "--device", "cpu"]
    assert main(args) == 0
    log = (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and "skipped" not in log[0]
    assert "precision: bf16" in (tmp_path / "m" / "config.yaml").read_text()
