"""kill -9 a meta-training run at seeded random moments, resume it each time, and compare with an uninterrupted run.

    python benchmarks/kill_resume.py --trials 5 --seed 0          # tiny model, checkpoint every step
    python benchmarks/kill_resume.py --trials 1 --n-train 4 --max-delay 0 --out kr.json   # smallest (CI smoke)

Each trial starts a fresh run in a subprocess, kills it with SIGKILL at a random time (0 to --max-delay s,
default 2) after its first checkpoint (and, with probability 1/2, kills the resumed run again after it has made
progress), resumes until it finishes, and checks that the final weights equal the uninterrupted run's bit for
bit and that every step is logged once. Prints one JSON row per trial and a summary line; with --out also a
JSON file {"trials": [rows], "passed", "n_trials", "steps", "n_train", "model", "seed", "runs", "wall_s"}.
Exits 1 unless every trial resumed to the uninterrupted result. A run that finishes before its kill counts as a
trial too (its "events" say "finished"); the default size gives kills that land mid-run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

BATCH = 2  # one epoch of n_train triplets: n_train // BATCH steps


def _args(data: Path, runs: Path, name: str, model: str, n_train: int) -> list[str]:
    return [sys.executable, "-m", "promptstep.cli", "meta-train", "--data", str(data), "--model", model,
            "--runs-dir", str(runs), "--name", name, "--train-limit", str(n_train), "--eval-n", "2",
            "--max-new-tokens", "2",
            "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", str(BATCH), "--checkpoint-every", "1",
            "--threads", "1"]


def _checkpoint_step(run: Path) -> int:
    """The step of the run's latest checkpoint: in its in-progress directory while it trains, in the run directory
    once published (0: none yet, or one being swapped in right now)."""
    for directory in (run.parent / f".{run.name}.inprogress", run):
        try:
            return json.loads((directory / "checkpoint" / "state.json").read_text())["progress"]["step"]
        except (OSError, ValueError):
            continue
    return 0


def _kill_after_checkpoint(command: list[str], run: Path, delay: float, after: int) -> tuple[str, int]:
    """Start `command`; SIGKILL it `delay` s after it wrote a checkpoint past step `after`.

    Return (outcome, the checkpoint step left behind)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _checkpoint_step(run) <= after and proc.poll() is None:
        time.sleep(0.005)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay)  # a run that finishes within the delay is not waited for any longer
    if proc.poll() is not None:
        return ("finished" if proc.returncode == 0 else f"exit {proc.returncode}"), _checkpoint_step(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed", _checkpoint_step(run)


def _write_data(data: Path, n_train: int) -> None:
    """The Character Description set `promptstep data character` makes, written in this process (train.jsonl and
    test.jsonl are all meta-train reads; importing the CLI here would cost seconds of interpreter start)."""
    from promptstep import write_triplets
    from promptstep.data.synthetic import generate

    train, test, _ = generate("character", n_train=n_train, n_test=4, seed=0)
    write_triplets(data / "train.jsonl", train)
    write_triplets(data / "test.jsonl", test)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n-train", type=int, default=48, help="train triplets (steps = n_train / 2)")
    parser.add_argument("--max-delay", type=float, default=2.0, help="kills come 0 to this many s after a checkpoint")
    parser.add_argument("--workdir", help="where the data and runs go (default: a new temporary directory)")
    parser.add_argument("--out", help="also write the trials and the summary as JSON here")
    args = parser.parse_args()
    if args.n_train < 2 * BATCH or args.trials < 1:
        parser.error(f"need --n-train >= {2 * BATCH} and --trials >= 1")
    steps_expected = list(range(1, args.n_train // BATCH + 1))
    rng = random.Random(args.seed)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    data, runs = root / "data", root / "runs"
    _write_data(data, args.n_train)
    began = time.perf_counter()
    subprocess.run(_args(data, runs, "straight", args.model, args.n_train), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    reference = load_file(str(runs / "straight" / "model" / "model.safetensors"))
    passed, rows = 0, []
    for trial in range(args.trials):
        name = f"trial{trial}"
        command = _args(data, runs, name, args.model, args.n_train)
        events = [_kill_after_checkpoint(command, runs / name, rng.uniform(0.0, args.max_delay), 0)]
        if events[0][0] == "killed" and rng.random() < 0.5:
            events.append(_kill_after_checkpoint(command + ["--resume", "true"], runs / name,
                                                 rng.uniform(0.0, args.max_delay), events[0][1]))
        if events[-1][0] == "killed":
            subprocess.run(command + ["--resume", "true"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        final = load_file(str(runs / name / "model" / "model.safetensors"))
        steps = [json.loads(line)["step"] for line in (runs / name / "train_log.jsonl").read_text().splitlines()]
        same = final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
        passed += same and steps == steps_expected
        row = {"trial": trial, "events": events, "bit_identical": same, "steps_logged_once": steps == steps_expected}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{passed}/{args.trials} trials resumed to the uninterrupted result (runs in {runs})")
    if args.out:
        summary = {"trials": rows, "passed": passed, "n_trials": args.trials, "steps": len(steps_expected),
                   "n_train": args.n_train, "model": args.model, "seed": args.seed, "runs": str(runs),
                   "wall_s": round(time.perf_counter() - began, 2)}
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
