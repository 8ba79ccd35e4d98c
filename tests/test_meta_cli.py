"""meta-train and prepare through the CLI on a microscopic model: outputs, refusal, resume (bad input:
test_bad_inputs.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import character_dataset
from promptstep.cli import main

FAST = ["--eval-n", "2", "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 12)


def _meta(dataset, model, runs, *extra):
    return ["meta-train", "--data", dataset, "--model", model, "--runs-dir", str(runs), "--train-limit", "8",
            *FAST, *extra]


def test_meta_train_writes_a_complete_run(dataset, saved_gpt2_256, tmp_path):
    assert main(_meta(dataset, saved_gpt2_256, tmp_path, "--name", "m", "--epochs", "2")) == 0
    run = tmp_path / "m"
    expected = {"config.yaml", "train_log.jsonl", "before.json", "summary.json", "metrics.csv", "records.jsonl",
                "before_after.png", "training.png", "checkpoint", "model"}
    assert expected <= {p.name for p in run.iterdir()}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))  # 8 examples / batch 2 x 2 epochs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and set(summary["after"]) == {"nc", "prompt", "ft"}
    assert main(_meta(dataset, saved_gpt2_256, tmp_path, "--name", "m", "--epochs", "2")) == 2


def test_killed_and_resumed_run_matches_uninterrupted(dataset, saved_gpt2_256, tmp_path):
    args = ["--epochs", "2", "--checkpoint-every", "2", "--objective", "lg"]
    assert main(_meta(dataset, saved_gpt2_256, tmp_path, "--name", "full", *args)) == 0
    # An interrupted run: stop after 3 steps, leaving the step-2 checkpoint behind.
    assert main(_meta(dataset, saved_gpt2_256, tmp_path, "--name", "cut", *args, "--max-steps", "3")) == 0
    cut = tmp_path / "cut"
    (cut / "config.yaml").write_text((cut / "config.yaml").read_text().replace("max_steps: 3", "max_steps: null"))
    lines = (cut / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert main(_meta(dataset, saved_gpt2_256, tmp_path, "--name", "cut", *args, "--resume", "true")) == 0
    full = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(cut / "checkpoint" / "model.safetensors"))
    assert set(full) == set(resumed)
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_prepare_saves_a_loadable_model_and_its_subset(dataset, saved_gpt2_256, tmp_path):
    args = ["prepare", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--name", "p",
            "--n-examples", "6", "--steps", "3", "--batch-size", "2", "--lr", "1e-3"]
    assert main(args) == 0
    run = tmp_path / "p"
    ids = json.loads((run / "subset_ids.json").read_text())
    assert len(ids) == 6 and len(set(ids)) == 6
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3
    assert main(["eval", "--data", dataset, "--model", str(run / "model"), "--runs-dir", str(tmp_path),
                 "--name", "e", "--max-new-tokens", "2", "--settings", "nc"]) == 0
