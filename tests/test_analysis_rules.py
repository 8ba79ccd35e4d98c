"""GD and Layer-Causal GD against autograd references; LCGD as the inner rule of meta-training."""

import copy

import pytest
import torch

from conftest import directional_derivatives, make_gpt2, make_llama
from promptstep.analysis.hooks import anatomy_of
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.formats import Format, encode_text, lm_batch
from promptstep.meta import MetaOptions, MetaTrainer
from promptstep.meta.objectives import build_example
from promptstep.rules.lcgd import layer_causal_gradients, layer_losses
from promptstep.updates import InnerStep, select_parameters
from promptstep.updates import parameter_subset as trainable

TEXT = "The first person to walk on Mars is Evan Armstrong."
FACTORIES = {"gpt2": make_gpt2, "llama": make_llama}


def _batch(tokenizer, text=TEXT):
    return lm_batch([encode_text(tokenizer, text)], tokenizer.pad_token_id)


def _detached_reference(model, batch):
    """Independent LCGD: every block's input detached by a pre-hook, logit-lens losses of every block."""
    anatomy = anatomy_of(model)
    outputs = []

    def detach_input(_module, args, kwargs):
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}

    def keep(_module, _args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_pre_hook(detach_input, with_kwargs=True) for layer in anatomy.layers]
    handles += [layer.register_forward_hook(keep) for layer in anatomy.layers]
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    labels = batch["labels"][:, 1:].flatten()
    return [torch.nn.functional.cross_entropy(anatomy.unembed(h)[:, :-1].flatten(0, 1), labels) for h in outputs]


def _layer_params(model, index):
    anatomy = anatomy_of(model)
    return {n: p for n, p in model.named_parameters() if anatomy.layer_of(n) == index}


@pytest.mark.parametrize("family", FACTORIES)
def test_with_detached_inputs_higher_layer_losses_give_lower_layers_zero_gradient(tokenizer, family):
    model = FACTORIES[family](len(tokenizer), seed=1)
    losses = _detached_reference(model, _batch(tokenizer))
    n_layers = len(losses)
    for j in range(n_layers):
        for index in range(n_layers):
            params = list(_layer_params(model, index).values())
            grads = torch.autograd.grad(losses[j], params, retain_graph=True, allow_unused=True)
            total = sum(float(g.abs().sum()) for g in grads if g is not None)
            if index == j:
                assert total > 0
            else:
                assert total == 0.0, (j, index)


@pytest.mark.parametrize("family", FACTORIES)
def test_lcgd_equals_the_detached_reference_and_differs_from_backprop(tokenizer, family):
    model = FACTORIES[family](len(tokenizer), seed=2)
    batch = _batch(tokenizer)
    params = select_parameters(model)
    lcgd = layer_causal_gradients(model, params, batch, create_graph=False)
    reference = torch.autograd.grad(sum(_detached_reference(model, batch)), list(params.values()), allow_unused=True)
    anatomy = anatomy_of(model)
    for (name, _), ref in zip(params.items(), reference):
        if anatomy.layer_of(name) is None:  # embeddings, final norm, head: frozen by LCGD
            assert torch.count_nonzero(lcgd[name]) == 0, name
        else:
            torch.testing.assert_close(lcgd[name], ref, rtol=1e-5, atol=1e-7, msg=name)
    # Ordinary backprop of the same summed losses reaches layer 0 from the layers above it.
    full = torch.autograd.grad(sum(layer_losses(model, params, batch)), list(params.values()), allow_unused=True)
    name0 = next(n for n in params if anatomy.layer_of(n) == 0 and n.endswith("weight"))
    full0 = dict(zip(params, full))[name0]
    assert (full0 - lcgd[name0]).norm() > 1e-3 * full0.norm()


def test_lcgd_of_a_layer_ignores_the_layers_above_it(tokenizer):
    model = make_llama(len(tokenizer), seed=3)
    batch = _batch(tokenizer)
    name = "model.layers.0.self_attn.v_proj.weight"
    before = layer_causal_gradients(model, select_parameters(model), batch, False)[name]
    with torch.no_grad():
        for p in _layer_params(model, 1).values():
            p.add_(torch.randn_like(p))
    assert torch.equal(layer_causal_gradients(model, select_parameters(model), batch, False)[name], before)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.5 * torch.randn_like(model.model.embed_tokens.weight))
    assert not torch.allclose(layer_causal_gradients(model, select_parameters(model), batch, False)[name], before)


def test_kv_parameters_of_llama_and_the_kv_columns_of_gpt2():
    llama = make_llama(300)
    params, masks = trainable(llama, "kv")
    assert params and not masks and all(".k_proj." in n or ".v_proj." in n for n in params)
    gpt2 = make_gpt2(300)
    params, masks = trainable(gpt2, "kv")
    assert set(params) == set(masks) and all(".attn.c_attn." in n for n in params)
    weight = masks["transformer.h.0.attn.c_attn.weight"]
    assert weight.shape == (32, 96) and weight[:, :32].sum() == 0 and weight[:, 32:].min() == 1
    assert len(trainable(gpt2, "all")[0]) == len(list(gpt2.parameters()))
    with pytest.raises(InputError, match="matches no parameter"):
        trainable(gpt2, "nothing_like_this")


def test_gd_epoch_equals_sequential_manual_sgd_on_kv_columns(tokenizer):
    """SGD, batch 1, one epoch in order; GPT-2's query columns stay put."""
    model = make_gpt2(len(tokenizer), seed=4)
    texts = [encode_text(tokenizer, t) for t in (TEXT, "Mira Tolland is the inventor of the glass violin.")]
    params, masks = trainable(model, "kv")
    adapted = InnerStep(lr=0.5, params="kv").adapted(model, [lm_batch([ids], tokenizer.pad_token_id) for ids in texts])
    reference = copy.deepcopy(model)
    for ids in texts:
        reference.zero_grad()
        reference(**lm_batch([ids], tokenizer.pad_token_id)).loss.backward()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name in masks:
                    p -= 0.5 * p.grad * masks[name]
    ref = dict(reference.named_parameters())
    for name, value in adapted.items():
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-6)
        original = dict(model.named_parameters())[name]
        assert torch.equal(value[..., :32], original[..., :32])  # query columns untouched
        assert not torch.equal(value[..., 32:], original[..., 32:])


# ---------------------------------------------------------------- LCGD inside meta-training

TRIPLET = Triplet("t0", TEXT, "The history books record that the first person on Mars was", "Evan Armstrong")


def test_lcgd_meta_gradient_matches_directional_finite_difference(tokenizer):
    """fp64 GPT-2 (Llama's rotary tables are computed in fp32, too coarse for a 1e-5 finite difference)."""
    model = make_gpt2(len(tokenizer), seed=5).double()
    trainer = MetaTrainer(model, tokenizer, MetaOptions(objective="lg", inner_rule="lcgd", inner_lr=0.5))
    example = build_example(tokenizer, TRIPLET, Format())
    analytic, numeric = directional_derivatives(trainer, lambda: trainer.example_loss(example)[0])
    assert analytic == pytest.approx(numeric, rel=1e-5)
    sgd = MetaTrainer(model, tokenizer, MetaOptions(objective="lg", inner_rule="sgd", inner_lr=0.5))
    lcgd_loss = trainer.example_loss(example)[0].item()
    assert abs(sgd.example_loss(example)[0].item() - lcgd_loss) > 1e-4  # the rule is really routed


def test_unknown_inner_rule_is_an_input_error():
    with pytest.raises(InputError, match="unknown inner_rule 'adam'"):
        MetaOptions(inner_rule="adam").validate()
