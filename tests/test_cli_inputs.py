"""Bad input through the CLI: one clear line on stderr, exit code 2, nothing written."""

import json

import pytest

from promptstep.cli import main
from promptstep.data.triplets import Triplet, load_triplets, write_triplets

GOOD = {"id": "x1", "context": "Evan Armstrong is the first person on Mars.", "query": "The first person on Mars was",
        "answer": "Evan Armstrong"}


def _line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


MALFORMED = [
    ("not-json", "{this is not json}\n", ":1: not valid JSON"),
    ("array", "[1, 2, 3]\n", ":1: expected a JSON object, got list"),
    ("missing-query", _line(query=...) + "\n", ":1: missing field 'query'"),
    ("missing-id", _line(id=...) + "\n", ":1: missing field 'id'"),
    ("number-answer", _line(answer=42) + "\n", ":1: field 'answer' must be a string, got int"),
    ("empty-context", _line(context="  ") + "\n", ":1: field 'context' is empty"),
    ("empty-answer", _line(answer="") + "\n", ":1: field 'answer' is empty"),
    ("duplicate-id", _line() + "\n" + _line() + "\n", ":2: duplicate id 'x1' (first on line 1)"),
    ("answers-not-list", _line(answers="Evan") + "\n", ":1: field 'answers' must be a non-empty list"),
    ("empty-file", "\n\n", "holds no triplets"),
    ("bad-second-line", _line() + "\n" + "{oops\n", ":2: not valid JSON"),
]


@pytest.mark.parametrize(("case", "content", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_jsonl_is_one_line_exit_2_nothing_written(tmp_path, capsys, case, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    runs = tmp_path / "runs"
    code = main(["eval", "--data", str(data), "--runs-dir", str(runs), "--model", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert message in err and "bad.jsonl" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_over_long_triplet_is_rejected_before_writing(tmp_path, capsys, saved_gpt2):
    capsys.readouterr()
    data = tmp_path / "long.jsonl"
    write_triplets(data, [Triplet("long", "word " * 300, "The first person on Mars was", "Evan")])
    runs = tmp_path / "runs"
    code = main(["eval", "--data", str(data), "--runs-dir", str(runs), "--model", saved_gpt2])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "triplet 'long' is" in err and "limit of 64" in err
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lrs", "-1e-3"], "'lrs' must be positive"),
        (["--lrs", "abc"], "expected a number"),
        (["--settings", "nc,zero"], "unknown setting 'zero'"),
        (["--batch-size", "0"], "'batch_size' must be positive"),
        (["--steps", "1.5"], "expected an integer"),
        (["--no-such-key", "1"], "unknown config key 'no-such-key'"),
        (["--model", "/no/such/dir"], "neither an embedded model"),
        (["--limit"], "needs a value"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    capsys.readouterr()
    data = tmp_path / "ok.jsonl"
    data.write_text(_line() + "\n")
    code = main(["eval", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lrs: [0.1\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    cfg.write_text("- a list\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    cfg.write_text("batch_size: many\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    assert "'batch_size': expected an integer" in capsys.readouterr().err


def test_eval_run_directory_and_refusal_to_overwrite(tmp_path, capsys, saved_gpt2):
    data = tmp_path / "ok.jsonl"
    data.write_text(_line() + "\n" + _line(id="x2") + "\n")
    args = ["eval", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--model", saved_gpt2,
            "--name", "r1", "--max-new-tokens", "2", "--lrs", "0.1,1.0"]
    assert main(args) == 0
    run = tmp_path / "runs" / "r1"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "records.jsonl", "summary.json", "metrics.csv",
                                               "settings.png"}
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 4  # nc, prompt, ft@0.1, ft@1
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["settings"]) == {"nc", "prompt", "ft@0.1", "ft@1"}
    stamp = (run / "records.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "records.jsonl").stat().st_mtime_ns == stamp
    assert main([*args, "--overwrite", "true"]) == 0


def test_jsonl_roundtrip(tmp_path):
    triplets = [Triplet("a", "c", "q", "ans", ("ans", "other")), Triplet("b", "c2", "q2", "x")]
    write_triplets(tmp_path / "t.jsonl", triplets)
    assert load_triplets(tmp_path / "t.jsonl") == triplets
