"""The CLI's paper experiments, one config dataclass and one run function each: multi-context, controls,
distract, transfer. Each writes a run directory with config.yaml, records.jsonl, summary.json (with a `kind`),
metrics.csv and, where a person would rather look, a PNG."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands import EvalConfig, _positive, check_rule, dataset_file, load_split
from promptstep.config import config_dict
from promptstep.controls import correctness_breakdown, evaluate_irrelevant, summarize_irrelevant, with_distractors
from promptstep.data.triplets import load_triplets, write_triplets
from promptstep.distributed import resolve_device
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, evaluate, summarize
from promptstep.formats import Format, fit_lengths
from promptstep.meta import MetaOptions
from promptstep.models import load_model, max_length
from promptstep.multicontext import MODES, evaluate_groups, summarize_groups
from promptstep.report import markdown_table
from promptstep.runs import (
    name_from,
    run_dir,
    safe_name,
    staged_dir,
    write_json,
    write_jsonl,
    write_summary_csv,
    write_yaml,
)


def _fitted(model, tokenizer, data: str, split: str, limit: int | None, fmt: Format | None = None, truncate=False):
    triplets = load_split(data, split, limit)
    return fit_lengths(triplets, tokenizer, max_length(model, tokenizer), fmt or Format(), truncate,
                       str(dataset_file(data, split)))


def _load(config, spec: str | None = None):
    """(model, tokenizer) of `spec` (default: the config's model) on the config's device."""
    return load_model(spec or config.model, attn_implementation=config.attn, device=resolve_device(config.device),
                      trust_remote_code=getattr(config, "trust_remote_code", False))


def _publish(staging: Path, config, records: list[dict], summary: dict, csv_rows: dict) -> None:
    write_yaml(staging / "config.yaml", config_dict(config))
    write_jsonl(staging / "records.jsonl", records)
    write_json(staging / "summary.json", summary)
    write_summary_csv(staging / "metrics.csv", csv_rows)


# ---------------------------------------------------------------- multi-context


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
        resolve_device(self.device)
        if not self.data:
            raise InputError("multi-context needs --data (a dataset directory or a .jsonl file)")
        for mode in self.modes:
            if mode not in MODES:
                raise InputError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
        if not self.sizes or not self.modes:
            raise InputError("config keys 'sizes' and 'modes' must not be empty")
        for key in ("lr", "steps", "n_groups", "max_new_tokens", "batch_size"):
            _positive(key, getattr(self, key))
        for size in self.sizes:
            _positive("sizes", size)
        check_rule(self.rule)

    def options(self) -> EvalOptions:
        from promptstep.analysis.rules import INNER_RULES

        return EvalOptions(lrs=(self.lr,), steps=self.steps, param_filter=self.param_filter,
                           max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                           gradients=INNER_RULES[self.rule])


def run_multi_context(config: MultiContextConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    out = run_dir(config.runs_dir, config.name or name_from("multi", Path(config.data).stem, config.model))
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or _load(config)
        triplets = _fitted(model, tokenizer, config.data, config.split, config.limit)
        start = time.time()
        records = evaluate_groups(model, tokenizer, triplets, config.sizes, config.modes, config.n_groups,
                                  config.options(), seed=config.seed)
        settings = summarize_groups(records)
        _publish(staging, config, records, {"kind": "multi-context", "model": config.model,
                                            "wall_s": round(time.time() - start, 1), "settings": settings}, settings)
    print(markdown_table({config.model: settings}))
    print(f"results in {out}")
    return out, settings


# ---------------------------------------------------------------- controls


@dataclass
class ControlsConfig(EvalConfig):
    """`promptstep controls`: NC / Prompt / FT plus the irrelevant-context step on the eval split, NC and FT on
    `train_n` train triplets, and the 2x2 correctness breakdown on both (paper Tables 4 and 5)."""

    train_split: str = "train"
    train_n: int = 100
    base: str | None = None
    breakdown_metric: str = "em"
    seed: int = 0

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
    out = run_dir(config.runs_dir, config.name or name_from("controls", Path(config.data).stem, config.model))
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or _load(config)
        options = config.options()
        test = _fitted(model, tokenizer, config.data, config.split, config.limit, options.fmt, config.truncate)
        start = time.time()
        records = [{**r, "split": config.split} for r in evaluate(model, tokenizer, test, options)]
        irrelevant = evaluate_irrelevant(model, tokenizer, test, options, seed=config.seed)
        eval_summary = {**summarize(records), "irrelevant": summarize_irrelevant(irrelevant)}
        records += [{**r, "split": config.split} for r in irrelevant]
        summary: dict = {"kind": "controls", "model": config.model, "eval": eval_summary,
                         "breakdown": {config.split: correctness_breakdown(records, config.breakdown_metric)}}
        if config.train_n:
            train = _fitted(model, tokenizer, config.data, config.train_split, config.train_n, options.fmt,
                            config.truncate)
            train_options = dataclasses.replace(options, settings=("nc", "ft"))
            train_records = [{**r, "split": config.train_split}
                             for r in evaluate(model, tokenizer, train, train_options)]
            summary["train"] = summarize(train_records)
            summary["breakdown"][config.train_split] = correctness_breakdown(train_records, config.breakdown_metric)
            records += train_records
        if config.base:
            base, base_tokenizer = _load(config, config.base)
            nc_options = dataclasses.replace(options, settings=("nc",))
            summary["base_nc"] = summarize(evaluate(base, base_tokenizer, test, nc_options))["nc"]
        summary["wall_s"] = round(time.time() - start, 1)
        _publish(staging, config, records, summary, eval_summary)
    print(markdown_table({config.model: eval_summary}))
    for split, cells in summary["breakdown"].items():
        print(f"{split}: " + ", ".join(f"{k} {100 * v:.1f}%" if k != "n" else f"n {v}" for k, v in cells.items()))
    print(f"results in {out}")
    return out, summary


# ---------------------------------------------------------------- distract


@dataclass
class DistractConfig:
    """`promptstep distract --data DIR --out DIR2`: multi-fact contexts, each the queried fact plus
    `distractors` facts of other triplets of the same split (for training and evaluation)."""

    data: str = ""
    out: str = ""
    distractors: int = 2
    splits: tuple[str, ...] = ("train", "test")
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if not self.data or not self.out:
            raise InputError("distract needs --data DIR and --out DIR")
        if self.distractors < 0:
            raise InputError(f"config key 'distractors' must be >= 0, got {self.distractors}")


def run_distract(config: DistractConfig) -> Path:
    sources = {split: Path(config.data) / f"{safe_name(split, 'split name')}.jsonl" for split in config.splits}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise InputError(f"distract: no such file {missing[0]}")
    out = Path(config.out)
    with staged_dir(out, config.overwrite) as staging:
        counts = {}
        for split, path in sources.items():
            made = with_distractors(load_triplets(path), config.distractors, config.seed)
            write_triplets(staging / f"{split}.jsonl", made)
            counts[split] = len(made)
        write_json(staging / "meta.json", {"source": config.data, "distractors": config.distractors,
                                           "seed": config.seed, "counts": counts})
        write_yaml(staging / "config.yaml", config_dict(config))
    print(f"wrote {counts} multi-fact triplets ({config.distractors} distractors each) to {out}")
    return out


# ---------------------------------------------------------------- transfer


@dataclass
class TransferConfig(MetaOptions):
    """`promptstep transfer`: meta-train on `source`, then teach `target`'s format after (sequential) or during
    (joint) meta-training; FT accuracy on both (paper Table 3)."""

    model: str = "tiny"
    source: str = ""
    target: str = ""
    source_model: str | None = None
    target_run: str | None = None
    modes: tuple[str, ...] = ("sequential", "joint")
    joint_weight: float = 1.0
    prep_examples: int = 240
    prep_steps: int = 30
    prep_batch_size: int = 8
    prep_lr: float = 3e-5
    prep_nc_weight: float = 0.5
    train_limit: int | None = None
    eval_n: int = 100
    epochs: int = 1
    seed: int = 0
    attn: str = "eager"
    device: str = "auto"
    name: str = "transfer"
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:
        if not self.source or not self.target:
            raise InputError("transfer needs --source and --target (dataset directories)")
        super().validate()
        for mode in self.modes:
            if mode not in ("sequential", "joint"):
                raise InputError(f"unknown transfer mode '{mode}' (choose from sequential, joint)")
        for key in ("prep_examples", "prep_steps", "prep_batch_size", "prep_lr", "eval_n", "epochs"):
            _positive(key, getattr(self, key))
        if self.joint_weight < 0:
            raise InputError(f"config key 'joint_weight' must be >= 0, got {self.joint_weight}")
        resolve_device(self.device)

    def prepare_options(self):
        from promptstep.prepare import PrepareOptions

        return PrepareOptions(n_examples=self.prep_examples, steps=self.prep_steps, batch_size=self.prep_batch_size,
                              lr=self.prep_lr, nc_weight=self.prep_nc_weight, seed=self.seed)


def _meta_train(model, tokenizer, config: TransferConfig, train, make_inject=None):
    """A model meta-trained on `train` (a copy; `model` is untouched) and the training result; `make_inject`
    builds the trainer's inject hook from the model being trained."""
    from promptstep.lora import build_trainer
    from promptstep.meta import batches_for, run_training

    trainer = build_trainer(copy.deepcopy(model), tokenizer, config)
    inject = make_inject(trainer.model) if make_inject else None
    batches = batches_for(trainer.build_examples(train), config.batch_size, config.epochs, config.seed)
    result = run_training(trainer, batches, out=None, eval_set=[], eval_every=0, checkpoint_every=0, inject=inject)
    if result["stopped"]:
        raise InputError(f"transfer: meta-training stopped ({result['stopped']})")
    return trainer.eval_model(), result


def run_transfer(config: TransferConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    from promptstep.prepare import choose_subset, prepare_format
    from promptstep.transfer import joint_objective

    out = run_dir(config.runs_dir, config.name)
    with staged_dir(out, config.overwrite) as staging:
        base, tokenizer = model_and_tokenizer or _load(config)
        evals = {role: _fitted(base, tokenizer, data, "test", config.eval_n)
                 for role, data in (("source", config.source), ("target", config.target))}
        source_train = _fitted(base, tokenizer, config.source, "train", config.train_limit)
        subset = choose_subset(_fitted(base, tokenizer, config.target, "train", None), config.prep_examples,
                               config.seed)
        from promptstep.analysis.rules import INNER_RULES

        options = EvalOptions(lrs=(config.inner_lr,), steps=config.inner_steps, param_filter=config.inner_params,
                              max_new_tokens=config.max_new_tokens, gradients=INNER_RULES[config.inner_rule])
        start = time.time()
        models = {"base": base}
        if config.source_model:
            models["meta"] = _load(config, config.source_model)[0]
        else:
            models["meta"] = _meta_train(base, tokenizer, config, source_train)[0]
        if "sequential" in config.modes:
            models["sequential"] = copy.deepcopy(models["meta"])
            prepare_format(models["sequential"], tokenizer, subset, config.prepare_options())
        if "joint" in config.modes:
            def joint(model):
                return joint_objective(model, tokenizer, subset, config.prepare_options(), config.joint_weight)

            models["joint"] = _meta_train(base, tokenizer, config, source_train, make_inject=joint)[0]
        records, results = [], {}
        for label, model in models.items():
            for role, triplets in evals.items():
                rows = evaluate(model, tokenizer, triplets, options)
                results.setdefault(label, {})[role] = summarize(rows)
                records += [{**r, "model": label, "dataset": role} for r in rows]
        summary = {"kind": "transfer", "source": config.source, "target": config.target, "results": results,
                   "prep_subset_ids": [t.id for t in subset], "wall_s": round(time.time() - start, 1)}
        if config.target_run:
            from promptstep.tables import read_summary

            summary["in_domain_target"] = read_summary(Path(config.target_run))["after"]
        csv_rows = {f"{label}/{role}/{s}": e for label, by_role in results.items()
                    for role, block in by_role.items() for s, e in block.items()}
        _publish(staging, config, records, summary, csv_rows)
    print(markdown_table({f"{label} on {role}": block for label, by_role in results.items()
                          for role, block in by_role.items()}))
    print(f"results in {out}")
    return out, summary
