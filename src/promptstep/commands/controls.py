"""`promptstep controls`: the irrelevant-context step and the 2x2 breakdown (Tables 4 and 5)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    fitted_split,
    load_from_config,
    write_run_files,
)
from promptstep.commands.eval import EvalConfig
from promptstep.errors import InputError
from promptstep.runs import name_from, run_dir, staged_dir


@dataclass
class ControlsConfig(EvalConfig):
    """`promptstep controls`: NC / Prompt / FT plus the irrelevant-context step on the eval split, NC and FT on
    `train_n` train triplets, and the 2x2 correctness breakdown on both (paper Tables 4 and 5)."""

    train_split: str = "train"
    """Split of the training triplets for the train-split breakdown."""
    train_n: int = 100
    """Training triplets scored (NC and FT) for the train-split breakdown (0 = none)."""
    base: str | None = None
    """Base model whose NC accuracy is added to the summary (default: none)."""
    breakdown_metric: str = "em"
    """Metric that decides correct or not in the 2x2 breakdown: em, starts or tok_acc."""
    seed: int = 0
    """Seed of the choice of each query's irrelevant context."""

    def validate(self) -> None:
        super().validate()
        if not {"nc", "ft"} <= set(self.settings):
            raise InputError("controls needs 'nc' and 'ft' in settings (the breakdown compares them)")
        if len(self.lrs) != 1:
            raise InputError("controls takes one inner learning rate (--lrs with one value)")
        if self.train_n < 0:
            raise InputError(f"config key 'train_n' must be >= 0, got {self.train_n}")
        if self.breakdown_metric not in ("em", "starts", "tok_acc"):
            raise InputError("breakdown_metric must be em, starts or tok_acc")


def run_controls(config: ControlsConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    from promptstep.evaluate import evaluate, summarize
    from promptstep.experiments.controls import correctness_breakdown, evaluate_irrelevant
    from promptstep.reporting.render import markdown_table

    out = run_dir(config.runs_dir, config.name or name_from("controls", Path(config.data).stem, config.model))
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        options = config.options()
        test = fitted_split(model, tokenizer, config.data, config.split, config.limit, options.fmt, config.truncate)
        start = time.time()
        records = [{**r, "split": config.split} for r in evaluate(model, tokenizer, test, options)]
        irrelevant = evaluate_irrelevant(model, tokenizer, test, options, seed=config.seed)
        eval_summary = {**summarize(records), **summarize(irrelevant)}  # + irrelevant (FT), irrelevant_prompt
        records += [{**r, "split": config.split} for r in irrelevant]
        summary: dict = {"kind": "controls", "model": config.model, "eval": eval_summary,
                         "breakdown": {config.split: correctness_breakdown(records, config.breakdown_metric)}}
        if config.train_n:
            train = fitted_split(model, tokenizer, config.data, config.train_split, config.train_n, options.fmt,
                            config.truncate)
            train_options = dataclasses.replace(options, settings=("nc", "ft"))
            train_records = [{**r, "split": config.train_split}
                             for r in evaluate(model, tokenizer, train, train_options)]
            summary["train"] = summarize(train_records)
            summary["breakdown"][config.train_split] = correctness_breakdown(train_records, config.breakdown_metric)
            records += train_records
        if config.base:
            base, base_tokenizer = load_from_config(config, config.base)
            nc_options = dataclasses.replace(options, settings=("nc",))
            summary["base_nc"] = summarize(evaluate(base, base_tokenizer, test, nc_options))["nc"]
        summary["wall_s"] = round(time.time() - start, 1)
        write_run_files(staging, config, records, summary, eval_summary)
    print(markdown_table({config.model: eval_summary}))
    for split, cells in summary["breakdown"].items():
        print(f"{split}: " + ", ".join(f"{k} {100 * v:.1f}%" if k != "n" else f"n {v}" for k, v in cells.items()))
    print(f"results in {out}")
    return out, summary
