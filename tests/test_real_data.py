"""SQuAD, WikiText and offline-Wikipedia triplets from small files in the official formats, written here."""

from __future__ import annotations

import json

import pytest

from promptstep.cli import main
from promptstep.data import squad, wikitext
from promptstep.data.names import is_test_key
from promptstep.data.prose import SpanOptions, prose_triplets, sample, tidy_spacing
from promptstep.data.triplets import load_triplets
from promptstep.data.wiki_offline import article_paragraphs, wiki_offline_paragraphs
from promptstep.errors import InputError
from promptstep.metrics import exact_match, f1_score

PASSAGE = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."


def squad_document(qas_by_paragraph: list[tuple[str, list[dict]]]) -> dict:
    return {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [
        {"context": context, "qas": qas} for context, qas in qas_by_paragraph]}]}


def qa(qid: str, question: str, *answers: tuple[str, int]) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers]}


def write_squad_dir(tmp_path, train_doc: dict, dev_doc: dict):
    for name, doc in (("train-v1.1.json", train_doc), ("dev-v1.1.json", dev_doc)):
        (tmp_path / name).write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


def test_squad_keeps_all_gold_answers_and_counts_drops(tmp_path):
    start = PASSAGE.index("Normandy")
    doc = squad_document([(PASSAGE, [
        qa("q1", "What region is named after the Normans?", ("Normandy", start), ("Normandy", start),
           ("Rollo", start)),
        qa("q2", "When did they name it?", ("10th and 11th centuries", PASSAGE.index("10th"))),
        qa("q2", "A duplicate id?", ("Normans", 4)),
        qa("q3", "Misplaced answer?", ("Normans", 0)),
    ])])
    triplets, dropped = squad.squad_triplets(squad.squad_json_rows(write_squad_dir(tmp_path, doc, doc)
                                                                   / "dev-v1.1.json"))
    assert [t.id for t in triplets] == ["q1", "q2"]
    first = triplets[0]
    assert first.context == PASSAGE
    assert first.query == "Question: What region is named after the Normans? Answer:"
    assert first.answer == "Normandy" and first.answers == ("Normandy",)  # "Rollo" is not at its answer_start
    assert dropped == {"duplicate id": 1, "no answer text at its answer_start": 1}


@pytest.mark.parametrize(("doc", "message"), [
    ({"version": "1.1"}, "missing field 'data'"),
    (squad_document([("   ", [qa("q", "Q?", ("x", 0))])]), "empty paragraph context"),
    (squad_document([(PASSAGE, [{"id": "q", "question": "Q?"}])]), "missing field 'answers'"),
    (squad_document([(PASSAGE, [qa("q", "Q?", ("Normans", 500))])]), "answer_start 500 is outside the passage"),
    (squad_document([(PASSAGE, [qa("q", "Q?")])]), "needs at least one answer"),
    (squad_document([(PASSAGE, [qa("q", "  ", ("Normans", 4))])]), "empty question"),
    (squad_document([(PASSAGE, [qa("q", "Q?", ("Normans", "4"))])]), "'answer_start' must be int"),
])
def test_squad_rejects_malformed_files(tmp_path, capsys, doc, message):
    source = tmp_path / "squad"
    source.mkdir()
    write_squad_dir(source, doc, doc)
    out = tmp_path / "out"
    assert main(["data", "squad", "--source", str(source), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("promptstep data: error: ") and message in line and "train-v1.1.json" in line
    assert not out.exists()


def test_squad_hub_rows_go_through_the_same_builder(tmp_path, monkeypatch):
    """The hub path: rows in the hub's schema (here from a stand-in `load_dataset`) give the same triplets."""
    start = PASSAGE.index("Normandy")
    doc = squad_document([(PASSAGE, [qa("q1", "What region?", ("Normandy", start))])])
    local = list(squad.squad_json_rows(write_squad_dir(tmp_path, doc, doc) / "dev-v1.1.json"))
    hub_rows = [{k: v for k, v in row.items() if k != "where"} for row in local]

    class FakeDatasets:
        @staticmethod
        def load_dataset(name, split):
            assert (name, split) == ("rajpurkar/squad", "validation")
            return hub_rows

    monkeypatch.setitem(__import__("sys").modules, "datasets", FakeDatasets)
    from_hub, _ = squad.squad_triplets(squad.squad_rows("rajpurkar/squad", "test"))
    from_file, _ = squad.squad_triplets(local)
    assert from_hub == from_file


def test_hub_without_datasets_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    assert main(["data", "wikitext", "--out", str(tmp_path / "out")]) == 2
    assert "needs the `datasets` package" in capsys.readouterr().err


@pytest.mark.parametrize(("prediction", "answers", "em", "f1"), [
    ("Normandy", ["Normandy"], 1.0, 1.0),
    ("the Normandy.", ["Normandy"], 1.0, 1.0),  # articles and punctuation are normalised away
    ("in Normandy", ["Normandy"], 0.0, 2 * (1 / 2 * 1) / (1 / 2 + 1)),
    ("10th century", ["10th and 11th centuries", "10th century"], 1.0, 1.0),  # max over gold answers
    ("11th centuries", ["10th and 11th centuries"], 0.0, 2 * (1 * 2 / 4) / (1 + 2 / 4)),
    ("Rollo", ["Normandy", "France"], 0.0, 0.0),
    ("", ["Normandy"], 0.0, 0.0),
])
def test_squad_em_and_f1_match_hand_computed_values(prediction, answers, em, f1):
    assert exact_match(prediction, answers) == em
    assert f1_score(prediction, answers) == pytest.approx(f1)


WIKITEXT_TRAIN = """ = Valkyria Chronicles III =

 Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game developed by Sega and \
Media.Vision for the PlayStation Portable . Released in January 2011 in Japan , it is the third game in the \
Valkyria series . It has 1 @,@ 000 fans and a score of 8 @.@ 5 out of ten , critics said .

 = = Gameplay = =

 Too short to use .
"""
WIKITEXT_TEST = """ = Robert Boulter =

 Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on the \
television series The Bill in 2000 . This was followed by a starring role in the play Herons written by Simon \
Stephens , which was performed in 2001 at the Royal Court Theatre .
"""


def write_wikitext_dir(root):
    root.mkdir()
    (root / "wiki.train.raw").write_text(WIKITEXT_TRAIN, encoding="utf-8")
    (root / "wiki.test.raw").write_text(WIKITEXT_TEST, encoding="utf-8")
    return root


def test_wikitext_paragraphs_skip_headings_and_undo_tokenisation(tmp_path):
    paragraphs = wikitext.load_wikitext(str(write_wikitext_dir(tmp_path / "wt")), "train")
    assert [pid for pid, _ in paragraphs] == ["wikitext-train-3", "wikitext-train-7"]
    text = paragraphs[0][1]
    assert "role-playing" in text and "1,000 fans" in text and "8.5 out of ten, critics said." in text
    assert text.startswith("Senjō no Valkyria 3: Unrecorded")


def test_prose_triplets_cut_where_documented():
    words = [f"w{i}" for i in range(40)]
    spans = SpanOptions(query_words=2, answer_words=3, min_context_words=10, max_context_words=20)
    (triplet,), dropped = prose_triplets([("p", " ".join(words)), ("short", "a b c")], spans, seed=3)
    cut = len(triplet.context.split())
    assert 10 <= cut <= 20
    assert triplet.query.split() == words[cut : cut + 2] and triplet.answer.split() == words[cut + 2 : cut + 5]
    assert f"{triplet.context} {triplet.query} {triplet.answer}".split() == words[: cut + 5]
    assert dropped == {"fewer than 15 words": 1}
    again, _ = prose_triplets([("p", " ".join(words))], spans, seed=3)
    assert again == [triplet]
    cuts = {len(prose_triplets([("p", " ".join(words))], spans, seed=s)[0][0].context.split()) for s in range(40)}
    assert cuts == set(range(10, 21))  # every allowed cut is reachable


def test_sample_is_seeded_and_keeps_order():
    items = list(range(100))
    picked = sample(items, 10, seed=1)
    assert picked == sorted(picked) and len(picked) == 10 and picked == sample(items, 10, seed=1)
    assert sample(items, None, 1) is items


def test_tidy_spacing():
    assert tidy_spacing(" He said , ( quietly ) that it 's 5 % .") == "He said, (quietly) that it's 5%."


def test_wikitext_cli_writes_a_dataset_and_reports_counts(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["data", "wikitext", "--source", str(write_wikitext_dir(tmp_path / "wt")), "--out", str(out),
            "--min-context-words", "10", "--max-context-words", "30"]
    assert main(args) == 0
    train, test = load_triplets(out / "train.jsonl"), load_triplets(out / "test.jsonl")
    assert len(train) == 1 and len(test) == 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"] == {"records": 2, "usable": 1, "kept": 1, "dropped": {"fewer than 16 words": 1}}
    assert "dropped: 1 fewer than 16 words" in capsys.readouterr().out
    assert main(args) == 2  # an existing dataset is never overwritten


def test_wikitext_missing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "wt").mkdir()
    assert main(["data", "wikitext", "--source", str(tmp_path / "wt"), "--out", str(tmp_path / "o")]) == 2
    assert "wiki.train.raw: no such file" in capsys.readouterr().err


def test_article_paragraphs_keep_prose_only():
    markup = ("'''Mars''' is the fourth planet from the Sun and the second smallest planet in the Solar System, "
              "after Mercury.\n\n== History ==\n\n* a list item that is long enough to pass the word count test "
              "easily here.\n\nShort line.\n")
    assert article_paragraphs(markup, min_words=10) == [
        "Mars is the fourth planet from the Sun and the second smallest planet in the Solar System, after Mercury."]


@pytest.fixture(scope="module")
def wiki_splits():
    return {split: wiki_offline_paragraphs(split) for split in ("train", "test")}


def test_wiki_offline_split_is_by_article_and_deterministic(wiki_splits):
    articles = {split: {pid.rsplit("-", 1)[0] for pid, _ in paras} for split, paras in wiki_splits.items()}
    assert articles["train"].isdisjoint(articles["test"])
    assert all(is_test_key(a.replace("_", " ")) for a in articles["test"])
    assert len(articles["test"]) >= 5 and len(wiki_splits["test"]) >= 200 and len(wiki_splits["train"]) >= 2000
    assert wiki_offline_paragraphs("test") == wiki_splits["test"]


def test_wiki_offline_cli(tmp_path):
    out = tmp_path / "wiki"
    assert main(["data", "wiki-offline", "--out", str(out), "--n-test", "50"]) == 0
    test = load_triplets(out / "test.jsonl")
    assert len(test) == 50 and all(len(t.query.split()) == 1 and len(t.answer.split()) == 5 for t in test)


def test_bad_span_options_exit_2(tmp_path, capsys):
    assert main(["data", "wiki-offline", "--out", str(tmp_path / "o"), "--min-context-words", "50",
                 "--max-context-words", "10"]) == 2
    assert "max_context_words (10) is below min_context_words (50)" in capsys.readouterr().err


def test_squad_cli_from_local_dir(tmp_path):
    start = PASSAGE.index("Normandy")
    doc = squad_document([(PASSAGE, [qa("q1", "What region?", ("Normandy", start))])])
    out = tmp_path / "out"
    assert main(["data", "squad", "--source", str(write_squad_dir(tmp_path, doc, doc)), "--out", str(out)]) == 0
    (triplet,) = load_triplets(out / "test.jsonl")
    assert triplet.answers == ("Normandy",)
    assert json.loads((out / "meta.json").read_text())["test"]["kept"] == 1


def test_squad_rows_from_missing_path_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(squad.squad_rows(str(tmp_path / "nothing.json"), "train"))
