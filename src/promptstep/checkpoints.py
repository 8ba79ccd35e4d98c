"""Training checkpoints in safetensors only: weights, optimizer state, RNG and progress, written atomically
and verified by checksum on load.

A checkpoint is a directory. It is written whole into a hidden staging directory (files fsynced), then swapped
in by two renames: current -> `.NAME.old`, staging -> NAME. A process killed at any point leaves either the old
or the new checkpoint; `recover` undoes a swap that was cut between the two renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from promptstep.errors import InputError
from promptstep.files import parse_json, pickled_files
from promptstep.runs import give_default_mode

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: Path) -> bool:
    """Whether a checkpoint directory exists at `path`, after restoring the previous one if a swap was cut short."""
    if not path.exists() and _old(path).is_dir():
        os.replace(_old(path), path)
    return path.is_dir()


def clean_up(path: Path) -> None:
    """Undo a swap cut short and remove staging directories left by a save that was killed or interrupted
    (call only when no save of `path` is under way)."""
    if recover(path) and _old(path).exists():  # the swap finished but the old copy was not yet removed
        shutil.rmtree(_old(path), ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and the JSON-safe rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> None:
    """Write weights, optimizer and progress (with the torch RNG state) to `path`, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_up(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        give_default_mode(staging)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(staging / WEIGHTS))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        opt_tensors["__rng__"] = torch.get_rng_state()
        save_file(opt_tensors, str(staging / OPTIMIZER))
        state = {
            "progress": progress,
            "optimizer": opt_meta,
            "sha256": {name: _sha256(staging / name) for name in (WEIGHTS, OPTIMIZER)},
        }
        (staging / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        for name in (WEIGHTS, OPTIMIZER, STATE):
            give_default_mode(staging / name)  # safetensors writes 0600
            _fsync(staging / name)
        old = _old(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
        _fsync(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer | None = None,
                    check: Callable[[dict[str, torch.Tensor]], None] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify checksums, restore the optimizer and RNG state, and return (weights, progress).

    `check(weights)` may raise (e.g. InputError for another model's checkpoint) before any state is touched.
    """
    recover(path)
    state_file = path / STATE
    if not state_file.is_file():
        pickles = pickled_files(path)
        if pickles:
            raise InputError(f"{path}: refusing pickled checkpoint {pickles[0]} (it can run code on load); "
                             "promptstep reads safetensors only")
        raise InputError(f"{path}: not a promptstep checkpoint (no {STATE})")
    try:
        state = parse_json(state_file.read_text(encoding="utf-8"), str(state_file))
        checksums, progress, opt_meta = state["sha256"], state["progress"], state["optimizer"]
        if not isinstance(checksums, dict) or not isinstance(progress, dict):
            raise TypeError("'sha256' or 'progress' is not a mapping")
        if not isinstance(progress.get("step"), int) or isinstance(progress["step"], bool) or progress["step"] < 0:
            raise TypeError(f"progress step {progress.get('step')!r} is not a step number")
    except (InputError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{state_file}: unreadable checkpoint state ({type(err).__name__}: {err})") from None
    for name in (WEIGHTS, OPTIMIZER):
        if not (path / name).is_file():
            raise InputError(f"{path / name}: missing, the checkpoint is incomplete")
        if _sha256(path / name) != checksums.get(name):
            raise InputError(f"{path / name}: checksum mismatch, the checkpoint is corrupt")
    weights = load_file(str(path / WEIGHTS))
    if check is not None:
        check(weights)
    opt_tensors = load_file(str(path / OPTIMIZER))
    try:  # the state is checksummed, so a failure here is a checkpoint of another kind of run
        torch.set_rng_state(opt_tensors.pop("__rng__"))
        if optimizer is not None:
            _restore_optimizer(optimizer, opt_tensors, opt_meta)
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise InputError(f"{path}: its optimizer state does not fit this run ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return weights, progress
