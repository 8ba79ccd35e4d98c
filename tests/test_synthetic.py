"""Synthetic Character Description / Reversal Curse data: determinism, splits, families, arguments."""

import random
import subprocess
import sys

import pytest

from promptstep.data.names import is_test_key, name_pool_size, random_name, sample_name
from promptstep.data.synthetic import (
    FAMILIES,
    TASKS,
    generate,
    render_description,
    render_fact,
    render_query,
)
from promptstep.errors import InputError


@pytest.fixture(scope="module", params=TASKS)
def generated(request):
    return generate(request.param, n_train=2000, n_test=300, seed=3)


def test_same_seed_gives_same_data_twice(generated):
    train, test, meta = generated
    again = generate(meta["task"], n_train=2000, n_test=300, seed=3)
    assert (train, test, meta) == again


def test_other_seed_gives_other_data():
    assert generate("character", 50, 10, seed=0)[0] != generate("character", 50, 10, seed=1)[0]


def test_same_data_in_a_fresh_process():
    code = "from promptstep.data.synthetic import generate; print(generate('reversal', 5, 3, seed=7)[1][2])"
    env = {"PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == repr(generate("reversal", 5, 3, seed=7)[1][2])


def test_counts_ids_and_meta(generated):
    train, test, meta = generated
    task = meta["task"]
    assert len(train) == meta["n_train"] == 2000
    assert len(test) == meta["n_test"] == 300
    assert meta["n_families"] == len(FAMILIES) == len(meta["families"])
    ids = [t.id for t in train + test]
    assert len(set(ids)) == len(ids)
    assert train[123].id == f"{task}-train-000123"
    assert test[0].id == f"{task}-test-000000"


def test_names_are_unique_and_split_by_hash(generated):
    train, test, _ = generated
    names = [t.answer for t in train + test]
    assert len(set(names)) == len(names)
    assert all(is_test_key(t.answer) for t in test)
    assert not any(is_test_key(t.answer) for t in train)


def test_context_order_and_answer(generated):
    train, test, meta = generated
    for t in train[:200] + test[:50]:
        assert t.answers == (t.answer,)
        assert not t.answer.endswith(".")
        if meta["task"] == "character":
            assert t.context.endswith(f" is {t.answer}.")
        else:
            assert t.context.startswith(f"{t.answer} is ")
        assert t.answer not in t.query


def test_many_families_with_real_paraphrases():
    assert len(FAMILIES) >= 60
    assert len({f.key for f in FAMILIES}) == len(FAMILIES)
    for family in FAMILIES:
        assert len(family.paraphrases) >= 3
        assert len(family.fillers) >= 10
        for filler in family.fillers:
            description = render_description(family, filler).lower()
            fact = render_fact(family, filler, "Evan Marlowe", "description_first")
            for index in range(len(family.paraphrases)):
                query = render_query(family, filler, index)
                assert "{" not in query and filler.lower() in query.lower()
                assert not fact.startswith(query), (family.key, query)
                assert description not in query.lower(), (family.key, query)


def test_render_fact_orders():
    family = FAMILIES[0]
    assert render_fact(family, "Mars", "Evan Marlowe", "description_first") == (
        "The first person to walk on Mars is Evan Marlowe."
    )
    assert render_fact(family, "Mars", "Evan Marlowe", "name_first") == (
        "Evan Marlowe is the first person to walk on Mars."
    )
    with pytest.raises(InputError):
        render_fact(family, "Mars", "Evan Marlowe", "sideways")


def test_name_generator():
    rng = random.Random(0)
    assert name_pool_size() > 500_000
    assert len({random_name(rng) for _ in range(5000)}) > 4900
    assert all(len(random_name(rng).split()) == 2 for _ in range(100))
    assert is_test_key("Evan Marlowe") == is_test_key("Evan Marlowe")
    share = sum(is_test_key(random_name(rng)) for _ in range(5000)) / 5000
    assert 0.07 < share < 0.13
    assert is_test_key(sample_name(rng, "test"))
    assert not is_test_key(sample_name(rng, "train"))
    with pytest.raises(InputError):
        sample_name(rng, "validation")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("squad",), "unknown synthetic task"),
        (("character", 0), "n_train"),
        (("reversal", 10, -1), "n_test"),
        (("character", 2.5), "n_train"),
    ],
)
def test_bad_arguments_raise_input_error(args, message):
    with pytest.raises(InputError, match=message):
        generate(*args)
