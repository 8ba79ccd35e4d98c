"""`promptstep multi-context`: accuracy on the queries of N contexts after N updates (Table 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptstep.commands.common import (
    check_device,
    check_run_name,
    fitted_split,
    load_from_config,
    positive,
    write_run_files,
)
from promptstep.errors import InputError
from promptstep.experiments import MODES
from promptstep.rules import check_rule
from promptstep.runs import name_from, run_dir, staged_dir

if TYPE_CHECKING:
    from promptstep.evaluate import EvalOptions


@dataclass
class MultiContextConfig:
    """`promptstep multi-context`: accuracy on the queries of N contexts after N updates (paper Table 2)."""

    model: str = "tiny"
    """Model: smollm2-135m (embedded), tiny (embedded), a local directory such as runs/NAME/model, or a hub id."""
    data: str = ""
    """Dataset directory (its <split>.jsonl is read) or one .jsonl file. Required."""
    split: str = "test"
    """Split to read when data is a directory."""
    limit: int | None = None
    """Use only the first N triplets (default: all)."""
    sizes: tuple[int, ...] = (1, 4, 16)
    """Numbers N of contexts per group."""
    modes: tuple[str, ...] = MODES
    """How N contexts update the model: sequential (N separate steps) and/or batched (one step on all N)."""
    n_groups: int = 20
    """Random groups of N contexts per size (seeded: the same groups for every model)."""
    lr: float = 1e-3
    """Learning rate of each update."""
    steps: int = 1
    """Gradient steps of each update."""
    param_filter: str | None = None
    """Parameters the step updates: all (default), kv (key/value projections) or a regex on parameter names."""
    rule: str = "sgd"
    """Update rule of the step: sgd (plain gradient step) or lcgd (Layer-Causal GD)."""
    max_new_tokens: int = 16
    """Longest greedy answer generated."""
    batch_size: int = 16
    """Queries per forward pass when answering."""
    seed: int = 0
    """Seed of the random groups."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    device: str = "auto"
    """Device: auto (the GPU if torch sees one), cpu, cuda or cuda:N."""
    name: str | None = None
    """Run name, a directory under runs_dir (default: derived from the command, data and model)."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""

    def validate(self) -> None:

        check_device(self.device)
        check_run_name(self.name)
        if not self.data:
            raise InputError("multi-context needs --data (a dataset directory or a .jsonl file)")
        for mode in self.modes:
            if mode not in MODES:
                raise InputError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
        if not self.sizes or not self.modes:
            raise InputError("config keys 'sizes' and 'modes' must not be empty")
        for key in ("lr", "steps", "n_groups", "max_new_tokens", "batch_size"):
            positive(key, getattr(self, key))
        for size in self.sizes:
            positive("sizes", size)
        check_rule(self.rule)

    def options(self) -> EvalOptions:
        from promptstep.evaluate import EvalOptions

        return EvalOptions(inner=self.inner(), max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)

    def inner(self):
        """The update applied for each context (sequential) or once for the group (batched)."""
        from promptstep.updates import InnerStep

        return InnerStep(lr=self.lr, steps=self.steps, params=self.param_filter, rule=self.rule)


def run_multi_context(config: MultiContextConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    from promptstep.experiments.multicontext import evaluate_groups, summarize_groups
    from promptstep.reporting.render import markdown_table

    out = run_dir(config.runs_dir, config.name or name_from("multi", Path(config.data).stem, config.model))
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        triplets = fitted_split(model, tokenizer, config.data, config.split, config.limit)
        start = time.time()
        records = evaluate_groups(model, tokenizer, triplets, config.sizes, config.modes, config.n_groups,
                                  config.options(), seed=config.seed)
        settings = summarize_groups(records)
        write_run_files(staging, config, records, {"kind": "multi-context", "model": config.model,
                                            "wall_s": round(time.time() - start, 1), "settings": settings}, settings)
    print(markdown_table({config.model: settings}))
    print(f"results in {out}")
    return out, settings
