"""`promptstep eval`: No Context / Prompt / one-step Fine-Tuning on a triplet file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptstep.commands.common import (
    check_device,
    check_run_name,
    dataset_file,
    load_from_config,
    load_split,
    positive,
)
from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.formats import SETTINGS, Format, fit_lengths
from promptstep.rules import check_rule
from promptstep.runs import name_from, run_dir, staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml

if TYPE_CHECKING:
    from promptstep.evaluate import EvalOptions


@dataclass
class EvalConfig:
    """`promptstep eval`: score NC / Prompt / FT on a triplet file and write a run directory."""

    model: str = "smollm2-135m"
    """Model: smollm2-135m (embedded), tiny (embedded), a local directory such as runs/NAME/model, or a hub id."""
    data: str = ""
    """Dataset directory (its <split>.jsonl is read) or one .jsonl file. Required."""
    split: str = "test"
    """Split to read when data is a directory."""
    settings: tuple[str, ...] = ("nc", "prompt", "ft")
    """Settings to score: nc (the query alone), prompt (context + query), ft (one inner step on the context, then the
    query)."""
    lrs: tuple[float, ...] = (1e-3,)
    """Learning rates of the FT step; each one is evaluated."""
    steps: int = 1
    """Gradient steps of the FT update."""
    param_filter: str | None = None
    """Parameters the step updates: all (default), kv (key/value projections) or a regex on parameter names."""
    rule: str = "sgd"
    """Update rule of the step: sgd (plain gradient step) or lcgd (Layer-Causal GD)."""
    limit: int | None = None
    """Evaluate only the first N triplets (default: all)."""
    max_new_tokens: int = 16
    """Longest greedy answer generated."""
    batch_size: int = 16
    """Triplets per forward pass in the NC and Prompt settings."""
    separator: str = " "
    """Text between the context and the query in the Prompt setting."""
    truncate: bool = False
    """Cut contexts from the left to fit the model's window (otherwise a triplet that does not fit is an error)."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    device: str = "auto"
    """Device: auto (the GPU if torch sees one), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Let a model that ships its own Python code run it (off: such a model is refused)."""
    name: str | None = None
    """Run name, a directory under runs_dir (default: derived from the command, data and model)."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""

    def validate(self) -> None:

        if not self.data:
            raise InputError("eval needs --data (a dataset directory or a .jsonl file)")
        for setting in self.settings:
            if setting not in SETTINGS:
                raise InputError(f"unknown setting '{setting}' (choose from {', '.join(SETTINGS)})")
        if not self.settings:
            raise InputError("config key 'settings' is empty")
        if not self.lrs:
            raise InputError("config key 'lrs' is empty")
        for lr in self.lrs:
            positive("lrs", lr)
        check_rule(self.rule)
        for key in ("steps", "max_new_tokens", "batch_size"):
            positive(key, getattr(self, key))
        if self.limit is not None:
            positive("limit", self.limit)
        check_device(self.device)
        check_run_name(self.name)

    def options(self) -> EvalOptions:

        from promptstep.evaluate import EvalOptions

        return EvalOptions(
            settings=self.settings,
            lrs=self.lrs,
            inner=self.inner(),
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            fmt=Format(separator=self.separator),
        )

    def inner(self):
        """The FT step (at the first of `lrs`; `evaluate` runs it at each)."""
        from promptstep.updates import InnerStep

        return InnerStep(lr=self.lrs[0], steps=self.steps, params=self.param_filter, rule=self.rule)


def run_eval(config: EvalConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    """Evaluate and publish `runs/<name>/` with config, records, summary, metrics.csv and a plot."""
    from promptstep.evaluate import evaluate, summarize, summarize_by_tag
    from promptstep.models import max_length
    from promptstep.reporting.render import markdown_table, plot_settings

    out = run_dir(config.runs_dir, config.name or name_from("eval", Path(config.data).stem, config.model))
    triplets = load_split(config.data, config.split, config.limit)
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_from_config(config)
        options = config.options()
        source = str(dataset_file(config.data, config.split))
        triplets = fit_lengths(triplets, tokenizer, max_length(model, tokenizer), options.fmt, config.truncate,
                               source)
        write_yaml(staging / "config.yaml", config_dict(config))
        start = time.time()
        records = evaluate(model, tokenizer, triplets, options)
        summary = summarize(records)
        groups = summarize_by_tag(records)  # per number of facts, seen / held-out family, name style
        write_jsonl(staging / "records.jsonl", records)
        write_json(staging / "summary.json", {"wall_s": round(time.time() - start, 1), "settings": summary,
                                              **({"by_tag": groups} if groups else {})})
        write_summary_csv(staging / "metrics.csv", {**summary, **{f"{s}[{tag}={value}]": e
                                                                  for tag, by_value in groups.items()
                                                                  for value, block in by_value.items()
                                                                  for s, e in block.items()}})
        plot_settings({config.model: summary}, staging / "settings.png", f"{config.model} on {source}")
    print(markdown_table({config.model: summary}))
    for tag, by_value in groups.items():
        print(f"\nby {tag}:")
        print(markdown_table({f"{tag}={value}": block for value, block in by_value.items()}))
    print(f"results in {out}")
    return out, summary
