"""`promptstep multi-context`: accuracy on the queries of N contexts after N updates (Table 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptstep.commands.common import (
    check_device,
    check_models,
    check_run_name,
    fitted_split,
    load_from_config,
    load_split,
    positive,
    write_run_files,
)
from promptstep.errors import InputError
from promptstep.experiments import MODES
from promptstep.model_specs import check_attention
from promptstep.rules import check_rule
from promptstep.runs import name_from, run_dir, staged_dir

if TYPE_CHECKING:
    from promptstep.evaluate import EvalOptions


@dataclass
class MultiContextConfig:
    """`promptstep multi-context`: accuracy on the queries of N contexts after N updates (paper Table 2)."""

    model: str = "tiny"
    data: str = ""
    split: str = "test"
    limit: int | None = None
    sizes: tuple[int, ...] = (1, 4, 16)
    modes: tuple[str, ...] = MODES
    n_groups: int = 20
    lr: float = 1e-3
    steps: int = 1
    param_filter: str | None = None
    rule: str = "sgd"
    max_new_tokens: int = 16
    batch_size: int = 16
    seed: int = 0
    attn: str = "eager"
    device: str = "auto"
    name: str | None = None
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:

        check_device(self.device)
        check_attention(self.attn)
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
    out = run_dir(config.runs_dir, config.name or name_from("multi", Path(config.data).stem, config.model))
    available = len(load_split(config.data, config.split, config.limit))
    if max(config.sizes) > available:
        raise InputError(f"a group of {max(config.sizes)} contexts needs at least {max(config.sizes)} triplets, "
                         f"got {available}")
    if model_and_tokenizer is None:
        check_models(config)
    from promptstep.experiments.multicontext import evaluate_groups, summarize_groups
    from promptstep.reporting.render import markdown_table

    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        triplets = fitted_split(model, tokenizer, config.data, config.split, config.limit, config.max_new_tokens)
        start = time.time()
        records = evaluate_groups(model, tokenizer, triplets, config.sizes, config.modes, config.n_groups,
                                  config.options(), seed=config.seed)
        settings = summarize_groups(records)
        write_run_files(staging, config, records, {"kind": "multi-context", "model": config.model,
                                            "wall_s": round(time.time() - start, 1), "settings": settings}, settings)
    print(markdown_table({config.model: settings}))
    print(f"results in {out}")
    return out, settings
