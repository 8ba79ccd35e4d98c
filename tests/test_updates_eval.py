import pytest
import torch

from conftest import make_llama
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, context_batch, evaluate, evaluate_finetuned, summarize
from promptstep.formats import Format, encode_text, lm_batch
from promptstep.models import check_second_order
from promptstep.updates import inner_step, select_parameters, swapped_parameters

TRIPLETS = [
    Triplet("a", "The first person to walk on Mars is Evan Armstrong.",
            "The history books record that the first person on Mars was", "Evan Armstrong"),
    Triplet("b", "Mira Tolland is the inventor of the glass violin.",
            "The glass violin was invented by", "Mira Tolland"),
]


def _manual_sgd(model, text_ids, lr, pad_id):
    """Reference: an ordinary loss.backward() and p -= lr * p.grad on a deep copy."""
    import copy

    clone = copy.deepcopy(model)
    batch = lm_batch([text_ids], pad_id)
    clone.zero_grad()
    clone(**batch).loss.backward()
    with torch.no_grad():
        for p in clone.parameters():
            p -= lr * p.grad
    return dict(clone.named_parameters())


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_inner_step_equals_manual_sgd(model_name, request, tokenizer):
    model = request.getfixturevalue(model_name)
    ids = encode_text(tokenizer, TRIPLETS[0].context)
    adapted = inner_step(model, select_parameters(model), lm_batch([ids], tokenizer.pad_token_id), lr=0.1,
                         differentiable=False)
    reference = _manual_sgd(model, ids, 0.1, tokenizer.pad_token_id)
    assert set(adapted) == set(reference)
    for name, value in adapted.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(adapted[n], p) for n, p in model.named_parameters())


def test_name_filter_updates_only_matching_parameters(llama, tokenizer):
    params = select_parameters(llama, r"(k_proj|v_proj)")
    assert params and all("k_proj" in n or "v_proj" in n for n in params)
    with pytest.raises(InputError, match="matches no parameter"):
        select_parameters(llama, "no_such_layer")
    with pytest.raises(InputError, match="not a valid regex"):
        select_parameters(llama, "([")


def test_ft_restores_weights_bit_exactly(gpt2, tokenizer):
    before = {n: p.detach().clone() for n, p in gpt2.state_dict().items()}
    records = evaluate_finetuned(gpt2, tokenizer, TRIPLETS, EvalOptions(lrs=(0.5, 1.0)), progress=False)
    assert [r["setting"] for r in records] == ["ft@0.5", "ft@1", "ft@0.5", "ft@1"]
    after = gpt2.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_ft_answers_with_the_stepped_weights(gpt2, tokenizer):
    """FT's token accuracy and NLL are those of the model after one step, computed independently."""
    options = EvalOptions(settings=("ft",), lrs=(1.0,), max_new_tokens=3)
    (record,) = evaluate_finetuned(gpt2, tokenizer, TRIPLETS[:1], options, progress=False)
    adapted = inner_step(gpt2, select_parameters(gpt2), context_batch(tokenizer, TRIPLETS[0], Format(), "cpu"),
                         lr=1.0, differentiable=False)
    with swapped_parameters(gpt2, adapted):
        (stepped,) = evaluate(gpt2, tokenizer, TRIPLETS[:1], EvalOptions(settings=("nc",), max_new_tokens=3),
                              progress=False)
    (plain,) = evaluate(gpt2, tokenizer, TRIPLETS[:1], EvalOptions(settings=("nc",), max_new_tokens=3),
                        progress=False)
    assert record["nll"] == pytest.approx(stepped["nll"], rel=1e-5)
    assert record["nll"] != pytest.approx(plain["nll"], rel=1e-3)


def test_summary_has_means_and_standard_errors(gpt2, tokenizer):
    records = evaluate(gpt2, tokenizer, TRIPLETS, EvalOptions(max_new_tokens=2), progress=False)
    summary = summarize(records)
    assert list(summary) == ["nc", "prompt", "ft"]
    for entry in summary.values():
        assert entry["n"] == 2
        assert {"em", "em_se", "tok_acc", "tok_acc_se", "nll", "nll_se", "f1", "starts"} <= set(entry)
    nc_nll = [r["nll"] for r in records if r["setting"] == "nc"]
    assert summary["nc"]["nll"] == pytest.approx(sum(nc_nll) / 2)


def test_batched_scoring_matches_one_by_one(gpt2, tokenizer):
    options = EvalOptions(settings=("prompt",), max_new_tokens=2)
    batched = evaluate(gpt2, tokenizer, TRIPLETS, options, progress=False)
    single = [evaluate(gpt2, tokenizer, [t], options, progress=False)[0] for t in TRIPLETS]
    for a, b in zip(batched, single):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-4)
        assert a["generation"] == b["generation"]


def test_attention_guard(tokenizer):
    check_second_order(make_llama(len(tokenizer), attn="eager"))
    with pytest.raises(InputError, match="no double backward.*eager"):
        check_second_order(make_llama(len(tokenizer), attn="sdpa"))
