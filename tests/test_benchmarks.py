"""The benchmark scripts run end to end on the tiny model and write the fields they promise.

Smoke tests only: nothing here judges a time or depends on the machine's load (every run passes --allow-busy,
and outputs go to tmp_path). The scripts run as subprocesses with PYTHONPATH at this checkout's src.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SRC = str(ROOT / "src")
MODES = ["promptstep", "naive", "first-order", "plain"]

sys.path.insert(0, str(BENCH))
import loadwatch  # noqa: E402
import profile_step  # noqa: E402


def _run(script: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, capture_output=True, text=True,
                          timeout=3600)  # a guard against a hang only: a loaded machine may take long
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_load(window: dict) -> None:
    for key in ("window_s", "others_cores", "steal_cores", "tree_cores"):
        assert _finite(window[key]) and window[key] >= 0, (key, window)


def test_meta_step_runs_every_mode_and_records_the_load(tmp_path):
    out = tmp_path / "results.json"
    proc = _run("meta_step.py", "--models", "tiny", "--batches", "1", "--repeats", "2", "--warmup", "1",
                "--threads", "1", "--memory-modes", "none", "--probe-s", "0.1", "--allow-busy",
                "--out", str(out))
    assert f"wrote {out}" in proc.stdout
    results = json.loads(out.read_text())
    assert results["schema"].startswith("promptstep-benchmark/meta_step/")
    assert isinstance(results["busy"], bool) and isinstance(results["busy_reasons"], list)
    assert results["busy"] == bool(results["busy_reasons"]) and results["allow_busy"] is True
    for key in ("loadavg", "others_cores"):
        assert key in results["load_before"]
    _check_load(results["load_before"])
    _check_load(results["load_after"])
    assert len(results["load_before"]["loadavg"]) == 3
    assert results["machine"]["cpu_model"] and results["machine"]["cpus_usable"] >= 1
    assert results["versions"]["torch"] == torch.__version__ and results["versions"]["transformers"]
    assert results["versions"]["threads"] == 1
    assert results["thresholds"]["max_load1_before"] == loadwatch.MAX_LOAD1
    (timing,) = results["timing"]
    assert "error" not in timing, timing.get("error")
    assert sorted(timing["modes"]) == sorted(MODES)
    for stats in timing["modes"].values():
        assert stats["n"] == 2 and len(stats["times_s"]) == 2
        assert all(_finite(stats[k]) and stats[k] > 0 for k in ("median", "min", "max"))
        assert stats["min"] <= stats["median"] <= stats["max"]
    assert set(timing["ratios"]) == {"promptstep/plain", "naive/plain", "first-order/plain", "promptstep/naive"}
    assert set(timing["cpu_ratios"]) == set(timing["ratios"])
    assert timing["teacher"] == "cached" and timing["teacher_resident"] is False  # targets prepared, copy released
    assert results["settings"]["malloc"] == "keep"
    for ratio in timing["ratios"].values():
        assert ratio["n"] == 2 and all(_finite(ratio[k]) and ratio[k] > 0 for k in ("median", "min", "max",
                                                                                     "of_medians"))
    assert [r["order"][0] for r in timing["rounds"]] == MODES[:2]  # the order rotates from round to round
    _check_load(timing["load"])
    assert results["memory"] == []  # the memory cell is tested in this process below: an interpreter start less


def test_meta_step_memory_cell_reports_the_peak_of_each_step():
    """What a fresh-process memory cell (a `--child` of meta_step.py) returns, run here to save a start-up."""
    import meta_step

    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():  # the cell seeds torch; leave the other tests' random state alone
            cell = meta_step.child_memory("tiny", 2, "naive", 1)
    finally:
        torch.set_num_threads(threads)
    assert cell["mode"] == "naive" and cell["batch"] == 2 and cell["teacher_resident"] is False
    for key in ("rss_after_load_mb", "first_step_peak_mb", "steady_step_peak_mb", "process_peak_mb",
                "first_step_s", "steady_step_s"):
        assert _finite(cell[key]) and cell[key] > 0, (key, cell)
    assert cell["process_peak_mb"] >= cell["first_step_peak_mb"] >= cell["rss_after_load_mb"]
    if cell["peak_method"].startswith("VmHWM"):
        assert _finite(cell["first_step_peak_extra_mb"]) and cell["first_step_peak_extra_mb"] >= 0
        assert _finite(cell["steady_step_peak_extra_mb"])
    _check_load(cell["load"])
    timing = {"model": "tiny", "batch": 2, "modes": {"naive": {"median": 0.5, "min": 0.4, "max": 0.7, "n": 3}},
              "ratios": {"promptstep/naive": {"median": 1.01, "min": 0.9, "max": 1.1, "n": 3}}}
    table = meta_step._markdown({"timing": [timing], "memory": [cell], "busy": True, "busy_reasons": ["load 2"]})
    assert "| tiny | naive | 0.5 s [0.4-0.7, n=3], +" in table and "process peak" in table
    assert "promptstep/naive = 1.01x [0.90-1.10, n=3]" in table and "BUSY: load 2" in table


def test_meta_step_refuses_a_busy_machine_without_allow_busy(tmp_path):
    out = tmp_path / "results.json"
    proc = _run("meta_step.py", "--models", "tiny", "--batches", "1", "--probe-s", "0.1", "--max-load", "-1",
                "--out", str(out), expect=3)
    assert "refusing to measure on a busy machine" in proc.stderr and "--allow-busy" in proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_busy_reasons_and_spread():
    quiet = {"loadavg": [0.1, 0.1, 0.1], "others_cores": 0.01, "steal_cores": 0.0}
    assert loadwatch.busy_reasons(quiet, [], 0.5, 0.15) == []
    loaded = {"loadavg": [1.7, 1.0, 0.5], "others_cores": 0.9, "steal_cores": 0.0}
    assert len(loadwatch.busy_reasons(loaded, [], 0.5, 0.15)) == 2
    during = [{"others_cores": 0.1, "steal_cores": 0.1, "label": "tiny batch 1 timing"}]
    (reason,) = loadwatch.busy_reasons(quiet, during, 0.5, 0.15)
    assert "tiny batch 1 timing" in reason and "during" in reason
    assert loadwatch.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    window = loadwatch.LoadWatch().probe(0.05)
    _check_load(window)


def test_kill_resume_one_trial_at_the_smallest_size(tmp_path):
    out = tmp_path / "kill.json"
    _run("kill_resume.py", "--trials", "1", "--n-train", "4", "--seed", "0", "--max-delay", "0",
         "--workdir", str(tmp_path / "work"), "--out", str(out))
    summary = json.loads(out.read_text())
    assert summary["passed"] == summary["n_trials"] == 1 and summary["steps"] == 2
    (trial,) = summary["trials"]
    assert trial["bit_identical"] is True and trial["steps_logged_once"] is True
    assert trial["events"][0][0] in ("killed", "finished")  # killed right after the first checkpoint, as a rule
    assert _finite(summary["wall_s"])


def test_profile_step_reports_categories_and_labels(tmp_path):
    out = tmp_path / "profile.md"
    _run("profile_step.py", "--model", "tiny", "--batch", "1", "--warmup", "0", "--threads", "1", "--top", "5",
         "--max-new-tokens", "2", "--probe-s", "0.1", "--out", str(out))
    text = out.read_text()
    for heading in ("LC meta-step", "FT evaluation", "By category", "Top operators by self CPU time",
                    "record_function labels"):
        assert heading in text
    report = json.loads(out.with_suffix(".json").read_text())
    assert [s["name"] for s in report["sections"]] == ["meta_step", "ft_example"]
    for section in report["sections"]:
        assert _finite(section["unprofiled_s"]) and _finite(section["profiled_s"]) and section["wall_ms"] > 0
        assert section["categories"] and len(section["top_ops_by_time"]) <= 5
        assert all(_finite(c["self_cpu_ms"]) and _finite(c["self_mem_mb"]) for c in section["categories"])
        names = {c["category"] for c in section["categories"]}
        assert "matmul: linear layers (mm)" in names
    meta = report["sections"][0]
    assert any(lab["label"].startswith("Optimizer.step") for lab in meta["labels"])  # torch's own label
    assert any(p["phase"].startswith("autograd engine") for p in meta["phases"])


def test_profile_analysis_picks_up_record_function_labels():
    """Labels the library adds later (teacher forward, inner backward, ...) show up without changing the script."""
    from torch.profiler import ProfilerActivity, profile, record_function

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(2):
            with record_function("teacher forward"):
                y = layer(x).softmax(-1)
            with record_function("outer backward"):
                y.sum().backward()
    result = profile_step.analyse(prof.events(), wall_s=1.0, top=10)
    labels = {lab["label"]: lab for lab in result["labels"]}
    assert labels["teacher forward"]["calls"] == 2 and labels["outer backward"]["calls"] == 2
    assert "matmul: linear layers (mm)" in labels["teacher forward"]["categories_ms"]
    assert "softmax" in labels["teacher forward"]["categories_ms"]
    assert profile_step.category("aten::bmm") == "matmul: attention (bmm)"
    assert profile_step.category("aten::native_layer_norm_backward") == "normalization"
    assert profile_step.category("aten::embedding_dense_backward") == "embedding/indexing"
    assert profile_step.category("autograd::engine::evaluate_function: MmBackward0") == "autograd bookkeeping"


def test_ft_eval_times_both_paths_and_finds_the_same_records(tmp_path):
    out = tmp_path / "ft.json"
    proc = _run("ft_eval.py", "--model", "tiny", "--n", "2", "--warmup", "1", "--lr", "0.5", "--max-new-tokens", "4",
                "--threads", "1", "--probe-s", "0.1", "--allow-busy", "--out", str(out))
    assert "Records identical (tok_acc, NLL to 1e-5 relative): yes" in proc.stdout
    result = json.loads(out.read_text())
    assert result["schema"].startswith("promptstep-benchmark/ft_eval/") and result["identical_records"] is True
    assert result["n"] == 2 and len(result["items"]) == 2 and result["malloc"] == "keep"
    assert [row["order"][0] for row in result["items"]] == ["library", "reference"]  # the order alternates
    for path in ("library", "reference"):
        for clock in ("wall_s", "cpu_s"):
            stats = result["summary"][path][clock]
            assert stats["n"] == 2 and all(_finite(stats[k]) and stats[k] > 0 for k in ("mean", "median"))
    assert _finite(result["summary"]["speedup_wall"]["of_totals"])
    _check_load(result["load"])

