"""`--help` documents every option from the config dataclasses: type, default and meaning (attribute docstrings)."""

from dataclasses import dataclass

import pytest

from promptstep.cli import COMMANDS, main
from promptstep.config import field_docs, option_docs, type_label


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_is_documented(command):
    """A new config field without an attribute docstring (a string on the line after it) fails here."""
    docs = field_docs(COMMANDS[command].config)
    missing = [name for name, text in docs.items() if not text.strip()]
    assert not missing, f"promptstep {command}: document these fields with a docstring after each: {missing}"
    too_long = [name for name, text in docs.items() if len(text) > 250]
    assert not too_long, f"promptstep {command}: keep each option's meaning to one short sentence: {too_long}"


@dataclass
class _Base:
    documented: int = 1
    """Meaning of documented."""
    redeclared: str = "a"
    """Meaning from the base."""


@dataclass
class _Child(_Base):
    redeclared: str = "b"  # no docstring here: the base's meaning applies
    forgotten: float | None = None
    extra: tuple[int, ...] = (1, 2)
    """Several
    lines,   collapsed."""


def test_field_docs_reads_attribute_docstrings_through_the_bases():
    assert field_docs(_Child) == {"documented": "Meaning of documented.", "redeclared": "Meaning from the base.",
                                  "forgotten": "", "extra": "Several lines, collapsed."}
    assert option_docs(_Child) == [("documented", "INT", "1", "Meaning of documented."),
                                   ("redeclared", "TEXT", "b", "Meaning from the base."),
                                   ("forgotten", "FLOAT", "none", ""),
                                   ("extra", "INT,...", "1,2", "Several lines, collapsed.")]


def test_type_labels():
    assert [type_label(t) for t in (bool, int, float, str, int | None, tuple[str, ...])] == [
        "true|false", "INT", "FLOAT", "TEXT", "INT", "TEXT,..."]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # wrapping depends on the terminal: compare words


@pytest.mark.parametrize(("argv", "expected"), [
    (("eval",), "--lrs FLOAT,... (default: 0.001) Learning rates of the FT step; each one is evaluated."),
    (("eval",), "--limit INT (default: none) Evaluate only the first N triplets (default: all)."),
    (("eval",), '--separator TEXT (default: " ") Text between the context and the query'),
    (("eval",), "--truncate true|false (default: false) Cut contexts from the left"),
    (("meta-train",), "--inner-lr FLOAT (default: 0.001) Learning rate η of the inner step"),  # from MetaOptions
    (("meta-train",), "--objective TEXT (default: lc) Outer objective: lc"),
    (("meta-train",), "--num-processes INT (default: 1) Data-parallel processes"),
    (("prepare",), "--nc-weight FLOAT (default: 0.5) Weight of the NC-format loss"),  # from PrepareOptions
    (("controls",), "--train-n INT (default: 100) Training triplets scored"),
    (("controls",), "--settings TEXT,... (default: nc,prompt,ft) Settings to score"),  # from EvalConfig
    (("data",), "TASK Dataset to build: character, reversal"),  # the positional
    (("data",), "--facts INT,... (default: 1) character, reversal: facts per context"),
    (("report",), "--metric TEXT (default: tok_acc) Metric of the tables"),
])
def test_help_shows_type_default_and_meaning(capsys, argv, expected):
    assert expected in _help(capsys, *argv)


def test_help_lists_every_field_and_the_shared_options(capsys):
    for name, command in COMMANDS.items():
        text = _help(capsys, name)
        for option, kind, default, _meaning in option_docs(command.config):
            assert f"--{option} {kind} (default: {default})" in text, (name, option)
        assert "--config FILE" in text and "--threads N" in text


def test_no_command_prints_the_command_list(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
