"""The injection benchmark: documents and questions read back from multi-fact triplets, the AdamW baseline against a
manual loop, every setting's records against answers computed by hand (InnerStep steps, sums of changes, AdamW
loops, contexts), the summary's mean ± SE over documents and the first-document comparison by hand, and the
`inject-eval` command's run directory."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import make_gpt2
from promptstep.cli import main
from promptstep.data.synthetic import FAMILIES, SyntheticOptions, generate_splits, render_description, render_query
from promptstep.data.triplets import Triplet
from promptstep.documents import Document, Question
from promptstep.experiments.injection import (
    BenchmarkOptions,
    adamw_finetune,
    documents_and_questions,
    fact_questions,
    group_orders,
    run_benchmark,
    summarize_benchmark,
)
from promptstep.formats import encode_pair, encode_text, lm_batch
from promptstep.inject import InjectOptions, answer_questions
from promptstep.metrics import mean_se
from promptstep.updates import InnerStep, swapped_parameters

# ------------------------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("task", ["character", "reversal"])
def test_fact_questions_read_every_fact_back(task):
    options = SyntheticOptions(facts=(1, 2, 3, 4), templates="varied", name_styles=("invented", "titled"))
    triplets = generate_splits(task, 5, 60, seed=3, options=options)[0]["test"]
    families = {f.key: f for f in FAMILIES}
    for triplet in triplets:
        facts = fact_questions(triplet)
        assert facts is not None and len(facts) == triplet.tags["n_facts"], triplet.id
        position = triplet.tags["position"]
        assert facts[position] == (triplet.query, triplet.answer, triplet.distractors)
        assert sorted(a for _, a, _ in facts) == sorted([triplet.answer, *triplet.distractors])
        for (query, answer, distractors), key in zip(facts, triplet.tags["fact_families"].split(",")):
            family = families[key]  # the query asks about this fact's family and a filler the context states
            asked = {render_query(family, x, p) for x in family.fillers if render_description(family, x).lower()
                     in triplet.context.lower() for p in range(len(family.paraphrases))}
            assert query in asked and answer not in distractors
    tampered = Triplet(triplets[0].id, triplets[0].context.replace(triplets[0].answer, "Somebody Else"),
                       triplets[0].query, triplets[0].answer, distractors=triplets[0].distractors,
                       tags=triplets[0].tags)
    assert fact_questions(tampered) is None  # a context that is not its facts exactly is not guessed at


def test_documents_and_questions_from_triplets():
    multi = generate_splits("character", 5, 8, seed=0, options=SyntheticOptions(facts=(3,)))[0]["test"]
    prose = [Triplet("p1", "A long paragraph about a river.", "The", "river flows north"),
             Triplet("p2", "A long paragraph about a river.", "It", "is cold"),
             Triplet("p3", "Another paragraph.", "We", "went home")]
    documents, questions, info = documents_and_questions(multi + prose)
    assert [d.id for d in documents] == [t.id for t in multi] + ["p1", "p3"]
    assert len(questions) == 3 * len(multi) + 3 and info["questions_from"] == {
        "facts of a multi-fact context": len(multi), "the triplet": 3}
    assert [q.document for q in questions[-3:]] == ["p1", "p1", "p3"]
    first = [q for q in questions if q.document == multi[0].id]
    assert {q.answers[0] for q in first} == {multi[0].answer, *multi[0].distractors}


# -------------------------------------------------------------------------------------------------------- baseline


def test_adamw_baseline_equals_a_manual_loop(tokenizer):
    model = make_gpt2(len(tokenizer))
    batch = lm_batch([encode_text(tokenizer, "Mira Tolland is the inventor of the glass violin.")],
                     tokenizer.pad_token_id)
    params = {name: p.detach() for name, p in model.named_parameters()}
    got = adamw_finetune(model, params, batch, steps=3, lr=1e-3, weight_decay=0.01)
    manual = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(manual.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        manual(**batch).loss.backward()
        optimizer.step()
    moved = 0.0
    for name, p in manual.named_parameters():
        assert torch.allclose(got[name], p.detach(), atol=1e-6, rtol=0), name
        moved = max(moved, (p.detach() - params[name]).abs().max().item())
    assert moved > 1e-3  # the loop did move the weights
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())  # the model itself is untouched


# ------------------------------------------------------------------------------------------------------- benchmark

TEXTS = ["The first person to walk on Mars is Evan Armstrong. The history books record it.",
         "Mira Tolland is the inventor of the glass violin. The foo of the bar and the bar of the foo.",
         "Question: who painted the ceiling? Answer: Michelangelo. foobar foobar the foobar of the foo."]


def _data():
    documents = [Document(f"d{i}", text, "<test>") for i, text in enumerate(TEXTS)]
    questions = [Question("q0", "The first person on Mars was", ("Evan Armstrong",), "d0"),
                 Question("q0b", "The history books record that the first person on Mars was", ("Evan Armstrong",),
                          "d0", ("Mira Tolland",)),
                 Question("q1", "The glass violin was invented by", ("Mira Tolland",), "d1"),
                 Question("q2", "Who painted the ceiling? Answer:", ("Michelangelo",), "d2")]
    return documents, questions


def _batch(tokenizer, document):
    return lm_batch([encode_text(tokenizer, document.text)], tokenizer.pad_token_id)


def test_benchmark_records_and_summary_match_hand_computed_values(tokenizer):
    meta = make_gpt2(len(tokenizer), n_positions=64)
    base = make_gpt2(len(tokenizer), seed=1, n_positions=64)
    documents, questions = _data()
    inner = InnerStep(lr=0.5)
    options = BenchmarkOptions(sizes=(1, 2), n_groups=2, inject=InjectOptions(inner=inner), adamw_steps=(2,),
                               adamw_lr=1e-3, max_new_tokens=4, batch_size=3, seed=1)
    records, costs, peaks = run_benchmark(meta, base, tokenizer, documents, questions, options, progress=False)
    orders = group_orders(3, 2, 2, seed=1)

    def asked(order, size):
        ids = [documents[i].id for i in order[:size]]
        return [q for d in ids for q in questions if q.document == d]

    def hand(setting, order, size):
        """The records of one setting, group and size, computed without the benchmark's code."""
        qs = asked(order, size)
        docs = [documents[i] for i in order[:size]]
        text = {d.id: d.text for d in documents}
        kind, _, mode = setting.partition("/")
        contexts = {"prompt": [text[q.document] for q in qs], "meta+prompt": [text[q.document] for q in qs],
                    "prompt-all": ["\n\n".join(d.text for d in docs)] * len(qs)}.get(kind, [None] * len(qs))
        fit = [(q, c) for q, c in zip(qs, contexts)  # the Prompt text and the answer within the 64-token window
               if len(encode_pair(tokenizer, q.question if c is None else c + " " + q.question, q.answers[0]).ids)
               <= 64]
        model = meta if kind in ("meta", "meta+prompt") else base
        start = {n: p.detach() for n, p in model.named_parameters()}
        if kind in ("nc", "prompt", "prompt-all"):
            weights = start
        elif kind == "adamw-2":
            weights = start
            for document in docs:  # a fresh AdamW per document, documents in turn
                weights = adamw_finetune(model, weights, _batch(tokenizer, document), 2, 1e-3, 0.01)
        elif mode == "sequential":
            weights = inner.adapted(model, [_batch(tokenizer, d) for d in docs])
        else:
            weights = dict(start)
            for document in docs:
                stepped = inner.adapted(model, [_batch(tokenizer, document)])
                weights = {n: weights[n] + (stepped[n] - start[n]) for n in start}
        if not fit:
            return []
        with swapped_parameters(model, weights):
            return answer_questions(model, tokenizer, [q for q, _ in fit], [c for _, c in fit], top_k=0,
                                    max_new_tokens=4)

    settings = ["nc", "prompt", "prompt-all", "adamw-2"] + [f"{k}/{m}" for k in ("meta", "meta+prompt", "untrained")
                                                             for m in ("sequential", "sum")]
    assert set(r["setting"] for r in records) == set(settings)
    fits_somewhere = {True: 0, False: 0}
    for setting in settings:
        for group, order in enumerate(orders):
            for size in (1, 2):
                got = [r for r in records if (r["setting"], r["group"], r["size"]) == (setting, group, size)]
                want = hand(setting, order, size)
                assert [r["id"] for r in got] == [q.id for q in asked(order, size)]
                for record in got:
                    fits_somewhere[record["fits"]] += 1
                    match = next((w for w in want if w["id"] == record["id"]), None)
                    assert record["fits"] == (match is not None), (setting, record["id"])
                    if not record["fits"]:  # a document in the prompt over the 64-token window
                        assert "prompt" in setting
                        continue
                    assert record["prediction"] == match["prediction"], (setting, group, size)
                    for metric in ("em", "tok_acc", "distractor"):
                        assert record[metric] == match[metric], (setting, metric)
                    assert record["nll"] == pytest.approx(match["nll"], rel=1e-5, abs=1e-6), setting
    assert fits_somewhere[False] > 0 and fits_somewhere[True] > 0

    summary = summarize_benchmark(records, costs, peaks)
    for setting in ("meta/sum", "adamw-2", "prompt-all"):
        for size in (1, 2):
            units = {}
            for r in records:
                if (r["setting"], r["size"]) == (setting, size) and r["fits"]:
                    units.setdefault((r["group"], r["document"]), []).append(r["tok_acc"])
            cell = summary[setting]["by_size"][str(size)]
            if units:
                mean, se = mean_se(sum(v) / len(v) for v in units.values())
                assert cell["tok_acc"] == pytest.approx(mean) and cell["tok_acc_se"] == pytest.approx(se)
            else:
                assert "tok_acc" not in cell and cell["fits"] == 0.0
    first = summary["meta/sequential"]["first_document"]
    pairs = []
    for group in range(2):
        at = [[r["nll"] for r in records if (r["setting"], r["group"], r["size"], r["position"]) ==
               ("meta/sequential", group, size, 0)] for size in (1, 2)]
        pairs.append([sum(v) / len(v) for v in at])
    assert first["sizes"] == [1, 2] and first["nll"]["change"] == pytest.approx(mean_se(b - a for a, b in pairs))
    assert [c["document"] for c in costs if (c["setting"], c["group"]) == ("meta/sum", 1)] == \
        [documents[i].id for i in orders[1]]
    assert all(c["stored_bytes"] > 0 for c in costs)
    stepped_cost = [c["stored_bytes"] for c in costs if c["setting"] == "meta/sequential"]
    dense = sum(p.numel() * p.element_size() for p in meta.parameters())
    assert all(0 < b < dense for b in stepped_cost)  # the compact update is smaller than the weights


def test_inject_eval_writes_a_run_directory(tmp_path, saved_gpt2_256):
    data = tmp_path / "data"
    assert main(["data", "character", "--out", str(data), "--facts", "2,3", "--n-train", "4", "--n-test", "6"]) == 0
    runs = tmp_path / "runs"
    argv = ["inject-eval", "--model", saved_gpt2_256, "--data", str(data), "--sizes", "1,2", "--n-groups", "2",
            "--adamw-steps", "1", "--max-new-tokens", "3", "--lr", "0.5", "--runs-dir", str(runs), "--name", "ie"]
    assert main(argv) == 0
    out = runs / "ie"
    for name in ("config.yaml", "records.jsonl", "costs.jsonl", "summary.json", "metrics.csv", "table.md",
                 "accuracy_vs_n.png", "documents.jsonl", "questions.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_info"]["questions_from"]["facts of a multi-fact context"] == 6
    assert summary["inner_step"]["lr"] == 0.5 and summary["base_model"] is None
    assert "untrained/sequential" not in summary["settings"]  # no base model apart from the model itself
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    per_document = {}
    for q in questions:
        per_document[q["document"]] = per_document.get(q["document"], 0) + 1
    for setting, entry in summary["settings"].items():
        for size, cell in entry["by_size"].items():
            rows = [r for r in records if r["setting"] == setting and r["size"] == int(size)]
            groups = {r["group"] for r in rows}
            assert cell["questions"] == len(rows) and len(groups) == 2
    assert "the first document after N = 2 vs N = 1" in (out / "table.md").read_text()
