"""`promptstep inject-eval`: the knowledge-injection benchmark (see `experiments/injection.py`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import check_device, check_run_name, dataset_file, load_split, positive
from promptstep.commands.inject import InjectionKeys
from promptstep.documents import INJECTION_MODES
from promptstep.errors import InputError
from promptstep.experiments import INJECTION_METHODS


@dataclass
class InjectEvalConfig(InjectionKeys):
    """`promptstep inject-eval --model M --data DIR`: accuracy after injecting N documents, against fine-tuning and
    prompting, with the time, storage and memory each costs (the inner step, also the untrained model's, and the
    parameters AdamW trains: lr, steps, params, rule)."""

    model: str = "tiny"
    """the one-step model, typically a meta-train run's model/ directory (its inner step is the default)"""
    base_model: str | None = None
    """the untrained reference for 'untrained', 'adamw', 'nc' and the prompt settings (default: the model the
    meta-train run started from; without one, the model itself and no 'untrained' setting)"""
    data: str = ""
    """a triplet dataset directory or .jsonl file (multi-fact synthetic: one question per fact; others: document =
    context, question = query)"""
    split: str = "test"
    """the split of a dataset directory to read"""
    limit: int | None = None
    """use only the first N triplets of the split"""
    sizes: tuple[int, ...] = (1, 4, 16, 64)
    """numbers of documents injected before asking"""
    n_groups: int = 3
    """random document orders (groups) per size"""
    modes: tuple[str, ...] = INJECTION_MODES
    """injection modes for the one-step settings: sequential, sum"""
    methods: tuple[str, ...] = INJECTION_METHODS
    """settings to run: nc, meta, meta+prompt, untrained, adamw, prompt, prompt-all"""
    adamw_steps: tuple[int, ...] = (5, 20)
    """AdamW steps per document for the fine-tuning baselines (one setting each)"""
    adamw_lr: float = 1e-4
    """AdamW learning rate of the fine-tuning baselines"""
    adamw_weight_decay: float = 0.01
    """AdamW weight decay of the fine-tuning baselines (torch's default)"""
    max_new_tokens: int = 16
    """longest generated answer in tokens"""
    batch_size: int = 16
    """questions answered together"""
    seed: int = 0
    """seed of the group orders"""
    attn: str = "eager"
    """attention implementation to load the models with"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    trust_remote_code: bool = False
    """run a hub model's own Python code (read it first)"""
    name: str | None = None
    """run name (default: inject-eval-<data>-<model>)"""
    runs_dir: str = "runs"
    """where run directories go"""
    overwrite: bool = False
    """replace an existing run of the same name"""

    def validate(self) -> None:
        if not self.data:
            raise InputError("inject-eval needs --data (a triplet dataset directory or a .jsonl file)")
        if not self.sizes or not self.modes or not self.methods:
            raise InputError("config keys 'sizes', 'modes' and 'methods' must not be empty")
        for size in self.sizes:
            positive("sizes", size)
        for mode in self.modes:
            if mode not in INJECTION_MODES:
                raise InputError(f"unknown mode '{mode}' (choose from {', '.join(INJECTION_MODES)})")
        for method in self.methods:
            if method not in INJECTION_METHODS:
                raise InputError(f"unknown method '{method}' (choose from {', '.join(INJECTION_METHODS)})")
        if "adamw" in self.methods and not self.adamw_steps:
            raise InputError("config key 'adamw_steps' is empty")
        for steps in self.adamw_steps:
            positive("adamw_steps", steps)
        for key in ("n_groups", "adamw_lr", "max_new_tokens", "batch_size"):
            positive(key, getattr(self, key))
        if self.adamw_weight_decay < 0:
            raise InputError(f"config key 'adamw_weight_decay' must be >= 0, got {self.adamw_weight_decay}")
        if self.limit is not None:
            positive("limit", self.limit)
        self.check_injection()
        check_device(self.device)
        check_run_name(self.name)


def base_model_spec(config: InjectEvalConfig) -> str | None:
    """The untrained reference: --base-model, else the model the meta-train run started from, else None."""
    from promptstep.inject import meta_run_config

    if config.base_model:
        return config.base_model
    run = meta_run_config(config.model)
    spec = str(run[1].get("model")) if run is not None else None
    return spec if spec and spec != config.model else None


def _same_tokenizer(a, b) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def run_inject_eval(config: InjectEvalConfig, models=None) -> tuple[Path, dict]:
    """Build documents and questions from the triplets, run every setting, and publish the run directory.

    `models` (for tests): ((meta_model, tokenizer), (base_model, tokenizer) or None), instead of loading them.
    """
    import torch

    from promptstep.commands.common import load_from_config
    from promptstep.config import config_dict
    from promptstep.experiments.injection import (
        BenchmarkOptions,
        documents_and_questions,
        run_benchmark,
        summarize_benchmark,
    )
    from promptstep.inject import chunk_size
    from promptstep.reporting.injection import injection_tables, plot_injection
    from promptstep.runs import name_from, run_dir, staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml

    out = run_dir(config.runs_dir, config.name or name_from("inject-eval", Path(config.data).stem, config.model))
    source = str(dataset_file(config.data, config.split))
    documents, questions, data_info = documents_and_questions(load_split(config.data, config.split, config.limit),
                                                              source)
    if max(config.sizes) > len(documents):
        raise InputError(f"{source}: sizes up to {max(config.sizes)} need at least {max(config.sizes)} documents; "
                         f"it holds {len(documents)}")
    options, inner_source = config.inject_options(config.model)
    base_spec = base_model_spec(config)
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    with staged_dir(out, config.overwrite) as stage:
        if models is None:
            meta, tokenizer = load_from_config(config)
            base = load_from_config(config, base_spec) if base_spec else None
        else:
            (meta, tokenizer), base = models
        if base is not None:
            if not _same_tokenizer(tokenizer, base[1]):
                raise InputError(f"base model '{base_spec}' has another tokenizer than '{config.model}'")
            base = base[0]
        benchmark = BenchmarkOptions(sizes=tuple(sorted(set(config.sizes))), n_groups=config.n_groups,
                                     modes=config.modes, methods=config.methods, inject=options,
                                     adamw_steps=config.adamw_steps, adamw_lr=config.adamw_lr,
                                     adamw_weight_decay=config.adamw_weight_decay,
                                     max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                     seed=config.seed)
        started = time.time()
        records, costs, peaks = run_benchmark(meta, base, tokenizer, documents, questions, benchmark)
        wall = time.time() - started
        load += [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
        inner = options.inner
        summary = {
            "kind": "inject-eval", "model": config.model, "base_model": base_spec, "data": source,
            "data_info": data_info, "wall_s": round(wall, 1),
            "machine": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "load_average_1min_start_end": load, "device": str(next(meta.parameters()).device)},
            "inner_step": {"lr": inner.lr, "steps": inner.steps, "params": inner.params, "rule": inner.rule,
                           **inner_source},
            "chunk_tokens": chunk_size(meta, tokenizer, options.chunk_tokens),
            "settings": summarize_benchmark(records, costs, peaks),
        }
        write_yaml(stage / "config.yaml", config_dict(config))
        write_jsonl(stage / "records.jsonl", records)
        write_jsonl(stage / "costs.jsonl", costs + peaks)
        write_json(stage / "summary.json", summary)
        rows = {f"{setting}@{size}": {**cell, **{k: v for k, v in entry.items()
                                                  if k in ("seconds_per_document", "stored_bytes_per_document",
                                                           "peak_bytes")}}
                for setting, entry in summary["settings"].items() for size, cell in entry["by_size"].items()}
        write_summary_csv(stage / "metrics.csv", rows)
        tables = injection_tables(summary)
        (stage / "table.md").write_text(tables, encoding="utf-8")
        plot_injection(summary, stage / "accuracy_vs_n.png", f"{config.model} on {source}")
        write_jsonl(stage / "documents.jsonl", [{"id": d.id, "text": d.text} for d in documents])
        write_jsonl(stage / "questions.jsonl", [{"id": q.id, "question": q.question, "answers": list(q.answers),
                                                 "document": q.document, "distractors": list(q.distractors)}
                                                for q in questions])
    print(tables)
    print(f"results in {out} ({wall / 60:.1f} min)")
    return out, summary
