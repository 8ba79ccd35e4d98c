"""The eval run directory through the CLI, and JSONL round trips (bad input: test_bad_inputs.py)."""

import json

from promptstep.cli import main
from promptstep.data.triplets import Triplet, load_triplets, write_triplets

GOOD = {"id": "x1", "context": "Evan Armstrong is the first person on Mars.", "query": "The first person on Mars was",
        "answer": "Evan Armstrong"}


def _line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


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
