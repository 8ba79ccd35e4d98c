"""A user's files are sacred: run names cannot escape, outputs are replaced only on success, one writer per run,
and SIGTERM / SIGKILL leave nothing behind that blocks or pollutes the next run (bad-input rows for the same
classes are in test_bad_inputs.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import character_dataset
from promptstep.cli import main
from promptstep.errors import InputError
from promptstep.runs import name_from, publish, run_lock, safe_name, staged_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 24)


def _meta(dataset, model, runs, name, *extra):
    return ["meta-train", "--data", dataset, "--model", model, "--runs-dir", str(runs), "--name", name,
            "--eval-n", "2", "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", "2",
            "--checkpoint-every", "1", "--threads", "1", *extra]


def _spawn(args):
    return subprocess.Popen([sys.executable, "-m", "promptstep.cli", *args], env={**os.environ, "PYTHONPATH": SRC},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _pause_at(proc, path: Path, lines: int = 1) -> None:
    """Wait until `path` has `lines` lines, then stop the process (SIGSTOP), so what follows cannot race it."""
    while proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.002)
    raise AssertionError("the process ended before the point it was to be paused at")


@pytest.mark.parametrize("name", ["ok", "run-1.2_x", "Résumé run", "a+b=c"])
def test_safe_names_pass(name):
    assert safe_name(name) == name


@pytest.mark.parametrize("spec", ["../models/x", "/abs/path/model", "org/name", ".hidden", " spaced out ", "a\nb",
                                  "x" * 400, "..", "", "\\\\server\\share"])
def test_names_derived_from_free_text_are_always_safe(spec):
    assert safe_name(name_from("eval", spec)) == name_from("eval", spec)
    assert safe_name(name_from(spec))


def test_publish_replaces_only_a_promptstep_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    staging = tmp_path / "new"
    staging.mkdir()
    with pytest.raises(InputError, match="not a promptstep run"):
        publish(staging, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_failed_staged_write_keeps_the_old_run_and_leaves_no_trace(tmp_path):
    target = tmp_path / "run"
    with staged_dir(target, overwrite=False) as staging:
        (staging / "config.yaml").write_text("a: 1\n")
        (staging / "summary.json").write_text("{}")
    with pytest.raises(RuntimeError), staged_dir(target, overwrite=True) as staging:
        (staging / "summary.json").write_text('{"new": true}')
        raise RuntimeError("the new run fails")
    assert json.loads((target / "summary.json").read_text()) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_next_writer_cleans_a_killed_writers_leftovers_and_recovers_a_cut_swap(tmp_path):
    target = tmp_path / "run"
    (tmp_path / ".run.partial-dead").mkdir()  # staging of a writer killed mid-run
    old = tmp_path / ".run.old-1-abcd"  # a swap killed between its two renames: the old run set aside
    old.mkdir()
    (old / "config.yaml").write_text("a: 1\n")
    (old / "summary.json").write_text('{"old": true}')
    with run_lock(target):
        assert json.loads((target / "summary.json").read_text()) == {"old": True}  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_second_writer_of_the_same_run_is_refused(tmp_path):
    with run_lock(tmp_path / "run"), pytest.raises(InputError, match="being written by another promptstep"), \
            run_lock(tmp_path / "run"):
        pass
    with run_lock(tmp_path / "run"):  # released: free again
        pass


def test_two_processes_overwriting_one_run_name_never_mix(dataset, saved_gpt2_256, tmp_path):
    """Two meta-train processes on one name with --overwrite: one is refused with one line and exit 2, the other
    publishes a whole run."""
    args = _meta(dataset, saved_gpt2_256, tmp_path, "shared", "--epochs", "3", "--overwrite", "true")
    first = _spawn(args)
    _pause_at(first, tmp_path / ".shared.inprogress" / "train_log.jsonl")  # mid-run, holding its lock
    second = _spawn(args)
    assert second.wait() == 2
    assert second.stderr.read().strip().endswith("is being written by another promptstep process; wait for it to "
                                                 "finish or choose another name")
    first.send_signal(signal.SIGCONT)
    assert first.wait() == 0
    run = tmp_path / "shared"
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == \
        list(range(1, 37))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def test_sigterm_during_meta_train_keeps_a_resumable_run_and_nothing_else(dataset, saved_gpt2_256, tmp_path):
    args = _meta(dataset, saved_gpt2_256, tmp_path, "term", "--epochs", "6")
    proc = _spawn(args)
    work = tmp_path / ".term.inprogress"
    _pause_at(proc, work / "train_log.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait() == 143
    assert proc.stderr.read().strip().splitlines()[-1] == "promptstep meta-train: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".term.inprogress"]
    assert not list(work.glob(".checkpoint*"))
    assert main([*args, "--resume", "true"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["term"]


def test_sigterm_during_eval_removes_its_staging(dataset, saved_gpt2_256, tmp_path):
    args = ["eval", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--name", "e",
            "--max-new-tokens", "2", "--lrs", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8", "--threads", "1", "--split", "train"]
    proc = _spawn(args)
    while proc.poll() is None and not list(tmp_path.glob(".e.partial-*/config.yaml")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)  # evaluating (config.yaml is written just before), and held there
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait() == 143
    assert list(tmp_path.iterdir()) == []
