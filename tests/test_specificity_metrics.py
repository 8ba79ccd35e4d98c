"""What a step stores, measured against prompting: per-item agreement of FT with Prompt, the rate of answering
another fact's name in multi-fact contexts, summaries grouped by tags, the irrelevant-context leak with the
context in the prompt beside the step's, and the held-out perplexity damage check — against hand-computed values."""

import json
import math

import pytest

from conftest import character_dataset, make_gpt2
from promptstep.cli import main
from promptstep.data.triplets import Triplet
from promptstep.evaluate import (
    EvalOptions,
    _record,
    heldout_perplexity,
    mark_agreement,
    summarize,
    summarize_by_tag,
)
from promptstep.experiments.controls import evaluate_irrelevant
from promptstep.formats import encode_text, lm_batch
from promptstep.metrics import normalize_answer

TWO_FACTS = Triplet("t1", "The mayor of Lima is Ada Quill. The mayor of Oslo is Bo Marlowe.",
                    "The city of Oslo is governed by", "Bo Marlowe", distractors=("Ada Quill",),
                    tags={"n_facts": 2, "family_split": "seen"})


def _rec(item, setting, prediction, **extra):
    return {"id": item, "setting": setting, "prediction": prediction, "em": 0.0, "starts": 0.0, "f1": 0.0,
            "tok_acc": 0.0, "nll": 1.0, **extra}


def test_a_prediction_naming_another_fact_counts_as_a_distractor():
    assert _record(TWO_FACTS, "ft", " Ada Quill\n", 0.5, 1.0, 3)["distractor"] == 1.0
    right = _record(TWO_FACTS, "ft", " Bo Marlowe\n", 1.0, 0.1, 3)
    assert right["distractor"] == 0.0 and right["em"] == 1.0
    assert right["tags"] == {"n_facts": 2, "family_split": "seen"}
    single = Triplet("t2", "The mayor of Lima is Ada Quill.", "Lima is governed by", "Ada Quill")
    assert "distractor" not in _record(single, "ft", " Ada Quill\n", 1.0, 0.1, 3)  # no other fact to name


def test_agreement_compares_each_ft_prediction_with_the_prompted_one_of_the_same_item():
    records = [_rec("a", "prompt", "Ada Quill"), _rec("a", "ft", "ada quill."),  # same after normalisation
               _rec("b", "prompt", "Bo Marlowe"), _rec("b", "ft@0.1", "Ada Quill"),
               _rec("c", "ft", "Cy Dunmore"),  # no Prompt record for c: no agreement field
               _rec("a", "nc", "Ada Quill")]
    mark_agreement(records)
    assert [r.get("agree_prompt") for r in records] == [None, 1.0, None, 0.0, None, None]


def test_summaries_carry_optional_metrics_over_the_records_that_have_them_and_group_by_tag():
    records = [_rec("a", "ft", "x", distractor=1.0, agree_prompt=1.0, tags={"n_facts": 2}),
               _rec("b", "ft", "y", distractor=0.0, agree_prompt=0.0, tags={"n_facts": 3}),
               _rec("c", "ft", "z", agree_prompt=1.0, tags={"n_facts": 1}),
               _rec("d", "ft", "w", agree_prompt=1.0, tags={"n_facts": 1})]
    entry = summarize(records)["ft"]
    assert entry["n"] == 4 and entry["distractor"] == 0.5 and entry["n_distractor"] == 2
    assert entry["agree_prompt"] == 0.75 and "n_agree_prompt" not in entry
    assert entry["agree_prompt_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # sample SD / sqrt(n)
    groups = summarize_by_tag(records)
    assert list(groups) == ["n_facts"] and list(groups["n_facts"]) == ["1", "2", "3"]
    assert groups["n_facts"]["1"]["ft"]["n"] == 2 and "distractor" not in groups["n_facts"]["1"]["ft"]
    assert groups["n_facts"]["2"]["ft"]["distractor"] == 1.0


def test_irrelevant_context_leak_is_measured_for_prompt_beside_the_step(tokenizer):
    """With an inner learning rate of 0 the step changes nothing, so the 'irrelevant' records are the No Context
    answers; 'irrelevant_prompt' puts the other item's context in the prompt; both score the same leak."""
    model = make_gpt2(len(tokenizer), seed=3)
    items = [Triplet(f"t{i}", f"Fact {i} is about {n}.", f"Fact {i} is about", n)
             for i, n in enumerate(["Evan Armstrong", "Mira Tolland", "Ada Quill", "Bo Marlowe"])]
    options = EvalOptions(lrs=(0.0,), max_new_tokens=3)
    records = evaluate_irrelevant(model, tokenizer, items, options, seed=0, progress=False)
    by_setting = {s: [r for r in records if r["setting"] == s] for s in ("irrelevant", "irrelevant_prompt")}
    assert [r["id"] for r in by_setting["irrelevant"]] == [r["id"] for r in by_setting["irrelevant_prompt"]]
    for ft, prompted in zip(by_setting["irrelevant"], by_setting["irrelevant_prompt"]):
        assert ft["irrelevant_id"] == prompted["irrelevant_id"]
        other = next(t for t in items if t.id == ft["irrelevant_id"])
        assert prompted["leak_em"] == float(normalize_answer(prompted["prediction"]) == normalize_answer(other.answer))
        assert ft["agree_prompt"] == float(normalize_answer(ft["prediction"]) ==
                                           normalize_answer(prompted["prediction"]))
    summary = summarize(records)
    assert {"leak_em", "leak_tok_acc", "agree_prompt"} <= set(summary["irrelevant"])
    assert "agree_prompt" not in summary["irrelevant_prompt"]


def test_heldout_perplexity_equals_exp_of_the_models_own_mean_token_loss(tokenizer):
    model = make_gpt2(len(tokenizer), seed=5)
    texts = ["The first person to walk on Mars is Evan Armstrong.", "foobar foobar the foo and the bar"]
    result = heldout_perplexity(model, tokenizer, texts, max_tokens=6)
    total, count = 0.0, 0
    for text in texts:
        ids = encode_text(tokenizer, text)[:6]
        loss = model(**lm_batch([ids], tokenizer.pad_token_id)).loss.item()  # mean over len(ids) - 1 predictions
        total, count = total + loss * (len(ids) - 1), count + len(ids) - 1
    assert result["tokens"] == count and result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_heldout_perplexity_reads_at_most_the_models_window(tokenizer):
    """A model whose window is shorter than max_tokens is scored on its window's worth of each text (a longer
    input would index past its position table)."""
    model = make_gpt2(len(tokenizer), seed=5, n_positions=8)
    texts = ["The first person to walk on Mars is Evan Armstrong, and the second is Ana Osei of Lima."]
    assert len(encode_text(tokenizer, texts[0])) > 8
    assert heldout_perplexity(model, tokenizer, texts, max_tokens=128) == heldout_perplexity(model, tokenizer, texts,
                                                                                             max_tokens=8)
    assert heldout_perplexity(model, tokenizer, texts, max_tokens=128)["tokens"] == 7


def test_meta_train_summary_reports_the_damage_to_held_out_text(tmp_path_factory, saved_gpt2_256, tmp_path):
    data = character_dataset(tmp_path_factory, 8)
    args = ["meta-train", "--data", data, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--eval-n", "2",
            "--max-new-tokens", "2", "--batch-size", "2", "--train-limit", "4", "--inner-lr", "0.1",
            "--outer-lr", "1e-2", "--ppl-texts", "3", "--ppl-max-tokens", "16", "--threads", "1"]
    assert main([*args, "--name", "m"]) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    ppl = summary["heldout_text"]
    assert ppl["before"]["texts"] == 3 and ppl["before"]["tokens"] > 0
    assert ppl["change_pct"] == pytest.approx(100 * (ppl["after"]["ppl"] / ppl["before"]["ppl"] - 1))
    assert ppl["after"]["ppl"] != ppl["before"]["ppl"]  # two Adam steps at 1e-2 move a random GPT-2
    assert main([*args, "--name", "off", "--ppl-texts", "0"]) == 0
    assert "heldout_text" not in json.loads((tmp_path / "off" / "summary.json").read_text())


def test_meta_train_regularises_with_general_text(tmp_path_factory, saved_gpt2_256, tmp_path):
    """--lm-source text: the regulariser reads the user's general text (paragraphs of a .txt file) or, by default,
    the offline Wikipedia train split; every step logs its part."""
    data = character_dataset(tmp_path_factory, 8)
    (tmp_path / "general.txt").write_text("The Nile flows north.\n\nParis is the capital of France.\n")
    args = ["meta-train", "--data", data, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--eval-n", "2",
            "--max-new-tokens", "2", "--batch-size", "2", "--train-limit", "4", "--inner-lr", "0.1",
            "--outer-lr", "1e-2", "--ppl-texts", "0", "--lm-weight", "1", "--lm-source", "text", "--threads", "1"]
    for name, extra in (("own", ["--lm-texts", str(tmp_path / "general.txt")]), ("wiki", [])):
        assert main([*args, "--name", name, *extra]) == 0
        logs = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        assert len(logs) == 2 and all(math.isfinite(log["lm"]) and log["lm"] > 0 for log in logs)
    own = [json.loads(line)["lm"] for line in (tmp_path / "own" / "train_log.jsonl").read_text().splitlines()]
    wiki = [json.loads(line)["lm"] for line in (tmp_path / "wiki" / "train_log.jsonl").read_text().splitlines()]
    assert own[0] != wiki[0]  # different text, different regulariser
