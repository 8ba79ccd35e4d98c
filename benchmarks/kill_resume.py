"""kill -9 a meta-training run at seeded random moments, resume it each time, and compare with an uninterrupted run.

    python benchmarks/kill_resume.py --trials 5 --seed 0          # tiny model, checkpoint every step

Each trial starts a fresh run in a subprocess, kills it with SIGKILL at a random time (0-2 s) after its first
checkpoint (and, with probability 1/2, kills the resumed run again after it has made progress), resumes until it
finishes, and checks that the final
weights equal the uninterrupted run's bit for bit and that every step is logged once. Prints one JSON row per
trial and a summary line.
"""

from __future__ import annotations

import argparse
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

STEPS = 24  # 48 train triplets, batch 2, one epoch


def _args(data: Path, runs: Path, name: str, model: str) -> list[str]:
    return [sys.executable, "-m", "promptstep.cli", "meta-train", "--data", str(data), "--model", model,
            "--runs-dir", str(runs), "--name", name, "--train-limit", "48", "--eval-n", "2", "--max-new-tokens", "2",
            "--inner-lr", "0.1", "--outer-lr", "1e-3", "--batch-size", "2", "--checkpoint-every", "1",
            "--threads", "1"]


def _checkpoint_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["progress"]["step"]
    except (OSError, ValueError):  # none yet, or being swapped in right now
        return 0


def _kill_after_checkpoint(command: list[str], run: Path, delay: float, after: int) -> tuple[str, int]:
    """Start `command`; SIGKILL it `delay` s after it wrote a checkpoint past step `after`.

    Return (outcome, the checkpoint step left behind)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _checkpoint_step(run) <= after and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return ("finished" if proc.returncode == 0 else f"exit {proc.returncode}"), _checkpoint_step(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed", _checkpoint_step(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    data, runs = root / "data", root / "runs"
    subprocess.run([sys.executable, "-m", "promptstep.cli", "data", "character", "--out", str(data), "--n-train",
                    "48", "--n-test", "4"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(_args(data, runs, "straight", args.model), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    reference = load_file(str(runs / "straight" / "model" / "model.safetensors"))
    passed = 0
    for trial in range(args.trials):
        name = f"trial{trial}"
        command = _args(data, runs, name, args.model)
        events = [_kill_after_checkpoint(command, runs / name, rng.uniform(0.0, 2.0), 0)]
        if rng.random() < 0.5:
            events.append(_kill_after_checkpoint(command + ["--resume", "true"], runs / name, rng.uniform(0.0, 2.0),
                                                 events[0][1]))
        if events[-1][0] == "killed":
            subprocess.run(command + ["--resume", "true"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        final = load_file(str(runs / name / "model" / "model.safetensors"))
        steps = [json.loads(line)["step"] for line in (runs / name / "train_log.jsonl").read_text().splitlines()]
        same = final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
        passed += same and steps == list(range(1, STEPS + 1))
        print(json.dumps({"trial": trial, "events": events, "bit_identical": same,
                          "steps_logged_once": steps == list(range(1, STEPS + 1))}), flush=True)
    print(f"{passed}/{args.trials} trials resumed to the uninterrupted result (runs in {runs})")


if __name__ == "__main__":
    main()
