import pytest

from promptstep.data.triplets import Triplet
from promptstep.errors import InputError
from promptstep.evaluate import cut_at_answer_end
from promptstep.formats import Format, encode_pair, fit_lengths
from promptstep.metrics import exact_match, f1_score, first_line, mean_se, normalize_answer, starts_with_answer

T = Triplet("t1", "The first person to walk on Mars is Evan Armstrong.",
            "The history books record that the first person on Mars was", "Evan Armstrong")


def test_settings_render_the_paper_layouts():
    fmt = Format()
    assert fmt.prefix(T, "nc") == T.query
    assert fmt.prefix(T, "ft") == T.query
    assert fmt.prefix(T, "prompt") == T.context + " " + T.query
    assert fmt.inner_text(T) == T.context
    with pytest.raises(InputError, match="unknown setting"):
        fmt.prefix(T, "zero-shot")


def test_joint_tokenisation_splits_prefix_and_answer(tokenizer):
    enc = encode_pair(tokenizer, T.query, T.answer)
    assert enc.ids == tokenizer(T.query + " " + T.answer).input_ids
    assert tokenizer.decode(enc.answer_ids) == " Evan Armstrong"
    assert tokenizer.decode(enc.prefix_ids) == T.query


def test_boundary_merge_counts_to_the_answer(tokenizer):
    # "foobar" is one token of this tokenizer, so "...the foo" + "bar" merges across the boundary.
    assert len(tokenizer(" foobar").input_ids) == 1
    enc = encode_pair(tokenizer, "the foo", "bar", answer_prefix="")
    assert tokenizer.decode(enc.prefix_ids) == "the"
    assert tokenizer.decode(enc.answer_ids) == " foobar"
    assert enc.ids == tokenizer("the foobar").input_ids


def test_fit_lengths_rejects_or_truncates(tokenizer):
    long = Triplet("long", "word " * 200 + "The first person is Evan Armstrong.", T.query, T.answer)
    with pytest.raises(InputError, match="triplet 'long' is .* tokens .* limit of 64"):
        fit_lengths([long], tokenizer, 64, Format(), truncate=False, source="x.jsonl")
    (cut,) = fit_lengths([long], tokenizer, 64, Format(), truncate=True, source="x.jsonl")
    assert cut.context.endswith("Evan Armstrong.")
    assert len(encode_pair(tokenizer, Format().prefix(cut, "prompt"), cut.answer).ids) <= 64


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an  apple,  a pear ", "apple pear"),
        ("Evan Armstrong.", "evan armstrong"),
        ("Theatre", "theatre"),
        ("rock-and-roll", "rockandroll"),
    ],
)
def test_squad_normalisation(text, normal):
    assert normalize_answer(text) == normal


def test_em_f1_and_starts_by_hand():
    assert exact_match("the Evan Armstrong.", ["Evan Armstrong"]) == 1.0
    assert exact_match("Evan", ["Evan Armstrong"]) == 0.0
    assert exact_match("Dundee", ["Edinburgh", "dundee"]) == 1.0
    # pred tokens {evan}, gold {evan, armstrong}: P=1, R=1/2 -> F1=2/3
    assert f1_score("Evan", ["Evan Armstrong"]) == pytest.approx(2 / 3)
    # pred {evan, jones, smith} vs gold {evan, armstrong}: P=1/3, R=1/2 -> F1=0.4; max over golds
    assert f1_score("Evan Jones Smith", ["Evan Armstrong", "Mary"]) == pytest.approx(0.4)
    assert f1_score("nothing", ["Evan"]) == 0.0
    assert starts_with_answer("Evan Armstrong. She later", ["Evan Armstrong"]) == 1.0
    assert starts_with_answer("Evan Armstrongson", ["Evan Armstrong"]) == 0.0
    assert first_line(" Evan Armstrong\nThe next") == "Evan Armstrong"
    assert first_line("\n\n Evan Armstrong\nThe next") == "Evan Armstrong"  # leading blank lines skipped


def test_generation_ends_at_the_newline_after_the_answer():
    newline, blank, eos = {10, 11}, {10, 20}, {99}  # 10 = "\n", 11 = "x\n", 20 = " "
    assert cut_at_answer_end([10, 20, 5, 6, 10, 7], newline, blank, eos) == [10, 20, 5, 6, 10]
    assert cut_at_answer_end([5, 11, 7], newline, blank, eos) == [5, 11]
    assert cut_at_answer_end([11, 7], newline, blank, eos) == [11]  # text before its own newline ends it
    assert cut_at_answer_end([10, 10, 99, 5], newline, blank, eos) == [10, 10, 99]
    assert cut_at_answer_end([5, 6], newline, blank, eos) == [5, 6]


def test_mean_and_standard_error_by_hand():
    mean, se = mean_se([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    # sample sd = sqrt(1/3), se = sd / 2
    assert se == pytest.approx((1 / 3) ** 0.5 / 2)
    assert mean_se([1.0]) == (1.0, 0.0)
