"""`promptstep analyze`: record ZS / ICL / FT states, compute the instruments, write a run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptstep.analysis import BASELINES, POSITIONS
from promptstep.commands.common import check_run_name
from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.formats import Format
from promptstep.rules import RULES
from promptstep.runs import name_from, run_dir, staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml

TASKS = ("mr", "character")

if TYPE_CHECKING:
    from collections.abc import Sequence

    from promptstep.analysis.tasks import ProbeGroup


@dataclass
class AnalyzeConfig:
    """`promptstep analyze`: ICL vs GD instruments (Dai et al. 2023, arXiv 2212.10559; Deutch et al. 2024, arXiv
    2311.07772; Shen et al. 2024, arXiv 2310.08540) on MR or Character Description: ZS, ICL and FT states of
    each model and of untrained baselines, per-layer similarity and distribution metrics."""

    models: tuple[str, ...] = ("smollm2-135m",)
    """Models to analyse, each a model spec (the tokenizer of the first is used for all)."""
    task: str = "mr"
    """Task: mr (the Pang & Lee sentences in gensim's test data) or character (a triplet dataset: needs data)."""
    data: str = ""
    """character: dataset directory or .jsonl file."""
    split: str = "test"
    """character: split to read when data is a directory."""
    n_test: int = 32
    """Test inputs scored (character: the first N of the split)."""
    n_demos: int = 8
    """mr: demonstrations in the ICL prompt (FT trains on the same ones)."""
    rules: tuple[str, ...] = ("sgd", "lcgd")
    """FT update rules to compare: sgd (vanilla GD) and/or lcgd (Layer-Causal GD)."""
    lr: float = 3e-3
    """Learning rate of FT (one SGD step per demonstration; 3e-3 is Deutch et al.'s MR rate)."""
    train_params: str = "kv"
    """Parameters FT updates: kv (key/value projections), all, or a regex on parameter names."""
    baselines: tuple[str, ...] = BASELINES
    """Untrained copies of the first model run through the same pipeline: random-init and/or trained-embeddings (empty:
    none)."""
    position: str = "last"
    """Recorded position: last (the last prompt token) or label (Dai et al.'s label token)."""
    top_k: int = 10
    """K of the top-K token overlap between distributions."""
    permutations: int = 0
    """mr: demonstration orders P for order sensitivity (0 = off, else at least 2)."""
    seed: int = 0
    """Seed of the demonstration / test split, the orders and the baselines' initialisation."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    name: str | None = None
    """Run name, a directory under runs_dir (default: derived from the command, data and model)."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""

    def inner(self, rule: str):
        """The FT update of `rule` (vanilla GD or LCGD): one SGD step per demonstration on `train_params`."""
        from promptstep.updates import InnerStep

        return InnerStep(lr=self.lr, steps=1, params=self.train_params, rule=rule)

    def validate(self) -> None:
        check_run_name(self.name)

        choices = (("task", (self.task,), TASKS), ("rules", self.rules, RULES),
                   ("baselines", self.baselines, BASELINES), ("position", (self.position,), POSITIONS))
        for key, values, allowed in choices:
            for value in values:
                if value not in allowed:
                    raise InputError(f"config key '{key}': unknown value '{value}' (choose from {', '.join(allowed)})")
        for key in ("models", "rules"):
            if not getattr(self, key):
                raise InputError(f"config key '{key}' is empty")
        for key in ("n_test", "n_demos", "lr", "top_k"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.permutations == 1 or self.permutations < 0:
            raise InputError(f"config key 'permutations' must be 0 (off) or at least 2, got {self.permutations}")
        if self.task == "character" and not self.data:
            raise InputError("task 'character' needs --data (a triplet dataset directory or .jsonl file)")
        if self.task == "character" and self.permutations:
            raise InputError("order sensitivity needs several demonstrations to permute: use task 'mr'")


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short unique labels: a run's name for `runs/NAME/model`, else the last path part or the spec."""
    labels = []
    for spec in specs:
        path = Path(spec)
        label = path.parent.name if path.name == "model" and path.parent.name else path.name or spec
        labels.append(label if label not in labels else f"{label}#{len(labels)}")
    return labels


def build_variants(config: AnalyzeConfig, tokenizer) -> list[list[ProbeGroup]]:
    """The probe groups, then (MR with permutations) the same test inputs with the demonstrations re-ordered."""
    from promptstep.analysis.tasks import character_groups, demo_orders, load_reviews, mr_group, split_reviews

    if config.task == "character":
        from promptstep.commands.common import load_split

        return [character_groups(tokenizer, load_split(config.data, config.split, config.n_test), Format(),
                                 config.position)]
    demos, tests = split_reviews(load_reviews(), config.n_demos, config.n_test, config.seed)
    orders = demo_orders(len(demos), max(config.permutations, 1), config.seed)
    return [[mr_group(tokenizer, [demos[i] for i in order], tests, config.position)] for order in orders]


def check_lengths(variants: list[list[ProbeGroup]], limit: int, label: str) -> None:
    """Refuse ICL sequences longer than the model's window."""
    longest = max(len(p.icl_ids) for groups in variants for g in groups for p in g.probes)
    if longest > limit:
        raise InputError(f"an ICL sequence is {longest} tokens, over the {limit}-token window of {label}; "
                         "use fewer demonstrations (n_demos)")


def run_analyze(config: AnalyzeConfig) -> tuple[Path, dict]:
    """Analyse every model and baseline; publish runs/<name>/ with config, records, metrics and plots."""
    from promptstep.analysis.baselines import untrained_model
    from promptstep.analysis.instruments import analyze_model, csv_rows, summarize_model
    from promptstep.models import load_model, max_length
    from promptstep.reporting.analysis import markdown_summary, plot_layers

    labels = model_labels(config.models)
    out = run_dir(config.runs_dir, config.name or name_from("analyze", config.task, labels[0]))
    started = time.time()
    with staged_dir(out, config.overwrite) as staging:
        write_yaml(staging / "config.yaml", config_dict(config))
        rows: list[dict] = []
        summaries: dict[str, dict] = {}
        first_vocab = None
        variants: list[list[ProbeGroup]] = []
        for index, (spec, label) in enumerate(zip(config.models, labels)):
            model, tokenizer = load_model(spec, attn_implementation=config.attn)
            if first_vocab is None:
                first_vocab = tokenizer.get_vocab()
                variants = build_variants(config, tokenizer)
            elif tokenizer.get_vocab() != first_vocab:
                raise InputError(f"model '{spec}' has a different tokenizer from '{config.models[0]}'")
            check_lengths(variants, max_length(model, tokenizer), label)
            subjects = [(label, model)]
            if index == 0:
                subjects += [(f"{label}:{kind}", untrained_model(model, kind, config.seed))
                             for kind in config.baselines]
            for subject, subject_model in subjects:
                subject_rows = analyze_model(subject_model, tokenizer, variants, config, subject)
                rows += subject_rows
                summaries[subject] = summarize_model(subject_rows, config.rules)
            del model, subjects
        probes = variants[0]
        sizes = {"models": len(summaries), "test_inputs": sum(len(g.probes) for g in probes),
                 "demos_per_group": len(probes[0].demos), "orderings": len(variants)}
        write_jsonl(staging / "records.jsonl", rows)
        write_json(staging / "metrics.json", {"task": config.task, "sizes": sizes,
                                              "wall_s": round(time.time() - started, 1), "models": summaries})
        write_summary_csv(staging / "metrics.csv", csv_rows(summaries))
        table = markdown_summary(summaries)
        (staging / "table.md").write_text(table + "\n", encoding="utf-8")
        plot_layers(summaries, staging, f"{config.task}: ICL vs FT per layer")
    print(table)
    print(f"results in {out} ({time.time() - started:.0f} s)")
    return out, summaries
