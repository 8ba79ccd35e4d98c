"""Training checkpoints in safetensors only: weights, optimizer state, RNG and progress, written atomically
and verified by checksum on load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from promptstep.errors import InputError

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


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
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
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
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify checksums, restore the optimizer and RNG state, and return (weights, progress)."""
    state_file = path / STATE
    if not state_file.is_file():
        pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl"))
        if pickles:
            raise InputError(f"{path}: refusing pickled checkpoint {pickles[0]} (it can run code on load); "
                             "promptstep reads safetensors only")
        raise InputError(f"{path}: not a promptstep checkpoint (no {STATE})")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    for name, expected in state["sha256"].items():
        if _sha256(path / name) != expected:
            raise InputError(f"{path / name}: checksum mismatch, the checkpoint is corrupt")
    weights = load_file(str(path / WEIGHTS))
    opt_tensors = load_file(str(path / OPTIMIZER))
    torch.set_rng_state(opt_tensors.pop("__rng__"))
    if optimizer is not None:
        _restore_optimizer(optimizer, opt_tensors, state["optimizer"])
    return weights, state["progress"]
