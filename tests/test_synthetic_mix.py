"""Synthetic data without the "say the last name" shortcut: multi-fact contexts, name styles, held-out families,
varied phrasing, the new Triplet fields, and byte-identical output under the default options."""

import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from promptstep.cli import main
from promptstep.data import names as names_module
from promptstep.data.names import (
    CULTURES,
    FIRST_ENDS,
    FIRST_STARTS,
    HYPHEN_CULTURES,
    INITIALS,
    LAST_ENDS,
    LAST_STARTS,
    NAME_STYLES,
    TITLES,
    is_test_key,
    iter_names,
    name_pool,
    random_name,
    sample_name_key,
)
from promptstep.data.synthetic import (
    FACT_TEMPLATES,
    FAMILIES,
    TASK_ORDER,
    TASKS,
    SyntheticOptions,
    _Names,
    generate,
    generate_splits,
    heldout_family_keys,
    render_description,
    render_fact,
    render_query,
)
from promptstep.data.triplets import Tags, Triplet, load_triplets, write_triplets
from promptstep.errors import InputError

STYLES = tuple(NAME_STYLES)
BY_KEY = {f.key: f for f in FAMILIES}


# ---------------------------------------------------------------- helpers: read a context back


def _facts_of(t: Triplet, order: str) -> list[tuple[str, str, str, int]]:
    """(family key, filler, name, template) of every fact, recovered from the context text alone, in order;
    asserts that the facts joined by single spaces are exactly the context."""
    names = list(t.distractors)
    names.insert(t.tags["position"], t.answer)
    keys = t.tags["fact_families"].split(",")
    assert len(keys) == len(names) == t.tags["n_facts"]
    facts, rest = [], t.context
    for key, name in zip(keys, names):
        family = BY_KEY[key]
        found = [(x, i, s) for x in family.fillers for i in range(len(FACT_TEMPLATES[order]))
                 if rest.startswith(s := render_fact(family, x, name, order, i))]
        assert len(found) == 1, (t.id, key, name, rest)
        x, i, sentence = found[0]
        facts.append((key, x, name, i))
        rest = rest[len(sentence):]
        rest = rest[1:] if rest.startswith(" ") else rest
    assert rest == "", t.id
    return facts


def _plain(name: str) -> str:
    """The plain 'Given Surname' key of a titled or initialled name."""
    words = name.split()
    if words[0] in TITLES:
        words = words[1:]
    return " ".join(w for w in words if not re.fullmatch(r"[A-Z]\.", w))


def _split_of(name: str) -> str:
    test, key_test = is_test_key(name), is_test_key(_plain(name))
    assert test == key_test, name
    return "test" if test else "train"


FIRSTS = {a + b for a in FIRST_STARTS for b in FIRST_ENDS}
LASTS = {a + b for a in LAST_STARTS for b in LAST_ENDS}
PAIRS = {(g, s) for c in CULTURES for g in c.given for s in c.surnames}


def _style_of(name: str) -> set[str]:
    """Every style that can produce `name` (parsed independently of the generator)."""
    words = name.split()
    styles = set()
    if len(words) == 2 and words[0] in FIRSTS and words[1] in LASTS:
        styles.add("invented")
    if len(words) == 2 and tuple(words) in PAIRS:
        styles.add("common")
    if len(words) == 3 and words[0] in TITLES and tuple(words[1:]) in PAIRS:
        styles.add("titled")
    if len(words) == 3 and words[1][:-1] in INITIALS and words[1].endswith(".") and (words[0], words[2]) in PAIRS:
        styles.add("initials")
    if len(words) == 2:
        parts = words[1].split("-")
        for cut in range(1, len(parts)):
            a, b = "-".join(parts[:cut]), "-".join(parts[cut:])
            if a != b and any(c.key in HYPHEN_CULTURES and words[0] in c.given and {a, b} <= set(c.surnames)
                              for c in CULTURES):
                styles.add("hyphenated")
    return styles


def _sha(triplets) -> str:
    return hashlib.sha256("".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n"
                                  for t in triplets).encode("utf-8")).hexdigest()


ALL = SyntheticOptions(facts=(1, 2, 3), name_styles=STYLES, templates="varied", heldout_families=5,
                       same_family=0.3, same_filler=0.3)


@pytest.fixture(scope="module", params=TASKS)
def mixed(request):
    return request.param, generate_splits(request.param, 1500, 300, seed=4, options=ALL)


# ---------------------------------------------------------------- default options: the original files


# SHA-256 of the JSONL written by the generator before multi-fact contexts existed (same code path as `data`).
ORIGINAL = {
    ("character", 300, 60, 0): ("a693e401bb34d24781e293593e788ddb7865e36d1c2aa58d4f458a6e57078428",
                                "740f842d4511eb8797759535b311fcd47cfd6f41405d184462dfb3faa2df9ee3"),
    ("character", 1000, 200, 7): ("7f17f8f2fb317eb6ebb26b6fb3b4b25a8cae48f6ffc41f8d89d10b334f181d7a",
                                  "dc8b311604922acf0b23a67a8993e16077ec7a11f24dff43d4b1a1bceeb8b2d7"),
    ("reversal", 300, 60, 0): ("86ec28af339ec95f69568144fd508b9d9bb027cd863de96ae4ee38506173b8fd",
                               "bb50a6af4438624dd61b7da4e42f692016e9655d8f27509504d03f3eab3a4fd9"),
    ("reversal", 1000, 200, 7): ("7781ec50afd4c653f348f2f91254b5026f0993bd6171c99ba5a1da98a172bc84",
                                 "ab50a3ff0f8b79a16d8d741058bd594079b0d583705d95b5c852721c3dc766c8"),
    ("character", 5000, 500, 0): ("b9a0200211ff040b7509b08ff629c12ef9656f73ebfde2edd96f0f85a7c19415",
                                  "ca606d19da2c1504206729fbdf7936d752c734e93fe9324a387d5f69c781eca6"),
    ("reversal", 5000, 500, 0): ("922724c8e46670761c797dc465cd5ae302c78a0ffba340e91e5bd244bb1570f6",
                                 "15f50957fdce4a692624c03902e73947b7f02760a3c82784b9520ee5eb6a6020"),
}


@pytest.mark.parametrize("args", list(ORIGINAL))
def test_default_options_reproduce_the_original_files(args):
    train, test, _ = generate(*args)
    assert (_sha(train), _sha(test)) == ORIGINAL[args]
    train2, test2, _ = generate(*args, options=SyntheticOptions(facts=(1, 1), same_family=0.9, same_filler=0.1))
    assert (train2, test2) == (train, test)  # options that cannot change a one-fact context change nothing


def _original_sampling(task: str, n_train: int, n_test: int, seed: int) -> list[tuple[str, str, str]]:
    """A frozen copy of the original generator's draws (family, filler, paraphrase, unique name)."""
    rng = random.Random(f"promptstep-synthetic:{task}:{seed}")
    used, out = set(), []
    for split, count in (("train", n_train), ("test", n_test)):
        for _ in range(count):
            family = rng.choice(FAMILIES)
            filler = rng.choice(family.fillers)
            paraphrase = rng.randrange(len(family.paraphrases))
            while True:
                name = random_name(rng)
                if is_test_key(name) == (split == "test") and name not in used:
                    used.add(name)
                    break
            out.append((render_fact(family, filler, name, TASK_ORDER[task]), render_query(family, filler, paraphrase),
                        name))
    return out


@pytest.mark.parametrize(("task", "seed"), [("character", 11), ("reversal", 12), ("character", 99)])
def test_default_options_follow_the_original_sampling(task, seed):
    train, test, _ = generate(task, 400, 80, seed)
    assert [(t.context, t.query, t.answer) for t in train + test] == _original_sampling(task, 400, 80, seed)
    assert all(t.distractors is None and t.tags is None for t in train + test)
    assert set(train[0].to_json()) == {"id", "context", "query", "answer", "answers"}


def test_cli_defaults_write_the_original_files(tmp_path):
    out = tmp_path / "d"
    assert main(["data", "character", "--out", str(out), "--n-train", "300", "--n-test", "60"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "test.jsonl", "train.jsonl"]
    digest = [hashlib.sha256((out / f"{s}.jsonl").read_bytes()).hexdigest() for s in ("train", "test")]
    assert tuple(digest) == ORIGINAL[("character", 300, 60, 0)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["facts"] == [1] and meta["heldout_families"] == [] and meta["name_styles"] == ["invented"]


# ---------------------------------------------------------------- multi-fact contexts


def test_fact_count_mix_and_uniform_position():
    options = SyntheticOptions(facts=(1, 2, 2, 3), name_styles=("invented", "common"))
    train, _, _ = generate("character", 6000, 10, seed=5, options=options)
    shares = Counter(t.tags["n_facts"] for t in train)
    # binomial standard error at n = 6000 is <= 0.0065; allow 0.03 (4.6 SE)
    for k, want in ((1, 0.25), (2, 0.5), (3, 0.25)):
        assert abs(shares[k] / len(train) - want) < 0.03, shares
    for k in (2, 3):
        positions = Counter(t.tags["position"] for t in train if t.tags["n_facts"] == k)
        assert set(positions) == set(range(k))
        total = sum(positions.values())
        assert all(abs(n / total - 1 / k) < 0.05 for n in positions.values()), positions
    for t in train:
        assert len(t.distractors) == t.tags["n_facts"] - 1


def test_distractors_are_plausible_wrong_answers(mixed):
    task, (splits, _) = mixed
    order = TASK_ORDER[task]
    kinds = Counter()
    for split, items in splits.items():
        for t in items:
            facts = _facts_of(t, order)  # also: the context is exactly the facts joined by single spaces
            fact_names = [name for _, _, name, _ in facts]
            assert t.context.count(t.answer) == 1 and t.answer not in t.distractors
            assert len(set(fact_names)) == len(fact_names) == len({_plain(n) for n in fact_names})
            want_split = "train" if split == "train" else "test"
            assert t.tags["name_style"] in _style_of(t.answer)
            for name in t.distractors:
                assert t.context.count(name) == 1
                assert _split_of(name) == _split_of(t.answer) == want_split
                assert t.tags["name_style"] in _style_of(name), (name, t.tags)
                assert not any(name in other or other in name for other in fact_names if other != name)
            assert len({(key, x) for key, x, _, _ in facts}) == len(facts)  # no fact twice
            key, filler, _, template = facts[t.tags["position"]]
            assert key == t.tags["family"] and template == t.tags["template"]
            assert t.query == render_query(BY_KEY[key], filler, _paraphrase(t.query, key, filler))
            same_family = [x for k, x, _, _ in facts if k == key]
            assert len(same_family) == len(set(same_family))  # same family → another filler
            assert t.tags["same_family"] == len(same_family) - 1
            assert t.tags["same_filler"] == sum(k != key and x == filler for k, x, _, _ in facts)
            kinds.update(same_family=t.tags["same_family"], same_filler=t.tags["same_filler"])
            for k, x, n, i in facts:  # Character Description: description first; Reversal Curse: name first
                sentence = render_fact(BY_KEY[k], x, n, order, i)
                description = sentence.lower().index(render_description(BY_KEY[k], x).lower())
                assert (description < sentence.index(n)) == (order == "description_first"), sentence
    assert kinds["same_family"] > 100 and kinds["same_filler"] > 30


def _paraphrase(query: str, key: str, filler: str) -> int:
    family = BY_KEY[key]
    return [render_query(family, filler, i) for i in range(len(family.paraphrases))].index(query)


@pytest.mark.parametrize(("same_family", "same_filler"), [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0)])
def test_distractor_kind_probabilities(same_family, same_filler):
    options = SyntheticOptions(facts=(3,), same_family=same_family, same_filler=same_filler)
    train, _, _ = generate("character", 600, 10, seed=1, options=options)
    for t in train:
        facts = _facts_of(t, "description_first")
        key, filler = facts[t.tags["position"]][:2]
        others = [(k, x) for i, (k, x, _, _) in enumerate(facts) if i != t.tags["position"]]
        if same_family == 1.0:
            assert all(k == key and x != filler for k, x in others)
        elif same_filler == 1.0:
            sharing = {f.key for f in FAMILIES if filler in f.fillers} - {key}
            assert sum(x == filler for _, x in others) == min(2, len(sharing)), (t.context, sharing)
        else:
            assert all(k != key for k, _ in others)


def test_varied_templates_keep_the_order_and_use_every_phrasing(mixed):
    task, (splits, meta) = mixed
    used = {f[3] for t in splits["train"] for f in _facts_of(t, TASK_ORDER[task])}
    assert used == set(range(len(FACT_TEMPLATES[TASK_ORDER[task]])))
    assert meta["templates"] == "varied"


# ---------------------------------------------------------------- held-out families


def test_heldout_families_never_reach_train_or_test(mixed):
    task, (splits, meta) = mixed
    heldout = set(heldout_family_keys(5))
    assert meta["heldout_families"] == list(heldout_family_keys(5)) and len(heldout) == 5
    ranked = sorted(FAMILIES, key=lambda f: hashlib.sha256(f.key.encode()).hexdigest())
    assert heldout == {f.key for f in ranked[:5]}
    for split in ("train", "test"):
        for t in splits[split]:
            assert not heldout & set(t.tags["fact_families"].split(",")) and t.tags["family_split"] == "seen"
            text = t.context.lower() + " " + t.query.lower()
            assert not any(render_description(BY_KEY[k], x).lower() in text for k in heldout
                           for x in BY_KEY[k].fillers), t.context
    assert len(splits["test_families"]) == len(splits["test"]) == 300
    for t in splits["test_families"]:
        assert set(t.tags["fact_families"].split(",")) <= heldout and t.tags["family_split"] == "heldout"
        assert is_test_key(t.answer)
    answers = [t.answer for items in splits.values() for t in items]
    assert len(set(answers)) == len(answers)
    assert {t.tags["family"] for t in splits["test_families"]} == heldout


def test_heldout_split_is_deterministic_across_processes():
    code = ("from promptstep.data.synthetic import *; import hashlib, json; "
            "s, m = generate_splits('reversal', 50, 20, 3, SyntheticOptions(facts=(1, 2), heldout_families=7, "
            "name_styles=('common', 'titled'))); "
            "print(m['heldout_families'], hashlib.sha256(json.dumps([t.to_json() for v in s.values() for t in v])"
            ".encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1
    assert outs.pop().startswith(str(list(heldout_family_keys(7))))


# ---------------------------------------------------------------- name styles and pools


@pytest.mark.parametrize("style", STYLES)
def test_name_split_is_disjoint_and_pool_large_enough(style):
    rng = random.Random(style)
    drawn = {split: {sample_name_key(rng, split, style) for _ in range(400)} for split in ("train", "test")}
    for split, pairs in drawn.items():
        for name, key in pairs:
            assert is_test_key(name) == is_test_key(key) == (split == "test")
            assert _plain(name) == key and style in _style_of(name)
    keys = {split: {key for _, key in pairs} for split, pairs in drawn.items()}
    assert not keys["train"] & keys["test"]
    assert name_pool(style, "test") >= 1500 and name_pool(style, "train") >= 5 * name_pool(style, "test")
    if style == "common":
        test_names = list(iter_names(style, "test"))
        assert len(set(test_names)) == len(test_names) == name_pool(style, "test")
        assert all(is_test_key(n) for n in test_names)


def test_generated_names_never_cross_the_split(mixed):
    _, (splits, _) = mixed
    by_split = {"train": set(), "test": set()}
    for split, items in splits.items():
        for t in items:
            by_split["train" if split == "train" else "test"].update({_plain(n) for n in (t.answer, *t.distractors)})
    assert not by_split["train"] & by_split["test"]
    assert all(is_test_key(k) for k in by_split["test"]) and not any(is_test_key(k) for k in by_split["train"])


@pytest.mark.parametrize("style", STYLES)
def test_too_many_test_names_fail_fast_with_one_line(style):
    with pytest.raises(InputError) as err:
        generate("character", 10, name_pool(style, "test") + 1, options=SyntheticOptions(name_styles=(style,)))
    assert "\n" not in str(err.value) and f"'{style}'" in str(err.value) and "--n-test" in str(err.value)


def test_held_out_split_counts_against_the_test_pool():
    pool = name_pool("common", "test")
    with pytest.raises(InputError, match="test_families"):
        generate_splits("reversal", 10, pool // 2 + 1, options=SyntheticOptions(name_styles=("common",),
                                                                                 heldout_families=3))


def test_a_pool_running_out_midway_is_an_error_not_a_hang(monkeypatch):
    people = [f"Person{i} Example" for i in range(300)]
    style = names_module.NameStyle("tiny", "Person1 Example", lambda rng: (n := rng.choice(people), n),
                                   lambda: ((n, n) for n in people), 0)
    monkeypatch.setitem(NAME_STYLES, "tiny", style)
    pool = sum(1 for _ in iter_names("tiny", "test"))
    assert 10 < pool < 60
    names = _Names(random.Random(0))
    got = {names.answer("test", "tiny")[0] for _ in range(pool)}
    assert len(got) == pool
    with pytest.raises(InputError, match="all of them are taken"):
        names.answer("test", "tiny")


def test_cli_n_test_above_the_pool_fails_with_one_line(tmp_path, capsys):
    code = main(["data", "character", "--out", str(tmp_path / "d"), "--n-test", "5000", "--name-styles", "titled"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "name style 'titled'" in err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- the Triplet fields


def test_new_fields_round_trip(tmp_path, mixed):
    _, (splits, _) = mixed
    items = splits["train"][:50] + [Triplet("old", "c", "q", "a"), Triplet("x", "c", "q", "a", distractors=[],
                                                                            tags={"n": 1, "ok": True, "f": 0.5})]
    write_triplets(tmp_path / "t.jsonl", items)
    loaded = load_triplets(tmp_path / "t.jsonl")
    assert loaded == items
    assert isinstance(loaded[0].tags, Tags) and loaded[0].tags["family"] == items[0].tags["family"]
    assert loaded[-1].distractors == () and loaded[-2].distractors is None and loaded[-2].tags is None
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert json.loads(lines[-2]) == {"id": "old", "context": "c", "query": "q", "answer": "a", "answers": ["a"]}
    assert len({hash(t) for t in loaded}) == len(loaded)  # still hashable


GOOD = {"id": "g", "context": "Ann Lee is the mayor of Lima.", "query": "Lima is run by", "answer": "Ann Lee"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"distractors": "Bo Wu"}, "'distractors' must be a list"),
        ({"distractors": [1]}, "'distractors' must hold only strings"),
        ({"distractors": ["  "]}, "empty name"),
        ({"distractors": ["Ann Lee"]}, "also an answer"),
        ({"distractors": ["Bo Wu", "Bo Wu"]}, "repeats"),
        ({"tags": ["family"]}, "'tags' must be an object"),
        ({"tags": {"n": None}}, "tag 'n' must be a string, number or boolean, got null"),
        ({"tags": {"n": [1]}}, "tag 'n'"),
        ({"tags": {"n": {"a": 1}}}, "tag 'n'"),
        ({"tags": {"": 1}}, "empty key"),
    ],
)
def test_bad_new_fields_name_file_and_line(tmp_path, extra, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "h", **extra}) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        load_triplets(path)


def test_nan_tag_is_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**GOOD, "tags": {"x": 1}}).replace("1}", "NaN}") + "\n")
    with pytest.raises(InputError, match=r":1: not valid JSON \(NaN is not a JSON number\)"):
        load_triplets(path)


# ---------------------------------------------------------------- the data command


def test_cli_writes_the_extra_split_and_eval_reads_it(tmp_path, saved_gpt2_256):
    out = tmp_path / "d"
    args = ["data", "reversal", "--out", str(out), "--n-train", "40", "--n-test", "6", "--facts", "1,2,3",
            "--name-styles", "common,initials,titled", "--heldout-families", "3", "--templates", "varied",
            "--same-family", "0.5", "--same-filler", "0.2"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "test.jsonl",
                                                     "test_families.jsonl", "train.jsonl"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["heldout_families"] == list(heldout_family_keys(3)) and meta["n_test_families"] == 6
    assert meta["facts"] == [1, 2, 3] and meta["name_styles"] == ["common", "initials", "titled"]
    assert meta["same_family"] == 0.5 and meta["templates"] == "varied"
    assert meta["splits"] == {"train": 40, "test": 6, "test_families": 6}
    extra = load_triplets(out / "test_families.jsonl")
    assert all(t.tags["family"] in meta["heldout_families"] for t in extra)
    splits, _ = generate_splits("reversal", 40, 6, 0, SyntheticOptions(
        facts=(1, 2, 3), name_styles=("common", "initials", "titled"), heldout_families=3, templates="varied",
        same_family=0.5, same_filler=0.2))
    assert extra == splits["test_families"]
    assert main(["eval", "--data", str(out), "--split", "test_families", "--model", saved_gpt2_256, "--runs-dir",
                 str(tmp_path / "runs"), "--name", "ev", "--settings", "nc,prompt", "--limit", "2",
                 "--max-new-tokens", "2"]) == 0
    records = (tmp_path / "runs" / "ev" / "records.jsonl").read_text().splitlines()
    assert {json.loads(line)["id"] for line in records} == {t.id for t in extra[:2]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--facts", "0"], "facts"),
        (["--facts", "1,9"], "facts"),
        (["--facts", "two"], "facts"),
        (["--same-family", "1.5"], "same_family"),
        (["--same-family", "0.6", "--same-filler", "0.6"], "at most 1"),
        (["--name-styles", "invented,klingon"], "klingon"),
        (["--heldout-families", "-1"], "heldout_families"),
        (["--heldout-families", str(len(FAMILIES))], "heldout_families"),
        (["--templates", "fancy"], "templates"),
    ],
)
def test_cli_bad_data_options(tmp_path, capsys, extra, message):
    assert main(["data", "character", "--out", str(tmp_path / "d"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_synthetic_options_are_refused_for_real_text(tmp_path, capsys):
    assert main(["data", "wiki-offline", "--out", str(tmp_path / "d"), "--facts", "1,2"]) == 2
    assert "only to the character and reversal" in capsys.readouterr().err
