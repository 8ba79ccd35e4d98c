"""The CLI's workflows, one function and one config dataclass each: data, eval, demo."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from promptstep.config import config_dict
from promptstep.data.triplets import Triplet, load_triplets, write_triplets
from promptstep.distributed import resolve_device
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, evaluate, summarize
from promptstep.formats import SETTINGS, Format, fit_lengths
from promptstep.meta import MetaOptions
from promptstep.models import load_model, max_length
from promptstep.prepare import PrepareOptions, choose_subset, prepare_format
from promptstep.report import markdown_table, plot_settings, plot_training
from promptstep.runs import staged_dir, write_json, write_jsonl, write_summary_csv, write_yaml


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise InputError(f"config key '{name}' must be positive, got {value}")


# ---------------------------------------------------------------- data


@dataclass
class DataConfig:
    """`promptstep data TASK --out DIR`: build a triplet dataset (train.jsonl, test.jsonl, meta.json, config.yaml)."""

    task: str = "character"
    out: str = ""
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    source: str | None = None
    variant: str = "wikitext-103-raw-v1"
    query_words: int = 1
    answer_words: int = 5
    min_context_words: int = 20
    max_context_words: int = 150
    min_paragraph_words: int = 30
    max_passage_words: int | None = None
    # character / reversal only (synthetic.SyntheticOptions; the defaults give the original files byte for byte):
    facts: tuple[int, ...] = (1,)  # facts per context, drawn uniformly from the list (1,2,2: 2 twice as often)
    same_family: float = 0.25  # P(a distractor fact is of the queried family, another filler)
    same_filler: float = 0.25  # P(a distractor fact is of another family, the queried filler)
    name_styles: tuple[str, ...] = ("invented",)  # invented, common, initials, titled, hyphenated; one per triplet
    heldout_families: int = 0  # K > 0: K families only in test_families.jsonl, never in train/test
    templates: str = "canonical"  # canonical | varied fact phrasings
    overwrite: bool = False

    def validate(self) -> None:
        if not self.out:
            raise InputError("data needs --out DIR")
        for key in ("n_train", "n_test", "max_passage_words"):
            if getattr(self, key) is not None:
                _positive(key, getattr(self, key))
        _positive("min_paragraph_words", self.min_paragraph_words)
        self.spans().validate()
        from promptstep.data.synthetic import SyntheticOptions

        options = self.synthetic()
        options.validate()
        if self.task in REAL_TASKS and options != SyntheticOptions():
            raise InputError("options facts, same_family, same_filler, name_styles, heldout_families and templates "
                             f"apply only to the character and reversal tasks, not to {self.task}")

    def synthetic(self):
        from promptstep.data.synthetic import SyntheticOptions

        return SyntheticOptions(facts=self.facts, same_family=self.same_family, same_filler=self.same_filler,
                                name_styles=self.name_styles, heldout_families=self.heldout_families,
                                templates=self.templates)

    def spans(self):
        from promptstep.data.prose import SpanOptions

        return SpanOptions(self.query_words, self.answer_words, self.min_context_words, self.max_context_words)


SYNTHETIC_SIZES = {"train": 5000, "test": 500}
REAL_TASKS = ("squad", "wikitext", "wiki-offline")


def _real_split(config: DataConfig, split: str) -> tuple[list[Triplet], dict]:
    """One split of a real-text task, sampled down to n_train / n_test, and how many records were kept/dropped."""
    from promptstep.data.prose import prose_triplets, sample

    if config.task == "squad":
        from promptstep.data.squad import squad_rows, squad_triplets

        triplets, dropped = squad_triplets(squad_rows(config.source or "rajpurkar/squad", split),
                                           max_context_words=config.max_passage_words)
    else:
        if config.task == "wikitext":
            from promptstep.data.wikitext import DEFAULT_HUB, load_wikitext

            paragraphs = load_wikitext(config.source or DEFAULT_HUB, split, config.variant)
        else:
            from promptstep.data.wiki_offline import wiki_offline_paragraphs

            paragraphs = wiki_offline_paragraphs(split, config.min_paragraph_words,
                                                 Path(config.source) if config.source else None)
        triplets, dropped = prose_triplets(paragraphs, config.spans(), config.seed)
    if not triplets:
        raise InputError(f"{config.task} {split}: preprocessing kept no records ({dict(dropped)})")
    limit = config.n_train if split == "train" else config.n_test
    kept = sample(triplets, limit, config.seed)
    return kept, {"records": len(triplets) + sum(dropped.values()), "usable": len(triplets), "kept": len(kept),
                  "dropped": dict(dropped)}


def run_data(config: DataConfig) -> Path:
    from promptstep.data.synthetic import TASKS, generate_splits
    from promptstep.runs import check_run_dir

    out = Path(config.out)
    check_run_dir(out, config.overwrite)
    if config.task in TASKS:
        splits, meta = generate_splits(config.task, config.n_train or SYNTHETIC_SIZES["train"],
                                       config.n_test or SYNTHETIC_SIZES["test"], config.seed, config.synthetic())
        train, test = splits["train"], splits["test"]
    elif config.task in REAL_TASKS:
        (train, train_stats), (test, test_stats) = (_real_split(config, s) for s in ("train", "test"))
        meta = {"task": config.task, "source": config.source, "seed": config.seed, "train": train_stats,
                "test": test_stats}
        splits = {"train": train, "test": test}
        for split, stats in (("train", train_stats), ("test", test_stats)):
            reasons = ", ".join(f"{n} {why}" for why, n in stats["dropped"].items()) or "none"
            print(f"{split}: {stats['records']} records, {stats['usable']} usable (dropped: {reasons}), "
                  f"kept {stats['kept']}")
    else:
        raise InputError(f"unknown data task '{config.task}' (choose from {', '.join((*TASKS, *REAL_TASKS))})")
    with staged_dir(out, config.overwrite) as staging:
        for split, items in splits.items():  # train, test and, with held-out families, test_families
            write_triplets(staging / f"{split}.jsonl", items)
        write_json(staging / "meta.json", meta)
        write_yaml(staging / "config.yaml", config_dict(config))
    print(f"wrote {' / '.join(f'{len(items)} {split}' for split, items in splits.items())} triplets to {out}")
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
    device: str = "auto"
    trust_remote_code: bool = False
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
        resolve_device(self.device)

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


def _load(config: EvalConfig | PrepareConfig):
    """The config's model and tokenizer on its device."""
    return load_model(config.model, attn_implementation=config.attn, device=resolve_device(config.device),
                      trust_remote_code=config.trust_remote_code)


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
        model, tokenizer = model_and_tokenizer or _load(config)
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


# ---------------------------------------------------------------- prepare


@dataclass
class PrepareConfig(PrepareOptions):
    """`promptstep prepare`: format fine-tuning on a saved subset; writes runs/<name>/model."""

    model: str = "smollm2-135m"
    data: str = ""
    split: str = "train"
    attn: str = "eager"
    device: str = "auto"
    trust_remote_code: bool = False
    name: str = "prepared"
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:
        if not self.data:
            raise InputError("prepare needs --data (a dataset directory or a .jsonl file)")
        super().validate()
        resolve_device(self.device)


def run_prepare(config: PrepareConfig, model_and_tokenizer=None) -> Path:
    out = Path(config.runs_dir) / config.name
    triplets = load_split(config.data, config.split, None)
    subset = choose_subset(triplets, config.n_examples, config.seed)
    with staged_dir(out, config.overwrite) as staging:
        model, tokenizer = model_and_tokenizer or _load(config)
        fit_lengths(subset, tokenizer, max_length(model, tokenizer), Format(), False,
                    str(dataset_file(config.data, config.split)))
        write_yaml(staging / "config.yaml", config_dict(config))
        write_json(staging / "subset_ids.json", [t.id for t in subset])
        start = time.time()
        logs = prepare_format(model, tokenizer, subset, config)
        write_jsonl(staging / "train_log.jsonl", logs)
        write_json(staging / "summary.json", {"wall_s": round(time.time() - start, 1), "final": logs[-1]})
        model.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "model")
    print(f"prepared model in {out / 'model'} (prompt NLL {logs[0]['prompt_nll']:.3f} -> {logs[-1]['prompt_nll']:.3f})")
    return out / "model"


# ---------------------------------------------------------------- meta-train


class TrainingStopped(Exception):
    """Meta-training stopped early (repeated non-finite steps); the last good checkpoint is kept."""


@dataclass
class MetaTrainConfig(MetaOptions):
    """`promptstep meta-train`: meta-train so one inner step on a context acts like prompting with it."""

    model: str = "tiny"
    data: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    train_limit: int | None = None
    eval_n: int = 100
    epochs: int = 1
    max_steps: int | None = None
    eval_every: int = 0
    checkpoint_every: int = 50
    seed: int = 0
    attn: str = "eager"
    name: str = "meta"
    runs_dir: str = "runs"
    resume: bool = False
    overwrite: bool = False
    before_from: str | None = None
    device: str = "auto"
    num_processes: int = 1
    trust_remote_code: bool = False

    def validate(self) -> None:
        if not self.data:
            raise InputError("meta-train needs --data (a dataset directory)")
        super().validate()
        for key in ("eval_n", "epochs", "num_processes"):
            _positive(key, getattr(self, key))
        if self.batch_size < self.num_processes:
            raise InputError(f"batch_size {self.batch_size} is smaller than num_processes {self.num_processes}")
        resolve_device(self.device, several=self.num_processes > 1)
        for key in ("train_limit", "max_steps"):
            if getattr(self, key) is not None:
                _positive(key, getattr(self, key))
        if self.resume and self.overwrite:
            raise InputError("choose one of --resume and --overwrite")


_RESTART_KEYS = ("resume", "overwrite", "num_processes", "device")
# Everything the before-evaluation depends on, FT's inner step included.
_SAME_EVAL_KEYS = ("model", "data", "eval_split", "eval_n", "max_new_tokens", "attn", "inner_lr", "inner_steps",
                   "inner_params", "inner_rule")


def _reused_before(config: MetaTrainConfig) -> dict:
    """The `before.json` of another meta-train run on the same model and evaluation set (`--before-from RUN`)."""
    from promptstep.config import read_yaml

    other = Path(config.before_from)
    if not (other / "before.json").is_file() or not (other / "config.yaml").is_file():
        raise InputError(f"--before-from {other}: not a meta-train run (needs before.json and config.yaml)")
    saved = read_yaml(other / "config.yaml")
    for key in _SAME_EVAL_KEYS:
        if saved.get(key) != getattr(config, key):
            raise InputError(f"--before-from {other}: '{key}' was {saved.get(key)!r} there, "
                             f"{getattr(config, key)!r} here")
    return json.loads((other / "before.json").read_text())


def _open_meta_run(config: MetaTrainConfig, needed_bytes: int) -> Path:
    """Create, reuse (--resume) or replace (--overwrite) the run directory; refuse anything else, writing nothing."""
    import shutil

    from promptstep.checkpoints import recover
    from promptstep.config import read_yaml
    from promptstep.runs import check_run_dir, require_free_space

    out = Path(config.runs_dir) / config.name
    if config.resume:
        if not recover(out / "checkpoint"):
            raise InputError(f"nothing to resume: {out} has no checkpoint")
        saved = read_yaml(out / "config.yaml")
        current = config_dict(config)
        for key, value in current.items():
            if key not in _RESTART_KEYS and saved.get(key) != value:
                raise InputError(f"--resume with a different config: '{key}' was {saved.get(key)!r}, now {value!r}")
        require_free_space(out, needed_bytes)
        return out
    check_run_dir(out, config.overwrite)
    require_free_space(out, needed_bytes)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_yaml(out / "config.yaml", config_dict(config))
    return out


def run_meta_train(config: MetaTrainConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    """Meta-train with evaluation before and after; writes logs, checkpoints, the final model and a plot.

    `num_processes` > 1 spawns that many local processes (unless a launcher such as `accelerate launch` already
    started several); each runs this function, only rank 0 writes.
    """
    from promptstep import distributed

    if config.num_processes > 1 and not distributed.launched():
        distributed.spawn(run_meta_train, config, config.num_processes, (InputError, TrainingStopped))
        out = Path(config.runs_dir) / config.name
        return out, json.loads((out / "summary.json").read_text())
    with distributed.processes(config.device) as procs:
        return _meta_train(config, procs, model_and_tokenizer)


def _meta_train(config: MetaTrainConfig, procs, model_and_tokenizer) -> tuple[Path, dict]:
    from promptstep.lora import build_trainer
    from promptstep.meta import batches_for, eval_summary, run_training
    from promptstep.models import check_second_order
    from promptstep.precision import check_precision, meta_step_context
    from promptstep.runs import trim_log

    train = load_split(config.data, config.train_split, config.train_limit)
    eval_set = load_split(config.data, config.eval_split, config.eval_n)
    model, tokenizer = model_and_tokenizer or load_model(config.model, attn_implementation=config.attn,
                                                         device=procs.device,
                                                         trust_remote_code=config.trust_remote_code)
    limit = max_length(model, tokenizer)
    for split, triplets in ((config.train_split, train), (config.eval_split, eval_set)):
        fit_lengths(triplets, tokenizer, limit, Format(), False, str(dataset_file(config.data, split)))
    if len(train) < config.batch_size:
        raise InputError(f"batch_size {config.batch_size} is larger than the {len(train)} training triplets")
    check_precision(config.precision, procs.device)
    if not config.first_order:
        with meta_step_context(model, config.precision):
            check_second_order(model)
    reused_before = _reused_before(config) if config.before_from and not config.resume else None
    out = Path(config.runs_dir) / config.name
    procs.on_main(lambda: _open_meta_run(config, _disk_bytes_needed(model, config)))
    trainer = build_trainer(model, tokenizer, config, processes=procs)  # LC: the teacher is a frozen copy now
    if config.resume:
        trainer.restore(out / "checkpoint")
        for log in ("train_log.jsonl", "eval_log.jsonl"):
            procs.on_main(lambda log=log: trim_log(out / log, trainer.step_count))
    examples = procs.main_first(lambda: trainer.build_examples(train, progress=procs.is_main))
    batches = batches_for(examples, config.batch_size, config.epochs, config.seed)[: config.max_steps]
    if config.resume:
        before = json.loads((out / "before.json").read_text())
        if procs.is_main:
            print(f"resuming {out} at step {trainer.step_count} of {len(batches)}", flush=True)
    else:
        before = procs.on_main(lambda: reused_before or eval_summary(trainer, eval_set, progress=True)["summary"])
        if procs.is_main:
            write_json(out / "before.json", before)
    main = procs.is_main
    result = run_training(trainer, batches, out=out if main else None, eval_set=eval_set if main else [],
                          eval_every=config.eval_every, checkpoint_every=config.checkpoint_every, progress=main)
    if result["stopped"]:
        kept = f"last good checkpoint in {out / 'checkpoint'}" if (out / "checkpoint").is_dir() else "no checkpoint"
        raise TrainingStopped(f"stopped: {result['stopped']}; {kept}")
    if not main:
        return out, {}
    after_eval = eval_summary(trainer, eval_set, progress=True)
    after = after_eval["summary"]
    write_jsonl(out / "records.jsonl", after_eval["records"])
    summary = {"steps": result["steps"], "wall_s": result["wall_s"], "before": before, "after": after}
    write_json(out / "summary.json", summary)
    write_summary_csv(out / "metrics.csv", {f"{stage}/{s}": e for stage, block in (("before", before),
                                                                                   ("after", after))
                                            for s, e in block.items()})
    plot_settings({"before": before, "after": after}, out / "before_after.png",
                  f"meta-train ({config.objective}) {config.model}")
    plot_training(out / "train_log.jsonl", out / "training.png")
    saved = trainer.export(out)
    print(markdown_table({"before": before, "after": after}))
    print(f"results in {out}; meta-trained model in {saved}")
    return out, summary


def _disk_bytes_needed(model, config: MetaTrainConfig) -> int:
    """Disk a meta-train run needs: the final model, plus two checkpoints (weights and Adam's two moments) while
    one replaces the other."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (1 + (6 if config.checkpoint_every else 0))


# ---------------------------------------------------------------- pretrain-tiny


@dataclass
class PretrainTinyConfig:
    """`promptstep pretrain-tiny`: train the tiny model's tokenizer and weights from scratch on generated text."""

    out: str = ""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        for key in ("steps", "batch_size", "lr"):
            _positive(key, getattr(self, key))


def run_pretrain_tiny(config: PretrainTinyConfig) -> Path:
    from promptstep.tiny import default_tiny_dir, pretrain_tiny

    out = Path(config.out) if config.out else default_tiny_dir()
    with staged_dir(out, config.overwrite) as staging:
        pretrain_tiny(staging, config.steps, seed=config.seed, batch_size=config.batch_size, lr=config.lr)
    print(f"tiny model in {out}")
    return out


# ---------------------------------------------------------------- demo


@dataclass
class DemoConfig:
    """`promptstep demo`: data -> prepare -> evaluate -> meta-train (LC) -> evaluate, on the embedded model."""

    model: str = "smollm2-135m"
    task: str = "character"
    prepare_examples: int = 240
    prepare_steps: int = 25
    n_train: int = 160
    n_eval: int = 40
    inner_lr: float = 1e-2
    outer_lr: float = 2e-5
    batch_size: int = 2
    lm_weight: float = 0.0
    first_order: bool = False
    seed: int = 0
    name: str = "demo"
    runs_dir: str = "runs"
    overwrite: bool = False

    def validate(self) -> None:
        for key in ("prepare_examples", "prepare_steps", "n_train", "n_eval", "inner_lr", "outer_lr", "batch_size"):
            _positive(key, getattr(self, key))


def run_demo(config: DemoConfig) -> Path:

    out = Path(config.runs_dir) / config.name
    if out.exists() and not config.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite true or choose another --name")
    per_example = 1.0 if config.first_order else 2.5
    minutes = (25 + config.prepare_steps * 6 + 2 * config.n_eval * 2.5 + config.n_train * per_example) / 60
    print(f"promptstep demo: {config.model} on {config.task}; prepare {config.prepare_steps} steps, meta-train LC on "
          f"{config.n_train} triplets, evaluate {config.n_eval} held-out triplets before and after. "
          f"Expect about {minutes:.0f} minutes on 2 CPU cores.", flush=True)
    started = time.time()
    data = out / "data"
    run_data(DataConfig(task=config.task, out=str(data), seed=config.seed, overwrite=config.overwrite))
    model, tokenizer = load_model(config.model)
    prepare = PrepareConfig(model=config.model, data=str(data), n_examples=config.prepare_examples,
                            steps=config.prepare_steps, seed=config.seed, name="prepare", runs_dir=str(out),
                            overwrite=config.overwrite)
    run_prepare(prepare, (model, tokenizer))
    meta = MetaTrainConfig(model=str(out / "prepare" / "model"), data=str(data), train_limit=config.n_train,
                           eval_n=config.n_eval, objective="lc", inner_lr=config.inner_lr, outer_lr=config.outer_lr,
                           batch_size=config.batch_size, lm_weight=config.lm_weight, first_order=config.first_order,
                           checkpoint_every=0, seed=config.seed, name="meta-train", runs_dir=str(out),
                           overwrite=config.overwrite)
    _, summary = run_meta_train(meta, (model, tokenizer))
    write_yaml(out / "config.yaml", config_dict(config))
    write_json(out / "summary.json", {"wall_s": round(time.time() - started, 1), **summary})
    plot_settings({"prepared base": summary["before"], "meta-trained (LC)": summary["after"]},
                  out / "demo.png", f"{config.model}, {config.task}: one SGD step on the context (FT) vs prompting")
    print(f"demo finished in {(time.time() - started) / 60:.1f} min; table above, plot in {out / 'demo.png'}")
    return out
