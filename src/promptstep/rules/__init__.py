"""Inner update rules, one module each: `gradients(model, params, batch, create_graph)` of the rule's loss.

A rule is a module in this package defining `gradients` (see `sgd.py`); its file name is its name on the command
line (`--rule`, `--inner-rule`). Listing them imports nothing heavy, so configs can check a name before torch
loads.
"""

from __future__ import annotations

import importlib
import pkgutil

from promptstep.errors import InputError

RULES = tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)))
# Rules that read the plain model's layer structure and so cannot step through a PEFT (LoRA) wrapper, with why.
NO_ADAPTERS = {"lcgd": "Layer-Causal GD reads the plain GPT-2 / Llama layer structure, not a LoRA-wrapped model"}


def check_rule(name: str) -> None:
    """Refuse an unknown rule name (without importing any rule)."""
    if name not in RULES:
        raise InputError(f"unknown rule '{name}' (choose from {', '.join(RULES)})")


def gradient_fn(name: str):
    """The `gradients` function of rule `name` (`updates.GradientFn`)."""
    check_rule(name)
    return importlib.import_module(f"{__name__}.{name}").gradients
