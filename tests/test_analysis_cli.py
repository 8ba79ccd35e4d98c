"""`promptstep analyze` end to end on the shipped tiny model, and bad input through the CLI."""

import csv
import json

import pytest
import yaml

from conftest import character_dataset
from promptstep.cli import main

MR = ["analyze", "--models", "tiny", "--n-test", "3", "--n-demos", "2", "--lr", "0.1"]


@pytest.fixture(scope="module")
def character(tmp_path_factory):
    return character_dataset(tmp_path_factory, 4, 3)


def test_mr_run_writes_every_output(tmp_path):
    assert main([*MR, "--permutations", "2", "--runs-dir", str(tmp_path), "--name", "mr"]) == 0
    run = tmp_path / "mr"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "records.jsonl", "metrics.json", "metrics.csv", "table.md"} <= names
    assert {f"layers_{m}.png" for m in ("simaou", "simaou_norm", "simam", "simam_delta", "alpha")} <= names
    assert yaml.safe_load((run / "config.yaml").read_text())["permutations"] == 2
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    subjects = ["tiny", "tiny:random-init", "tiny:trained-embeddings"]
    assert [r["model"] for r in rows] == [s for s in subjects for _ in range(3)]
    row = rows[0]
    assert set(row["correct"]) == {"zs", "icl", "sgd", "lcgd"}
    assert len(row["sgd"]["simaou"]) == len(row["lcgd"]["simam_delta"]) == len(row["alpha"]) == 4  # tiny: 4 layers
    assert set(row["order_sensitivity"]) == {"icl", "sgd", "lcgd"} and "icl_vs_icl" in row
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sizes"] == {"models": 3, "test_inputs": 3, "demos_per_group": 2, "orderings": 2}
    tiny = metrics["models"]["tiny"]
    simaou = tiny["rules"]["sgd"]["simaou"]
    assert simaou["mean"] == pytest.approx(sum(simaou["per_layer"]) / 4, abs=1e-5)
    assert -1 <= tiny["alpha"]["mean"] <= 1 and tiny["order_sensitivity"]["icl"]["mean"] >= 0
    with (run / "metrics.csv").open() as handle:
        settings = [r["setting"] for r in csv.DictReader(handle)]
    assert settings == [f"{s}/{k}" for s in subjects for k in ("zs", "icl", "sgd", "lcgd")]
    assert main([*MR, "--runs-dir", str(tmp_path), "--name", "mr"]) == 2  # never overwrites silently


def test_character_run_compares_prompt_with_one_step(character, tmp_path):
    args = ["analyze", "--task", "character", "--data", character, "--models", "tiny", "--rules", "sgd",
            "--train-params", "all", "--lr", "0.1", "--baselines", "", "--position", "label",
            "--runs-dir", str(tmp_path), "--name", "ch"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "ch" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["model"] for r in rows} == {"tiny"}
    assert rows[0]["id"] == "character-test-000000" and "lcgd" not in rows[0]
    assert (tmp_path / "ch" / "layers_simam_delta.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "squad"], "config key 'task': unknown value 'squad'"),
        (["--baselines", "half"], "config key 'baselines': unknown value 'half'"),
        (["--position", "first"], "config key 'position': unknown value 'first'"),
        (["--permutations", "1"], "'permutations' must be 0 (off) or at least 2"),
        (["--n-test", "0"], "'n_test' must be positive"),
        (["--rules", ""], "config key 'rules' is empty"),
        (["--task", "character"], "task 'character' needs --data"),
        (["--n-demos", "150", "--n-test", "100"], "more than the 200 MR sentences"),
        (["--n-demos", "30"], "over the 256-token window of tiny"),
        (["--train-params", "(["], "not a valid regex"),
        (["--permutations", "3"], "permutations 3 is more than the 2 orders"),
        (["--models", "no/such/dir/x"], "no such directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    capsys.readouterr()
    code = main([*MR, "--runs-dir", str(tmp_path / "runs"), "--name", "bad", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # neither the run nor a staging directory


def test_meta_train_accepts_the_lcgd_inner_rule(character, saved_gpt2_256, tmp_path):
    args = ["meta-train", "--data", character, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path),
            "--train-limit", "2", "--batch-size", "2", "--eval-n", "1", "--max-new-tokens", "2",
            "--inner-rule", "lcgd", "--inner-lr", "0.1", "--checkpoint-every", "0", "--name", "m"]
    assert main(args) == 0
    assert yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())["inner_rule"] == "lcgd"
    assert main([*args[:-2], "--name", "m2", "--inner-rule", "adam"]) == 2


@pytest.mark.slow
def test_mr_on_smollm2_records_every_layer_and_head(tmp_path):
    args = ["analyze", "--models", "smollm2-135m", "--n-test", "1", "--n-demos", "2", "--baselines", "",
            "--runs-dir", str(tmp_path), "--name", "s"]
    assert main(args) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "s" / "records.jsonl").read_text().splitlines()]
    assert len(row["sgd"]["simaou"]) == len(row["alpha"]) == 30
