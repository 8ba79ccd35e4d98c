"""Recording hooks against a manual forward; untrained baselines; probe construction for MR and Character."""

import math

import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from conftest import make_gpt2, make_llama
from promptstep.analysis.baselines import kept_parameter_names, untrained_model
from promptstep.analysis.hooks import anatomy_of, record
from promptstep.analysis.tasks import (
    Review,
    character_groups,
    demo_orders,
    load_reviews,
    mr_group,
    split_reviews,
)
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.formats import Format
from promptstep.tiny import default_tiny_dir

IDS = [5, 17, 3, 42, 8, 99, 23, 4, 61]
N_KEYS = 4


def _layer_inputs(model):
    """The hidden states entering every block, captured with pre-hooks during a plain forward."""
    anatomy = anatomy_of(model)
    inputs = {}

    def keep(index):
        def hook(_module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(anatomy.layers)]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([IDS])).logits[0, -1]
    for handle in handles:
        handle.remove()
    return [inputs[i] for i in range(len(anatomy.layers))], logits


def _attend(q, k, v):
    """Manual causal softmax attention (heads already aligned); returns scores and (1, T, H*d) output."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    t = q.shape[-2]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return scores, (weights @ v).transpose(1, 2).flatten(2)


def _manual_gpt2(model, block, x):
    h = block.ln_1(x)
    n_head, d = model.config.n_head, model.config.n_embd // model.config.n_head
    q, k, v = (t.view(1, -1, n_head, d).transpose(1, 2) for t in block.attn.c_attn(h).split(model.config.n_embd, 2))
    scores, out = _attend(q, k, v)
    return block.attn.c_proj(out)[0, -1], scores[0, :, -1, -N_KEYS:]


def _manual_llama(model, layer, x):
    h = layer.input_layernorm(x)
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    q = layer.self_attn.q_proj(h).view(1, -1, cfg.num_attention_heads, d).transpose(1, 2)
    k = layer.self_attn.k_proj(h).view(1, -1, cfg.num_key_value_heads, d).transpose(1, 2)
    v = layer.self_attn.v_proj(h).view(1, -1, cfg.num_key_value_heads, d).transpose(1, 2)
    cos, sin = model.model.rotary_emb(h, torch.arange(len(IDS))[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    scores, out = _attend(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1))
    return layer.self_attn.o_proj(out)[0, -1], scores[0, :, -1, -N_KEYS:]


@pytest.mark.parametrize(("factory", "manual"), [(make_gpt2, _manual_gpt2), (make_llama, _manual_llama)],
                         ids=["gpt2", "llama"])
def test_recording_matches_a_manual_forward(factory, manual):
    model = factory(300, seed=1)
    inputs, logits = _layer_inputs(model)
    recording = record(model, IDS, N_KEYS)
    layers = anatomy_of(model).layers
    assert recording.attn_out.shape[0] == recording.scores.shape[0] == len(layers)
    with torch.no_grad():
        for index, layer in enumerate(layers):
            attn_out, scores = manual(model, layer, inputs[index])
            torch.testing.assert_close(recording.attn_out[index], attn_out, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(recording.scores[index], scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(recording.logits, logits)
    assert model.config._attn_implementation == "eager"  # restored after recording


def test_recording_reads_logits_where_asked_and_checks_n_keys():
    model = make_gpt2(300)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(record(model, IDS, 2, logits_at=-2).logits, logits[-2])
    with pytest.raises(ValueError):
        record(model, IDS, len(IDS) + 1)


@pytest.mark.parametrize("factory", [make_gpt2, make_llama], ids=["gpt2", "llama"])
def test_untrained_baselines(factory):
    trained = factory(300, seed=1)
    keep = kept_parameter_names(trained)
    assert any("embed" in n or "wte" in n for n in keep) and any("norm" in n or "ln_" in n for n in keep)
    assert not any("proj" in n or "c_attn" in n or "c_fc" in n for n in keep)
    state = trained.state_dict()
    for kind in ("random-init", "trained-embeddings"):
        fresh = untrained_model(trained, kind, seed=7)
        again = untrained_model(trained, kind, seed=7)
        for name, value in fresh.state_dict().items():
            assert torch.equal(value, again.state_dict()[name]), name  # seeded
            if value.numel() > 1 and value.std() > 0 and "rotary" not in name:
                kept = kind == "trained-embeddings" and name in keep
                assert torch.equal(value, state[name]) == kept, (kind, name)
    with pytest.raises(InputError, match="unknown baseline"):
        untrained_model(trained, "half-trained")


def test_mr_sentences_from_gensim():
    reviews = load_reviews()
    assert len(reviews) == 200 and sum(r.label for r in reviews) == 100
    assert reviews[0] == Review("simplistic , silly and tedious .", 0)
    assert any("bender \u2014 and" in r.text for r in reviews)  # cp1252 em dash decoded
    demos, tests = split_reviews(reviews, 8, 20, seed=0)
    assert (demos, tests) == split_reviews(reviews, 8, 20, seed=0)
    assert len(demos) == 8 and len(tests) == 20 and not set(demos) & set(tests)
    with pytest.raises(InputError, match="more than the 200"):
        split_reviews(reviews, 100, 101, seed=0)


def test_mr_probes_share_the_test_prompt_across_settings(tokenizer):
    demos = [Review("the foo and the bar", 1), Review("foobar of the foo", 0)]
    tests = [Review("the bar of the foo", 1)]
    with pytest.raises(InputError, match="share their first token"):  # the test tokenizer splits off " "
        mr_group(tokenizer, demos, tests, "last")
    tokenizer = AutoTokenizer.from_pretrained(default_tiny_dir())
    group = mr_group(tokenizer, demos, tests, "last")
    (probe,) = group.probes
    assert probe.icl_ids[-probe.n_keys :] == probe.zs_ids and probe.n_keys == len(probe.zs_ids)
    assert tokenizer.decode(probe.zs_ids) == "Review: the bar of the foo Sentiment:"
    assert [tokenizer.decode(d) for d in group.demos] == ["Review: the foo and the bar Sentiment: Positive",
                                                         "Review: foobar of the foo Sentiment: Negative"]
    assert tokenizer.decode(probe.icl_ids).startswith("Review: the foo and the bar Sentiment: Positive\nReview: foobar")
    assert probe.label == 1 and probe.target_id == probe.option_ids[1] and probe.logits_at == -1
    labelled = mr_group(tokenizer, demos, tests, "label").probes[0]
    assert labelled.zs_ids[-1] == probe.option_ids[0] and labelled.n_keys == probe.n_keys + 1
    assert labelled.logits_at == -2


def test_character_probes_align_the_query_tokens(tokenizer):
    triplet = Triplet("c1", "The first person to walk on Mars is Evan Armstrong.",
                      "The history books record that the first person on Mars was", "Evan Armstrong")
    (group,) = character_groups(tokenizer, [triplet], Format(), "last")
    (probe,) = group.probes
    assert tokenizer.decode(probe.icl_ids) == triplet.context + " " + triplet.query
    assert tokenizer.decode(group.demos[0]) == triplet.context
    assert probe.icl_ids[-probe.n_keys :] == probe.zs_ids[-probe.n_keys :]
    assert len(probe.zs_ids) - 1 <= probe.n_keys <= len(probe.zs_ids)
    with_target = tokenizer.decode([*probe.zs_ids, probe.target_id])
    assert len(with_target) > len(triplet.query) and (triplet.query + " Evan Armstrong").startswith(with_target)


def test_demo_orders_are_distinct_and_seeded():
    orders = demo_orders(3, 6, seed=1)
    assert orders[0] == [0, 1, 2] and len({tuple(o) for o in orders}) == 6
    assert orders == demo_orders(3, 6, seed=1)
    with pytest.raises(InputError, match="more than the 2 orders"):
        demo_orders(2, 3, seed=0)
