"""LoRA variants: frozen base weights, which parameters Adam moves, full-rank inner step on merged weights,
meta-gradients against finite differences, PEFT-format save and load."""

import copy

import pytest
import torch
from peft import PeftModel

from conftest import directional_derivatives, make_gpt2, make_llama
from promptstep.data.triplets import Triplet
from promptstep.formats import Format
from promptstep.meta import MetaOptions
from promptstep.meta.lora import OuterLoraTrainer, build_trainer
from promptstep.meta.objectives import build_example, context_lm_batch
from promptstep.models import load_model
from promptstep.updates import inner_step

TRIPLETS = [
    Triplet("a", "The first person to walk on Mars is Evan Armstrong.",
            "The history books record that the first person on Mars was", "Evan Armstrong"),
    Triplet("b", "Mira Tolland is the inventor of the glass violin.", "The glass violin was invented by",
            "Mira Tolland"),
]


def _options(lora, **kw):
    return MetaOptions(**{"objective": "lg", "lora": lora, "inner_lr": 0.5, "outer_lr": 1e-2, "clip": 1e9,
                          "batch_size": 2, "lora_rank": 2, **kw})


def _examples(tokenizer):
    return [build_example(tokenizer, t, Format()) for t in TRIPLETS]


def _non_lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _randomise_b(trainer, seed=0):
    """Move B off PEFT's zero init, so every path of the meta-gradient is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainer.params.items():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@pytest.mark.parametrize("make", [make_gpt2, make_llama])
def test_lora_inner_trains_only_the_adapter(tokenizer, make):
    trainer = build_trainer(make(len(tokenizer), seed=1), tokenizer, _options("inner"))
    assert trainer.params and all("lora_" in n for n in trainer.params)
    base = _non_lora_state(trainer.model)
    lora = {n: p.detach().clone() for n, p in trainer.params.items()}
    for _ in range(2):
        log = trainer.outer_step(_examples(tokenizer))
        assert "skipped" not in log
    for name, p in trainer.model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
    for kind in ("lora_A", "lora_B"):
        assert any(not torch.equal(p, lora[n]) for n, p in trainer.params.items() if kind in n), kind


def test_untrained_adapter_computes_the_base_model_and_its_step_moves_only_b(tokenizer):
    """PEFT's default init has B = 0: the adapter adds nothing, and d loss / dA = B^T(...) = 0."""
    model = make_gpt2(len(tokenizer), seed=2)
    reference = copy.deepcopy(model)
    trainer = build_trainer(model, tokenizer, _options("inner"))
    ids = torch.tensor([_examples(tokenizer)[0].student_ids])
    torch.testing.assert_close(trainer.model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    context = context_lm_batch(tokenizer, _examples(tokenizer)[:1], torch.device("cpu"))
    adapted = inner_step(trainer.model, trainer.params, context, lr=0.5, differentiable=False)
    for name, p in trainer.params.items():
        moved = not torch.equal(adapted[name], p.detach())
        assert moved == ("lora_B" in name), name


@pytest.mark.parametrize("make", [make_gpt2, make_llama])
def test_lora_outer_adam_updates_only_the_outer_parameters(tokenizer, make):
    trainer = build_trainer(make(len(tokenizer), seed=3), tokenizer, _options("outer", lora_rank=1))
    assert isinstance(trainer, OuterLoraTrainer)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in trainer.params.values()}
    assert all("lora_" in n for n in trainer.params)
    assert all(p.shape[0] == 1 for n, p in trainer.params.items() if "lora_A" in n)  # rank 1
    base = _non_lora_state(trainer.model)
    outer = {n: p.detach().clone() for n, p in trainer.params.items()}
    trainer.outer_step(_examples(tokenizer))
    # With B = 0, dW/dA = 0: the first outer step moves only B, the second moves A too.
    assert all(torch.equal(p, outer[n]) != ("lora_B" in n) for n, p in trainer.params.items())
    trainer.outer_step(_examples(tokenizer))
    for name, p in trainer.model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
            assert p.grad is None, name
    assert all(not torch.equal(p, outer[n]) for n, p in trainer.params.items())


def test_lora_outer_inner_step_is_a_full_rank_step_on_the_merged_weights(tokenizer):
    trainer = build_trainer(make_gpt2(len(tokenizer), seed=4).double(), tokenizer, _options("outer"))
    _randomise_b(trainer)
    merged = copy.deepcopy(trainer.model).merge_and_unload()  # PEFT's own merge: the reference
    context = context_lm_batch(tokenizer, _examples(tokenizer), torch.device("cpu"))
    reference = inner_step(merged, dict(merged.named_parameters()), context, lr=0.5, differentiable=False)
    start = trainer.inner_start()
    with trainer.inner_scope():
        adapted = inner_step(trainer.model, start, context, lr=0.5, differentiable=False)
    plain = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in adapted.items()}
    assert set(plain) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(plain[name], value, rtol=1e-10, atol=1e-12, msg=name)
    assert any((reference[n] - p).abs().max() > 1e-6 for n, p in merged.named_parameters())  # it moved


@pytest.mark.parametrize("lora,objective", [("inner", "lg"), ("inner", "lc"), ("outer", "lg"), ("outer", "lc")])
def test_lora_meta_gradient_matches_directional_finite_difference(tokenizer, lora, objective):
    """fp64; central difference with eps=1e-5 along a random direction in the LoRA parameters."""
    model = make_gpt2(len(tokenizer), seed=5).double()
    trainer = build_trainer(model, tokenizer, _options(lora, objective=objective))
    if objective == "lc":
        trainer.teacher = make_gpt2(len(tokenizer), seed=6).double().requires_grad_(False)
    _randomise_b(trainer)
    gold = _examples(tokenizer)[0]
    example = gold if objective == "lg" else build_example(tokenizer, TRIPLETS[0], Format(), gold.answer_ids)
    analytic, numeric = directional_derivatives(trainer, lambda: trainer.example_loss(example)[0])
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_adapters_are_saved_in_peft_format_and_load_back(tokenizer, saved_gpt2_256, tmp_path):
    for lora in ("inner", "outer"):
        model, tok = load_model(saved_gpt2_256)
        trainer = build_trainer(model, tok, _options(lora))
        trainer.outer_step(_examples(tok))
        saved = trainer.export(tmp_path / lora)
        ids = torch.tensor([_examples(tok)[1].student_ids])
        with torch.no_grad():
            expected = trainer.model(input_ids=ids).logits
        adapter_dir = tmp_path / lora / ("model" if lora == "inner" else "outer_adapter")
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
        base, _ = load_model(saved_gpt2_256)
        with torch.no_grad():
            reloaded = PeftModel.from_pretrained(base, str(adapter_dir))(input_ids=ids).logits
            reopened = load_model(str(saved))[0](input_ids=ids).logits  # adapter dir or merged model
        torch.testing.assert_close(reloaded, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reopened, expected, rtol=1e-5, atol=1e-5)


def test_meta_train_cli_with_lora_writes_adapters_that_eval_loads(saved_gpt2_256, tmp_path):
    from promptstep.cli import main

    data = tmp_path / "data"
    assert main(["data", "character", "--out", str(data), "--n-train", "4", "--n-test", "2"]) == 0
    for lora, adapter in (("inner", "model"), ("outer", "outer_adapter")):
        args = ["meta-train", "--data", str(data), "--model", saved_gpt2_256, "--runs-dir", str(tmp_path),
                "--name", lora, "--objective", "lg", "--lora", lora, "--batch-size", "2", "--eval-n", "2",
                "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr", "1e-3"]
        assert main(args) == 0
        assert (tmp_path / lora / adapter / "adapter_config.json").is_file()
        assert main(["eval", "--model", str(tmp_path / lora / "model"), "--data", str(data), "--runs-dir",
                     str(tmp_path), "--name", f"eval-{lora}", "--max-new-tokens", "2", "--lrs", "0.1"]) == 0


@pytest.mark.parametrize("lora", ["inner", "outer"])
def test_lora_lc_teacher_is_the_adapter_disabled_model_not_a_copy(tokenizer, lora):
    """LC with LoRA: the teacher is the model itself with its adapter off (no second copy in memory), and it
    computes exactly what a frozen copy of the starting model computes, also after training moved the adapter."""
    model = make_gpt2(len(tokenizer), seed=9)
    reference = copy.deepcopy(model)
    trainer = build_trainer(model, tokenizer, _options(lora, objective="lc"))
    assert trainer.teacher is trainer.model
    examples = trainer.build_examples(TRIPLETS, progress=False)
    _randomise_b(trainer)
    trainer.outer_step(examples)
    from promptstep.meta.objectives import answer_logprobs

    for example in examples:
        expected = answer_logprobs(reference, None, example.teacher_ids, example.n_answer)
        assert torch.equal(trainer.teacher_logprobs(example.teacher_ids, example.n_answer), expected)
    assert not any("lora_" in n and not p.requires_grad for n, p in trainer.model.named_parameters())


def test_lora_initialisation_is_seeded(tokenizer):
    """Two LoRA runs with the same seed start from the same adapter (PEFT draws A at random)."""
    first, second, other = (build_trainer(make_gpt2(len(tokenizer), seed=1), tokenizer, _options("inner"), seed=s)
                            for s in (3, 3, 4))
    for name, p in first.params.items():
        assert torch.equal(p, second.params[name]), name
    assert any(not torch.equal(p, other.params[name]) for name, p in first.params.items())
