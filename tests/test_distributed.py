"""Data-parallel meta-training: two gloo processes on CPU against one process with the same global batch."""

import json

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from conftest import character_dataset
from promptstep.cli import main
from promptstep.distributed import Processes, resolve_device, spawn
from promptstep.errors import InputError

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 12)


def _args(dataset, model, runs, name, *extra):
    return ["meta-train", "--data", dataset, "--model", model, "--runs-dir", str(runs), "--name", name,
            "--train-limit", "12", "--eval-n", "2", "--max-new-tokens", "2", "--inner-lr", "0.1", "--outer-lr",
            "1e-3", "--batch-size", "4", "--epochs", "2", "--checkpoint-every", "2", "--threads", "1", *extra]


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_weights(a, b):
    """Equal up to fp32 summation order: the sum over examples is split differently across processes, and
    Adam turns rounding-level gradient differences into update differences of at most ~lr on near-zero entries."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-4, msg=name)


@needs_gloo
def test_two_processes_equal_one_process_and_resume(dataset, saved_gpt2_256, tmp_path):
    """Two gloo processes run steps 1-3 from scratch, are stopped, and resume (again two processes) to step 6;
    the result equals one process on the same global batches, and rank 0 alone wrote the run directory."""
    assert main(_args(dataset, saved_gpt2_256, tmp_path, "one")) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(dataset, saved_gpt2_256, tmp_path, "two", "--num-processes", "2", "--max-steps", "3")) == 0
    log_one, log_two = _log(one), _log(two)
    assert [r["step"] for r in log_two] == [1, 2, 3]  # each step logged once
    assert log_two[0]["loss"] == pytest.approx(log_one[0]["loss"], rel=1e-6)  # same weights, same batch
    assert log_two[0]["grad_norm"] == pytest.approx(log_one[0]["grad_norm"], rel=1e-5)
    (two / "config.yaml").write_text((two / "config.yaml").read_text().replace("max_steps: 3", "max_steps: null"))
    assert main(_args(dataset, saved_gpt2_256, tmp_path, "two", "--num-processes", "2", "--resume", "true")) == 0
    log_two = _log(two)
    assert [r["step"] for r in log_two] == list(range(1, 7))
    for a, b in zip(log_one, log_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    assert {p.name for p in two.iterdir()} == {p.name for p in one.iterdir()}
    _assert_same_weights(load_file(str(one / "model" / "model.safetensors")),
                         load_file(str(two / "model" / "model.safetensors")))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["after"]) == {"nc", "prompt", "ft"}


@needs_gloo
def test_a_worker_input_error_is_raised_in_the_launching_process():
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        spawn(resolve_device, "gpu0", 2, (InputError,))


def test_share_splits_a_batch_round_robin():
    batch = list(range(7))
    shares = [Processes(rank=r, world_size=3).share(batch) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Processes().share(batch) == batch
    assert Processes().reduce([], {"loss": 1.5}) == {"loss": 1.5}


def test_devices_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
