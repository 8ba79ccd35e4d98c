"""`--report-to`: the curves written to JSONL reach the tracker unchanged (TensorBoard, read back from its event
files); a missing tracker package is one error line before anything runs; only rank 0 logs."""

import json

import numpy as np
import pytest

from conftest import character_dataset
from promptstep.cli import main
from promptstep.tracking import Tracker, flat_scalars

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is not installed (pip install 'promptstep[tracking]')")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 12)


FAST = ["--eval-n", "2", "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", "2",
        "--threads", "1"]


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would show from the event files in `directory`: tag -> [(step, value)]."""
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _f32(value: float) -> float:
    """What TensorBoard stores of a value (a float32)."""
    return float(np.float32(value))


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_meta_train_sends_its_jsonl_curves_to_tensorboard(dataset, saved_gpt2_256, tmp_path):
    assert main(["meta-train", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path),
                 "--name", "m", "--train-limit", "8", "--epochs", "2", "--eval-every", "3", *FAST,
                 "--ppl-texts", "2", "--ppl-max-tokens", "16", "--report-to", "tensorboard"]) == 0
    run = tmp_path / "m"
    scalars = _scalars(run / "tensorboard")
    train = _jsonl(run / "train_log.jsonl")
    assert len(train) == 8
    assert {f"train/{k}" for k in _numbers(train[0])} == {t for t in scalars if t.startswith("train/")}
    for key in _numbers(train[0]):  # loss, its parts, grad norm, elapsed time: every step once, same value
        assert scalars[f"train/{key}"] == [(row["step"], _f32(row[key])) for row in train], key
    evals = _jsonl(run / "eval_log.jsonl")
    assert [e["step"] for e in evals] == [3, 6]
    summary = json.loads((run / "summary.json").read_text())
    blocks = [("eval", e["step"], e["settings"]) for e in evals]
    blocks += [("before", 0, summary["before"]), ("after", 8, summary["after"])]
    for prefix, step, settings in blocks:
        for setting, metrics in settings.items():
            for metric, value in metrics.items():
                assert (step, _f32(value)) in scalars[f"{prefix}/{setting}/{metric}"], (prefix, setting, metric)
    assert scalars["summary/wall_s"] == [(8, _f32(summary["wall_s"]))]
    for stage in ("before", "after"):  # the damage check's perplexities
        ppl = summary["heldout_text"][stage]["ppl"]
        assert scalars[f"summary/heldout_text/{stage}/ppl"] == [(8, _f32(ppl))]


def test_prepare_sends_its_losses_to_tensorboard(dataset, saved_gpt2_256, tmp_path):
    assert main(["prepare", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--name", "p",
                 "--n-examples", "6", "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--threads", "1",
                 "--report-to", "tensorboard"]) == 0
    scalars = _scalars(tmp_path / "p" / "tensorboard")
    log = _jsonl(tmp_path / "p" / "train_log.jsonl")
    for key in ("prompt_nll", "nc_nll"):
        assert scalars[f"prepare/{key}"] == [(row["step"], _f32(row[key])) for row in log]


def test_a_resumed_run_replaces_what_was_logged_after_its_checkpoint(tmp_path):
    """As the JSONL logs are trimmed on --resume, TensorBoard drops the interrupted run's rows after the
    checkpoint (step 2 here), so every step shows once, with the resumed run's value."""
    with Tracker("tensorboard", tmp_path, "r") as first:
        for step in (1, 2, 3, 4):
            first.log({"step": step, "loss": float(step)}, step, "train")
    with Tracker("tensorboard", tmp_path, "r", resumed_at=2) as resumed:
        for step in (3, 4, 5):
            resumed.log({"step": step, "loss": 10.0 * step}, step, "train")
    assert _scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]


def test_a_disabled_or_none_tracker_writes_nothing(tmp_path):
    for tracker in (Tracker("tensorboard", tmp_path, "r", enabled=False), Tracker("none", tmp_path, "r")):
        with tracker:
            tracker.log({"loss": 1.0}, 1)
    assert not any(tmp_path.iterdir())


def test_flat_scalars_keeps_finite_numbers_only():
    row = {"loss": float("nan"), "grad_norm": 2.5, "skipped": True, "note": "x", "nc": {"em": 0.5, "n": 4}}
    assert flat_scalars(row, "train") == {"train/grad_norm": 2.5, "train/nc/em": 0.5, "train/nc/n": 4}


@pytest.mark.parametrize("command", ["meta-train", "prepare", "demo"])
def test_a_missing_tracker_package_is_one_line_before_anything_runs(command, dataset, tmp_path, capsys,
                                                                   monkeypatch):
    import promptstep.tracking

    monkeypatch.setattr(promptstep.tracking, "find_spec", lambda name: None)  # as if wandb were not installed
    data = [] if command == "demo" else ["--data", dataset]
    assert main([command, *data, "--runs-dir", str(tmp_path / "runs"), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"promptstep {command}: error: --report-to wandb needs the 'wandb' package, which is not "
                   "installed (pip install wandb)"]
    assert main([command, *data, "--runs-dir", str(tmp_path / "runs"), "--report-to", "mlflow"]) == 2
    assert "unknown report_to 'mlflow'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_log_once_from_rank_0(dataset, saved_gpt2_256, tmp_path):
    assert main(["meta-train", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path),
                 "--name", "two", "--train-limit", "8", *FAST[:-2], "--batch-size", "4", "--num-processes", "2",
                 "--threads", "2", "--report-to", "tensorboard"]) == 0
    run = tmp_path / "two"
    events = [p for p in (run / "tensorboard").iterdir() if p.name.startswith("events.")]
    assert len(events) == 1  # one writer
    train = _jsonl(run / "train_log.jsonl")
    assert _scalars(run / "tensorboard")["train/loss"] == [(row["step"], _f32(row["loss"])) for row in train]
