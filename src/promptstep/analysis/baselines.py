"""Untrained baselines (Deutch et al. §3.3): models that cannot do ICL, run through the same pipeline."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from promptstep.analysis import BASELINES
from promptstep.errors import InputError


def kept_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters "trained embeddings" keeps: embeddings (token and position), norms, output head."""
    head = model.get_output_embeddings()
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) or "Norm" in type(module).__name__ or module is head:
            names.update(f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters(recurse=False))
    return names


def untrained_model(model: torch.nn.Module, kind: str, seed: int = 0) -> torch.nn.Module:
    """A fresh model of the same architecture, randomly initialised by transformers with `seed`.

    "random-init": every weight random. "trained-embeddings": token and position embeddings, every norm and the
    output head copied from `model`, the rest random.
    """
    if kind not in BASELINES:
        raise InputError(f"unknown baseline '{kind}' (choose from {', '.join(BASELINES)})")
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=param.dtype)
    fresh.to(param.device).eval()
    if kind == "trained-embeddings":
        keep = kept_parameter_names(model)
        state = {name: value for name, value in model.state_dict().items() if name in keep}
        missing = keep - set(state)
        if missing:
            raise InputError(f"cannot copy {sorted(missing)[:3]} from {type(model).__name__}")
        fresh.load_state_dict(state, strict=False)
    return fresh
