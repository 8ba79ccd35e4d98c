"""Faults during meta-training: kill -9 and resume, torn or corrupt checkpoints, NaN losses, a full disk."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import character_dataset, make_gpt2
from promptstep import checkpoints
from promptstep.checkpoints import load_checkpoint, save_checkpoint
from promptstep.cli import main
from promptstep.errors import InputError
from promptstep.meta import MetaOptions, MetaTrainer, batches_for, run_training
from promptstep.runs import trim_log
from test_meta import _examples

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 24)


def _meta_args(dataset, model, runs, name, *extra):
    return ["meta-train", "--data", dataset, "--model", model, "--runs-dir", str(runs), "--name", name,
            "--eval-n", "2", "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", "2",
            "--epochs", "2", "--checkpoint-every", "1", "--threads", "1", *extra]


def _log_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int) -> None:
    """Poll until `log` records `step` (or the process ends)."""
    while proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= step:
            return
        time.sleep(0.001)
    raise AssertionError(f"the run ended before step {step}")


def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(dataset, saved_gpt2_256, tmp_path):
    """kill -9 at a seeded random step of the run (observed in its log, so the kill lands mid-run on a machine of
    any speed; one checkpoint is written every step, right after the step is logged, so a kill often lands inside
    a save), then --resume: the final weights are bit-identical to an uninterrupted run, every step is logged
    exactly once, and nothing is left beside the published run."""
    epochs = ["--epochs", "6"]  # 72 steps: the kill comes at step 2..20, far from the end
    assert main([*_meta_args(dataset, saved_gpt2_256, tmp_path, "straight"), *epochs]) == 0
    run = tmp_path / "killed"
    work = tmp_path / ".killed.inprogress"
    command = [sys.executable, "-m", "promptstep.cli", *_meta_args(dataset, saved_gpt2_256, tmp_path, "killed"),
               *epochs]
    proc = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    rng = random.Random(1234)
    _wait_for_step(proc, work / "train_log.jsonl", rng.randint(2, 20))
    time.sleep(rng.uniform(0.0, 0.002))  # somewhere inside the step that follows (50+ steps before the end)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not run.exists()  # nothing is published before the run finishes
    assert checkpoints.recover(work / "checkpoint")
    killed_at = json.loads((work / "checkpoint" / "state.json").read_text())["progress"]["step"]
    assert 1 <= killed_at < 72
    assert main([*_meta_args(dataset, saved_gpt2_256, tmp_path, "killed"), *epochs]) == 2  # refused: resume it
    assert main([*_meta_args(dataset, saved_gpt2_256, tmp_path, "killed"), *epochs, "--resume", "true"]) == 0
    assert _log_steps(run) == list(range(1, 73))
    straight = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    resumed = load_file(str(run / "model" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert not list(run.glob(".checkpoint*"))  # no staging or swap leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "straight"]


def _trainer(tokenizer, **kw):
    options = MetaOptions(objective="lg", inner_lr=0.5, outer_lr=1e-2, clip=1.0, **kw)
    return MetaTrainer(make_gpt2(len(tokenizer), seed=3), tokenizer, options)


def test_checkpoint_swap_cut_between_the_two_renames_is_recovered(tokenizer, tmp_path, monkeypatch):
    trainer = _trainer(tokenizer)
    path = tmp_path / "checkpoint"
    trainer.save(path, {"tag": "first"})
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # current -> .old happened; staging -> current never does
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(path, {"tag": "second"})
    monkeypatch.undo()
    assert not path.exists() and (tmp_path / ".checkpoint.old").is_dir()
    weights, progress = load_checkpoint(path)
    assert progress["tag"] == "first" and path.is_dir()
    assert all(torch.equal(weights[n], p) for n, p in trainer.params.items())
    (tmp_path / ".checkpoint.partial-stale").mkdir()  # what a kill during a save leaves behind
    trainer.save(path, {"tag": "third"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c.joinpath("model.safetensors").write_bytes(c.joinpath("model.safetensors").read_bytes()[:100]),
         "model.safetensors: checksum mismatch, the checkpoint is corrupt"),
        (lambda c: _flip_byte(c / "optimizer.safetensors"), "optimizer.safetensors: checksum mismatch"),
        (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors: missing, the checkpoint is"),
        (lambda c: (c / "state.json").write_text('{"sha256": '), "state.json: unreadable checkpoint state"),
        (lambda c: (c / "state.json").write_text('{"progress": {}}'), "state.json: unreadable checkpoint state"),
    ],
    ids=["truncated-weights", "flipped-byte", "missing-file", "cut-state-json", "state-without-checksums"],
)
def test_damaged_checkpoint_is_refused_with_one_line(tokenizer, tmp_path, damage, message):
    trainer = _trainer(tokenizer)
    trainer.save(tmp_path / "checkpoint")
    damage(tmp_path / "checkpoint")
    with pytest.raises(InputError, match=message) as info:
        load_checkpoint(tmp_path / "checkpoint", trainer.optimizer)
    assert "\n" not in str(info.value)


def test_repeated_nan_losses_stop_with_the_last_good_checkpoint(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, nan_patience=2)
    batches = batches_for(_examples(tokenizer), batch_size=2, epochs=4, seed=0)
    poisoned = {3, 5, 6}  # step 3 is skipped alone; 5 and 6 in a row stop the run

    def inject(loss):
        return loss * float("nan") if trainer.step_count + 1 in poisoned else loss

    result = run_training(trainer, batches, out=tmp_path, eval_set=[], eval_every=0, checkpoint_every=1,
                          progress=False, inject=inject)
    assert result["stopped"] == "2 non-finite steps in a row at step 6"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if row.get("skipped")] == [3, 5, 6]
    weights, progress = load_checkpoint(tmp_path / "checkpoint")
    assert progress["step"] == 4  # the last step that was taken
    assert all(torch.equal(weights[n], p) for n, p in trainer.params.items())  # skipped steps changed nothing


def test_non_finite_run_exits_1_with_one_line(dataset, saved_gpt2_256, tmp_path, capsys):
    capsys.readouterr()
    args = _meta_args(dataset, saved_gpt2_256, tmp_path, "nan", "--inner-lr", "1e30", "--nan-patience", "2")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    work = tmp_path / ".nan.inprogress"
    assert err[-1] == ("promptstep meta-train: stopped: 2 non-finite steps in a row at step 2; "
                       f"no checkpoint (logs in {work})")
    assert _log_steps(work) == [1, 2]
    assert not (tmp_path / "nan").exists()
    assert main(args) == 1  # a stopped run without a checkpoint does not block a rerun


def test_full_disk_while_checkpointing_stops_and_keeps_the_previous_checkpoint(dataset, saved_gpt2_256, tmp_path,
                                                                               capsys, monkeypatch):
    real_save = checkpoints.save_file
    calls = []

    def filling_save(tensors, filename):
        calls.append(filename)
        if len(calls) > 4:  # two checkpoints (two files each) fit on the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, filename)

    monkeypatch.setattr(checkpoints, "save_file", filling_save)
    capsys.readouterr()
    assert main(_meta_args(dataset, saved_gpt2_256, tmp_path, "full")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stopped: could not write the step-3 checkpoint ([Errno 28] No space left on device)" in err
    work = tmp_path / ".full.inprogress"
    assert f"last good checkpoint in {work / 'checkpoint'} (continue with --resume true)" in err
    weights, progress = load_checkpoint(work / "checkpoint")
    assert progress["step"] == 2 and not list(work.glob(".checkpoint*")) and not (tmp_path / "full").exists()


def test_trim_log_drops_rows_after_the_checkpoint_and_a_torn_last_row(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    trim_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\n{"step": 2}\n{"st')
    trim_log(log, 5)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_save_checkpoint_writes_safetensors_only(tokenizer, tmp_path):
    trainer = _trainer(tokenizer)
    save_checkpoint(tmp_path / "c", trainer.state_weights(), trainer.optimizer, {"step": 0})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                                 "state.json"]
