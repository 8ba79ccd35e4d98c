"""Controls: leak rate and own-answer accuracy on hand-made predictions, the irrelevant step at lr 0 equals No
Context, the 2x2 correctness breakdown, and multi-fact contexts."""

import re

import pytest

from conftest import make_gpt2
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, evaluate_prompted, score_answers
from promptstep.experiments.controls import (
    correctness_breakdown,
    evaluate_irrelevant,
    irrelevant_partners,
    leak_scores,
    summarize_irrelevant,
    with_distractors,
)
from promptstep.formats import encode_pair

NAMES = ["Evan Armstrong", "Mira Tolland", "Ada Quill", "Bo Marlowe", "Cy Dunmore", "Evan Armstrong"]
TRIPLETS = [Triplet(f"t{i}", f"Fact {i} is about {name}.", f"Fact {i} is about", name) for i, name in enumerate(NAMES)]


def _record(triplet, prediction, other):
    return {"id": triplet.id, "setting": "irrelevant", "prediction": prediction,
            "em": float(prediction == triplet.answer), "starts": 0.0, "f1": 0.0, "tok_acc": 0.5, "nll": 1.0,
            "leak_tok_acc": 0.25,
            **leak_scores(prediction, other)}


def test_leak_rate_and_own_accuracy_on_a_hand_made_case():
    own, other = TRIPLETS[0], TRIPLETS[1]  # own answer Evan Armstrong, irrelevant answer Mira Tolland
    records = [
        _record(own, "Evan Armstrong", other),      # right: no leak
        _record(own, "Mira Tolland", other),        # leak, exactly
        _record(own, "the mira tolland.", other),   # leak after SQuAD normalisation
        _record(own, "Mira Tolland is", other),     # leak in its first words only
        _record(own, "Ada Quill", other),           # wrong, no leak
    ]
    entry = summarize_irrelevant(records)
    assert entry["n"] == 5
    assert entry["em"] == pytest.approx(1 / 5)
    assert entry["leak_em"] == pytest.approx(2 / 5)
    assert entry["leak_starts"] == pytest.approx(3 / 5)
    assert entry["leak_em_se"] == pytest.approx((0.3 / 5) ** 0.5)  # sample variance of [0,1,1,0,0] is 0.3


def test_partners_are_other_facts_with_other_answers_and_seeded():
    partners = irrelevant_partners(TRIPLETS, seed=0)
    assert partners == irrelevant_partners(TRIPLETS, seed=0)
    for own, other in zip(TRIPLETS, partners):
        assert other.id != own.id and other.answer != own.answer  # t0 and t5 share a name: never paired
    with pytest.raises(InputError, match="different context and answer"):
        irrelevant_partners([TRIPLETS[0], TRIPLETS[5]], seed=0)


def test_irrelevant_step_at_lr_zero_is_no_context_and_leak_is_scored_against_the_partner(tokenizer):
    model = make_gpt2(len(tokenizer), seed=1)
    options = EvalOptions(lrs=(0.0,), max_new_tokens=3)
    records = evaluate_irrelevant(model, tokenizer, TRIPLETS, options, seed=2, progress=False)
    plain = evaluate_prompted(model, tokenizer, TRIPLETS, "nc", options, progress=False)
    partners = irrelevant_partners(TRIPLETS, seed=2)
    for record, reference, triplet, other in zip(records, plain, TRIPLETS, partners):
        assert record["irrelevant_id"] == other.id
        for key in ("prediction", "em", "tok_acc"):
            assert record[key] == pytest.approx(reference[key], abs=1e-6), key
        encoded = encode_pair(tokenizer, triplet.query, other.answer)
        ((acc, _),) = score_answers(model, [encoded], tokenizer.pad_token_id)
        assert record["leak_tok_acc"] == pytest.approx(acc)


def test_correctness_breakdown_partitions_examples():
    cells = {"a": (0, 0), "b": (1, 1), "c": (1, 0), "d": (0, 1), "e": (0, 1)}  # (without step, with step)
    records = [{"id": i, "setting": s, "em": float(v[k])} for i, v in cells.items()
               for k, s in enumerate(("nc", "ft"))]
    assert correctness_breakdown(records) == {"n": 5, "always_incorrect": 0.2, "always_correct": 0.2,
                                              "correct_without_only": 0.2, "only_correct_with": 0.4}


def test_multi_fact_contexts_hold_the_fact_and_d_distractors():
    out = with_distractors(TRIPLETS, 2, seed=0)
    assert out == with_distractors(TRIPLETS, 2, seed=0)
    by_context = {t.context: t for t in TRIPLETS}
    for original, made in zip(TRIPLETS, out):
        assert made.id == f"{original.id}+d2" and (made.query, made.answer) == (original.query, original.answer)
        facts = re.findall(r"Fact \d+ is about [^.]+\.", made.context)
        assert " ".join(facts) == made.context and len(facts) == 3 and original.context in facts
        distractors = [by_context[f] for f in facts if f != original.context]
        assert all(d.answer != original.answer for d in distractors)
    assert [t.context for t in with_distractors(TRIPLETS, 0, seed=0)] == [t.context for t in TRIPLETS]


def test_controls_passes_trust_remote_code_to_the_model_loader(tmp_path, monkeypatch):
    """`controls --trust-remote-code true` reaches load_model (a drift bug: its own loader dropped it)."""
    from promptstep import models
    from promptstep.cli import main

    seen = []

    def loader(spec, **options):
        seen.append(options.get("trust_remote_code"))
        raise InputError("stop here")

    monkeypatch.setattr(models, "load_model", loader)
    data = tmp_path / "d"
    assert main(["data", "character", "--out", str(data), "--n-train", "4", "--n-test", "4"]) == 0
    assert main(["controls", "--data", str(data), "--model", "tiny", "--runs-dir", str(tmp_path / "runs"),
                 "--trust-remote-code", "true"]) == 2
    assert seen == [True]
