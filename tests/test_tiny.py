"""The tiny model: the shipped weights and tokenizer, its pretraining text, and a short pretraining run."""

import json
import os
import random
import re

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import promptstep.tiny as tiny
from promptstep.data.names import is_test_key
from promptstep.data.synthetic import generate
from promptstep.errors import InputError
from promptstep.tiny import (
    EOS,
    default_tiny_dir,
    episode_batch,
    pretrain_tiny,
    pretraining_episode,
    qa_episode,
    train_tokenizer,
    weighted_lm_loss,
)


@pytest.fixture(scope="module")
def shipped():
    path = default_tiny_dir()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_shipped_model_loads_with_expected_shape(shipped):
    model, tokenizer = shipped
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (4, 128, 4)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.3e6
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == EOS and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert (default_tiny_dir() / "model.safetensors").is_file()


@pytest.mark.parametrize("text", ["The mayor of Lima is Evan Marlowe.\n", "naïve café — 42 ✓", "  two  spaces"])
def test_shipped_tokenizer_round_trips(shipped, text):
    _, tokenizer = shipped
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def _greedy_answers(model, tokenizer, prefixes: list[str]) -> list[str]:
    enc = tokenizer(prefixes, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.split("\n", 1)[0].strip() for text in texts]


def test_shipped_model_copies_names_from_the_prompt_only(shipped):
    model, tokenizer = shipped
    _, test, _ = generate("character", seed=0)
    items = test[:40]
    prompt = _greedy_answers(model, tokenizer, [f"{t.context} {t.query}" for t in items])
    no_context = _greedy_answers(model, tokenizer, [t.query for t in items])
    prompt_hits = sum(p == t.answer for p, t in zip(prompt, items))
    assert prompt_hits >= 24
    assert sum(p == t.answer for p, t in zip(no_context, items)) <= 2


def test_pretraining_text_never_contains_a_test_name(monkeypatch):
    drawn = []

    def spy(rng, split):
        name = real_sample_name(rng, split)
        drawn.append((split, name))
        return name

    real_sample_name = tiny.sample_name
    monkeypatch.setattr(tiny, "sample_name", spy)
    rng = random.Random(11)
    text = "".join(pretraining_episode(rng).text for _ in range(2000))
    assert len(drawn) > 2000
    assert all(split == "train" and not is_test_key(name) for split, name in drawn)
    test_names = {t.answer for task in ("character", "reversal") for t in generate(task, seed=0)[1]}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(test_names))) + r")\b")
    assert pattern.search(text) is None


def test_qa_episode_answers_each_query_with_a_name_from_its_context():
    rng = random.Random(5)
    for _ in range(200):
        episode = qa_episode(rng)
        text = episode.text
        assert text.endswith("\n")
        lines = text.splitlines()
        assert len(episode.answer_spans) == len(lines) == lines[0].count(".")
        for (lo, hi), line in zip(episode.answer_spans, lines):
            answer = text[lo:hi]
            assert answer.startswith(" ") and answer.endswith("\n")
            assert line.endswith(answer.rstrip("\n"))
            name = answer.strip()
            assert len(re.findall(rf"\b{re.escape(name)}\b", text)) == 2


def test_other_episodes_have_no_answers_and_one_line():
    rng = random.Random(6)
    for maker in (tiny.fact_episode, tiny.query_episode):
        episode = maker(rng)
        assert episode.answer_spans == () and episode.text.count("\n") == 1 and episode.text.endswith("\n")


def test_episode_batch_marks_answers_and_masks_padding():
    rng = random.Random(0)
    tokenizer = train_tokenizer([pretraining_episode(rng).text for _ in range(300)], vocab_size=600)
    batch = episode_batch(rng, tokenizer, batch_size=16, max_len=256)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["answer_mask"].shape
    assert batch["input_ids"].shape[0] == 16
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == -100).all() and not batch["answer_mask"][padding].any()
    assert (batch["labels"][~padding] == batch["input_ids"][~padding]).all()
    assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
    for row, mask, answer in zip(batch["input_ids"], batch["attention_mask"], batch["answer_mask"]):
        text = tokenizer.decode(row[mask.bool()])
        assert text.endswith("\n") and "\n\n" not in text
        if answer.any():
            last_answer = tokenizer.decode(row[answer]).splitlines(keepends=True)[-1]
            assert text.endswith(last_answer) and last_answer.startswith(" ")


def test_episode_batch_cuts_long_rows():
    rng = random.Random(1)
    tokenizer = train_tokenizer([pretraining_episode(rng).text for _ in range(300)], vocab_size=600)
    assert episode_batch(rng, tokenizer, batch_size=16, max_len=20)["input_ids"].shape == (16, 20)


def test_weighted_lm_loss_matches_a_plain_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, 4, -100], [5, 6, 0, 1, 2]])
    answer_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    losses = weighted_lm_loss(logits, labels, answer_mask, answer_weight=3.0)
    nll = {(b, t): -torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]] for b in range(2) for t in range(1, 5)
           if labels[b, t] != -100}
    weights = {k: 3.0 if answer_mask[k] else 1.0 for k in nll}
    assert torch.isclose(losses["loss"], sum(nll.values()) / len(nll))
    assert torch.isclose(losses["objective"], sum(weights[k] * nll[k] for k in nll) / sum(weights.values()))
    answers = [nll[k] for k in nll if answer_mask[k]]
    assert torch.isclose(losses["answer_loss"], sum(answers) / len(answers))
    plain = weighted_lm_loss(logits, labels, answer_mask, answer_weight=1.0)
    assert torch.isclose(plain["objective"], plain["loss"])


def test_short_pretraining_lowers_loss_and_saves_a_loadable_model(tmp_path):
    out = pretrain_tiny(tmp_path / "tiny", steps=30, seed=0, batch_size=8, tokenizer_episodes=2000,
                        progress=False)
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 31))
    assert {"loss", "answer_loss", "objective", "lr"} <= set(log[0])
    first = sum(entry["loss"] for entry in log[:5]) / 5
    last = sum(entry["loss"] for entry in log[-5:]) / 5
    assert last < first - 0.5
    config = yaml.safe_load((out / "pretrain_config.yaml").read_text())
    assert config["steps"] == 30 and config["batch_size"] == 8 and config["warmup_steps"] == 3
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The mayor of Lima is", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_bad_pretraining_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="steps"):
        pretrain_tiny(tmp_path / "x", steps=0, progress=False)
    with pytest.raises(InputError, match="max_len"):
        pretrain_tiny(tmp_path / "x", steps=5, max_len=512, progress=False)
    with pytest.raises(InputError, match="answer_weight"):
        pretrain_tiny(tmp_path / "x", steps=5, answer_weight=0.5, progress=False)
    assert not (tmp_path / "x").exists()


def test_idle_cores_is_a_usable_thread_count():
    assert 1 <= tiny.idle_cores() <= (os.cpu_count() or 1)
