"""The CLI's workflows, one function and one config dataclass each: data, eval, demo."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.config import config_dict
from promptstep.data.triplets import Triplet, load_triplets, write_triplets
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, evaluate, summarize
from promptstep.formats import SETTINGS, Format, fit_lengths
from promptstep.models import load_model, max_length
from promptstep.report import markdown_table, plot_settings
from promptstep.runs import staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise InputError(f"config key '{name}' must be positive, got {value}")


# ---------------------------------------------------------------- data


@dataclass
class DataConfig:
    """`promptstep data TASK --out DIR`: build a triplet dataset (train.jsonl, test.jsonl, meta.json)."""

    task: str = "character"
    out: str = ""
    n_train: int = 5000
    n_test: int = 500
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if not self.out:
            raise InputError("data needs --out DIR")
        _positive("n_train", self.n_train)
        _positive("n_test", self.n_test)


def run_data(config: DataConfig) -> Path:
    from promptstep.data.synthetic import TASKS, generate

    if config.task not in TASKS:
        raise InputError(f"unknown data task '{config.task}' (choose from {', '.join(TASKS)})")
    train, test, meta = generate(config.task, config.n_train, config.n_test, config.seed)
    out = Path(config.out)
    with staged_dir(out, config.overwrite) as staging:
        write_triplets(staging / "train.jsonl", train)
        write_triplets(staging / "test.jsonl", test)
        write_json(staging / "meta.json", meta)
        write_yaml(staging / "config.yaml", config_dict(config))
    print(f"wrote {len(train)} train / {len(test)} test triplets to {out}")
    return out


# ---------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    """`promptstep eval`: score NC / Prompt / FT on a triplet file and write a run directory."""

    model: str = "smollm2-135m"
    data: str = ""
    split: str = "test"
    settings: tuple[str, ...] = ("nc", "prompt", "ft")
    lrs: tuple[float, ...] = (1e-3,)
    steps: int = 1
    param_filter: str | None = None
    limit: int | None = None
    max_new_tokens: int = 16
    batch_size: int = 16
    separator: str = " "
    truncate: bool = False
    attn: str = "eager"
    name: str | None = None
    runs_dir: str = "runs"
    overwrite: bool = False

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
            _positive("lrs", lr)
        for key in ("steps", "max_new_tokens", "batch_size"):
            _positive(key, getattr(self, key))
        if self.limit is not None:
            _positive("limit", self.limit)

    def options(self) -> EvalOptions:
        return EvalOptions(
            settings=self.settings,
            lrs=self.lrs,
            steps=self.steps,
            param_filter=self.param_filter,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            fmt=Format(separator=self.separator),
        )


def dataset_file(data: str, split: str) -> Path:
    """The JSONL file of `split` in a dataset directory, or `data` itself when it is a file."""
    path = Path(data)
    return path / f"{split}.jsonl" if path.is_dir() else path


def load_split(data: str, split: str, limit: int | None) -> list[Triplet]:
    triplets = load_triplets(dataset_file(data, split))
    return triplets[:limit] if limit else triplets


def run_eval(config: EvalConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    """Evaluate and publish `runs/<name>/` with config, records, summary, metrics.csv and a plot."""
    name = config.name or f"eval-{Path(config.data).stem}-{config.model.replace('/', '_')}"
    out = Path(config.runs_dir) / name
    triplets = load_split(config.data, config.split, config.limit)
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or load_model(config.model, attn_implementation=config.attn)
        options = config.options()
        source = str(dataset_file(config.data, config.split))
        triplets = fit_lengths(triplets, tokenizer, max_length(model, tokenizer), options.fmt, config.truncate,
                               source)
        write_yaml(staging / "config.yaml", config_dict(config))
        start = time.time()
        records = evaluate(model, tokenizer, triplets, options)
        summary = summarize(records)
        write_jsonl(staging / "records.jsonl", records)
        write_json(staging / "summary.json", {"wall_s": round(time.time() - start, 1), "settings": summary})
        write_summary_csv(staging / "metrics.csv", summary)
        plot_settings({config.model: summary}, staging / "settings.png", f"{config.model} on {source}")
    print(markdown_table({config.model: summary}))
    print(f"results in {out}")
    return out, summary


# ---------------------------------------------------------------- demo


@dataclass
class DemoConfig:
    """`promptstep demo`: data -> embedded model -> NC / Prompt / FT table and plot, in one run directory."""

    model: str = "smollm2-135m"
    task: str = "character"
    n_eval: int = 100
    lrs: tuple[float, ...] = (1e-3, 1e-2, 3e-2)
    seed: int = 0
    name: str = "demo"
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:
        _positive("n_eval", self.n_eval)
        for lr in self.lrs:
            _positive("lrs", lr)


def run_demo(config: DemoConfig) -> Path:
    from promptstep.data.synthetic import generate

    out = Path(config.runs_dir) / config.name
    print(f"promptstep demo: {config.model}, {config.task}, {config.n_eval} held-out triplets, FT lrs {config.lrs}; "
          f"expect about {2 + config.n_eval * len(config.lrs) // 40} minutes on 2 CPU cores", flush=True)
    with staged_dir(out, config.overwrite) as staging:
        train, test, meta = generate(config.task, seed=config.seed)
        write_triplets(staging / "data" / "train.jsonl", train)
        write_triplets(staging / "data" / "test.jsonl", test)
        write_json(staging / "data" / "meta.json", meta)
        write_yaml(staging / "config.yaml", config_dict(config))
        model, tokenizer = load_model(config.model)
        options = EvalOptions(lrs=config.lrs)
        start = time.time()
        records = evaluate(model, tokenizer, test[: config.n_eval], options)
        summary = summarize(records)
        write_jsonl(staging / "records.jsonl", records)
        write_json(staging / "summary.json", {"wall_s": round(time.time() - start, 1), "settings": summary})
        write_summary_csv(staging / "metrics.csv", summary)
        plot_settings({config.model: summary}, staging / "settings.png", f"{config.model}, {config.task} (base)")
    print(markdown_table({config.model: summary}))
    print(f"results in {out}")
    return out
