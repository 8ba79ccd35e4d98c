"""Experiment tracking for the long commands (`--report-to`): the curves a run writes to its JSONL logs, also sent
to TensorBoard, trackio or Weights & Biases through accelerate's tracker classes.

The trackers' packages are optional (`pip install 'promptstep[tracking]'` gives TensorBoard); `check_report_to`
refuses a tracker whose package is missing before anything runs, without importing it (nor torch: `--help` and
option errors stay fast). Only the process that writes the run (rank 0) opens a tracker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from promptstep.errors import InputError

# --report-to value -> (the module it needs, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'promptstep[tracking]'"),
    "trackio": ("trackio", "pip install trackio"),
    "wandb": ("wandb", "pip install wandb"),
}
REPORT_TO = ("none", *TRACKERS)
PROJECT = "promptstep"  # the trackio / W&B project every run is logged to (the run's name names the run)
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, inside the run directory


def check_report_to(value: str) -> None:
    """Refuse an unknown tracker, or one whose package is not installed."""
    if value not in REPORT_TO:
        raise InputError(f"unknown report_to '{value}' (choose from {', '.join(REPORT_TO)})")
    if value != "none":
        module, install = TRACKERS[value]
        if find_spec(module) is None:
            raise InputError(f"--report-to {value} needs the '{module}' package, which is not installed "
                             f"({install})")


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) log record as {"prefix/key/subkey": value}; booleans, text and
    non-finite values (a skipped step's NaN loss) are left out."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flat_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = value
    return flat


def _hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as the flat bool / str / int / float values trackers accept (lists joined by commas)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return "none" if value is None else value

    return {key: plain(value) for key, value in config.items()}


@contextmanager
def _plain_accelerate_log() -> Iterator[None]:
    """accelerate's trackers log through accelerate's logger, which refuses to work before accelerate's own process
    state exists; promptstep runs its processes itself (creating that state would re-read the environment and
    change thread counts mid-run), so for the length of a tracker call its messages go to a plain logger."""
    import accelerate.tracking

    kept = accelerate.tracking.logger
    accelerate.tracking.logger = logging.getLogger("accelerate.tracking")
    try:
        yield
    finally:
        accelerate.tracking.logger = kept


def _call(method: Callable, *args, **kwargs) -> None:
    with _plain_accelerate_log():
        method(*args, **kwargs)


class Tracker:
    """One run's experiment tracker; with `report_to` "none" or `enabled` False (a process other than rank 0) every
    method does nothing. Use as a context manager: the tracker is finished (files closed) on exit.

    TensorBoard writes to `run_dir/tensorboard`; W&B's local files go to `run_dir/wandb`; trackio keeps its own
    store (see trackio's documentation). `resumed_at`: the step of the checkpoint a resumed run continues
    from; TensorBoard then discards what the interrupted run logged after it, as the JSONL logs are trimmed.
    """

    def __init__(self, report_to: str, run_dir: Path, name: str, config: Mapping[str, Any] | None = None,
                 enabled: bool = True, resumed_at: int | None = None):
        check_report_to(report_to)
        self.tracker = None
        if report_to == "none" or not enabled:
            return
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        if report_to == "tensorboard":
            # a resumed run re-logs the steps after its checkpoint: TensorBoard drops the interrupted run's copies
            purge = {"purge_step": resumed_at + 1} if resumed_at is not None else {}
            tracker = TensorBoardTracker(TENSORBOARD_DIR, run_dir, **purge)
        elif report_to == "wandb":
            tracker = WandBTracker(PROJECT, name=name, dir=str(run_dir))
        else:
            tracker = TrackioTracker(PROJECT, name=name)
        tracker.main_process_only = False  # opened on rank 0 only; accelerate's own check would need its state
        _call(tracker.start)
        if config is not None:
            _call(tracker.store_init_configuration, _hyperparameters(config))
        self.tracker = tracker

    def log(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Log the finite numbers of `values` (nested mappings flattened to "prefix/key/subkey") at `step`; a
        top-level "step" entry (a log row's own step) is the x axis, not a value."""
        if self.tracker is not None:
            scalars = flat_scalars({k: v for k, v in values.items() if k != "step"}, prefix)
            if scalars:
                _call(self.tracker.log, scalars, step=step)

    def finish(self) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            _call(tracker.finish)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
