"""`promptstep meta-train`: meta-train so one inner step on a context acts like prompting with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    NO_TRUNCATE_HINT,
    check_device,
    check_run_name,
    dataset_file,
    load_split,
    positive,
)
from promptstep.config import config_dict
from promptstep.errors import InputError, TrainingStopped
from promptstep.formats import Format, fit_lengths
from promptstep.meta.options import MetaOptions
from promptstep.model_specs import check_attention
from promptstep.runs import run_dir, write_json, write_jsonl, write_summary_csv, write_yaml
from promptstep.tracking import Tracker, check_report_to


@dataclass
class MetaTrainConfig(MetaOptions):
    """`promptstep meta-train`: meta-train so one inner step on a context acts like prompting with it."""

    model: str = "tiny"
    """Model: smollm2-135m (embedded), tiny (embedded), a local directory such as runs/NAME/model, or a hub id."""
    data: str = ""
    """Dataset directory holding <train_split>.jsonl and <eval_split>.jsonl. Required."""
    train_split: str = "train"
    """Split meta-training reads."""
    eval_split: str = "test"
    """Split evaluated before and after meta-training (and every eval_every steps)."""
    train_limit: int | None = None
    """Use only the first N training triplets (default: all)."""
    eval_n: int = 100
    """Number of eval_split triplets evaluated (the first N)."""
    ppl_texts: int = 32
    """Damage check: perplexity before and after on this many held-out offline-Wikipedia paragraphs (0 = off)."""
    ppl_max_tokens: int = 128
    """Damage check: tokens of each paragraph scored (its first N)."""
    lm_texts: str | None = None
    """lm_source text: general text read like inject's documents, one passage per paragraph (default: the offline
    Wikipedia train split, never the damage check's test split)."""
    epochs: int = 1
    """Passes over the training triplets, each in a seeded order."""
    max_steps: int | None = None
    """Stop after this many outer steps (default: every full batch of every epoch)."""
    eval_every: int = 0
    """Also evaluate every N outer steps, into eval_log.jsonl (0 = only before and after)."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every N outer steps and at the end (0 = none)."""
    seed: int = 0
    """Seed of the batch order and of LoRA's initialisation."""
    attn: str = "eager"
    """Attention implementation the model loads with: eager or sdpa (second-order steps then use the math kernel)."""
    name: str = "meta"
    """Run name: the run is written to runs_dir/name."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    resume: bool = False
    """Continue the run from its checkpoint (an interrupted run, or a finished one to extend); the other options must
    match the saved config."""
    overwrite: bool = False
    """Replace an existing run directory (it is replaced only when the new run has succeeded)."""
    before_from: str | None = None
    """Reuse the before-evaluation (before.json) of another meta-train run with the same model, data and inner step."""
    device: str = "auto"
    """Device: auto (the GPU if torch sees one), cpu, cuda or cuda:N."""
    num_processes: int = 1
    """Data-parallel processes to start on this machine (gloo on CPU, NCCL on GPUs); --threads is split among them."""
    trust_remote_code: bool = False
    """Let a model that ships its own Python code run it (off: such a model is refused)."""
    report_to: str = "none"
    """Also send the training curves to an experiment tracker: none, tensorboard (pip install
    'promptstep[tracking]'; event files in the run's tensorboard/), trackio or wandb (pip install trackio / wandb)."""

    def validate(self) -> None:

        if not self.data:
            raise InputError("meta-train needs --data (a dataset directory)")
        super().validate()
        if self.ppl_texts < 0:
            raise InputError(f"config key 'ppl_texts' must be >= 0, got {self.ppl_texts}")
        for key in ("eval_n", "epochs", "num_processes", "ppl_max_tokens"):
            positive(key, getattr(self, key))
        if self.batch_size < self.num_processes:
            raise InputError(f"batch_size {self.batch_size} is smaller than num_processes {self.num_processes}")
        check_device(self.device, several=self.num_processes > 1)
        check_attention(self.attn)
        check_run_name(self.name)
        for key in ("train_limit", "max_steps"):
            if getattr(self, key) is not None:
                positive(key, getattr(self, key))
        for key in ("eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise InputError(f"config key '{key}' must be >= 0 (0 = never), got {getattr(self, key)}")
        if self.resume and self.overwrite:
            raise InputError("choose one of --resume and --overwrite")
        if self.lm_texts is not None:
            if "text" not in self.lm_sources():
                raise InputError(f"lm_texts is read only with --lm-source text (got lm_source '{self.lm_source}')")
            general_texts(self.lm_texts)  # a missing or malformed file fails here, before any work
        check_report_to(self.report_to)


_RESTART_KEYS = ("resume", "overwrite", "num_processes", "device")


# Everything the before-evaluation depends on, FT's inner step included.
_SAME_EVAL_KEYS = ("model", "data", "eval_split", "eval_n", "max_new_tokens", "attn", "inner_lr", "inner_steps",
                   "inner_params", "inner_rule")


def _reused_before(config: MetaTrainConfig) -> dict:
    """The `before.json` of another meta-train run on the same model and evaluation set (`--before-from RUN`)."""
    from promptstep.config import read_yaml
    from promptstep.files import read_json

    other = Path(config.before_from)
    if not (other / "before.json").is_file() or not (other / "config.yaml").is_file():
        raise InputError(f"--before-from {other}: not a meta-train run (needs before.json and config.yaml)")
    saved = read_yaml(other / "config.yaml")
    for key in _SAME_EVAL_KEYS:
        if saved.get(key) != getattr(config, key):
            raise InputError(f"--before-from {other}: '{key}' was {saved.get(key)!r} there, "
                             f"{getattr(config, key)!r} here")
    before = read_json(other / "before.json")
    if not isinstance(before, dict) or not all(isinstance(entry, dict) for entry in before.values()):
        raise InputError(f"--before-from {other / 'before.json'}: not a summary of settings")
    return before


def resumable(out: Path) -> Path | None:
    """The directory a `--resume` of run `out` continues: its in-progress directory (an interrupted or stopped
    run) if that holds a checkpoint, else the finished run itself if it kept one (to extend it), else None."""
    from promptstep.checkpoints import recover
    from promptstep.runs import in_progress_dir

    for candidate in (in_progress_dir(out), out):
        if recover(candidate / "checkpoint"):
            return candidate
    return None


def _check_meta_target(config: MetaTrainConfig, out: Path) -> Path | None:
    """Before anything is loaded or written: the run `--resume` continues (checked config), or None for a fresh
    run whose target may be created or replaced."""
    from promptstep.config import read_yaml
    from promptstep.runs import check_run_dir, in_progress_dir

    if config.resume:
        source = resumable(out)
        if source is None:
            raise InputError(f"nothing to resume: {out} has no checkpoint")
        saved = read_yaml(source / "config.yaml")
        for key, value in config_dict(config).items():
            if key not in _RESTART_KEYS and saved.get(key) != value:
                raise InputError(f"--resume with a different config: '{key}' was {saved.get(key)!r}, now {value!r}")
        return source
    check_run_dir(out, config.overwrite)
    work = in_progress_dir(out)
    if (work / "checkpoint").is_dir() and not config.overwrite:
        raise InputError(f"{out} has an interrupted run in {work}; pass --resume true to continue it or "
                         "--overwrite true to start again")
    return None


def _check_inputs(config: MetaTrainConfig, out: Path, check_model: bool) -> None:
    """Every input, before torch is loaded or anything is written: the run target (and what `--resume` would
    continue), `--before-from`, both splits, and the model spec."""
    from promptstep.commands.common import check_models

    _check_meta_target(config, out)
    if config.before_from and not config.resume:
        _reused_before(config)
    train = load_split(config.data, config.train_split, config.train_limit)
    load_split(config.data, config.eval_split, config.eval_n)
    if len(train) < config.batch_size:
        raise InputError(f"batch_size {config.batch_size} is larger than the {len(train)} training triplets")
    if check_model:
        check_models(config)


def _open_work_dir(config: MetaTrainConfig, out: Path, source: Path | None, needed_bytes: int) -> Path:
    """Under the run's lock: the in-progress directory training writes to, fresh or continued from `source`."""
    import shutil

    from promptstep.runs import in_progress_dir, require_free_space

    work = in_progress_dir(out)
    require_free_space(out, needed_bytes)
    if source == work:
        return work
    if work.exists():  # a stale in-progress run (no checkpoint, or --overwrite): ours to remove, we hold the lock
        shutil.rmtree(work)
    if source is not None:  # extend a finished run: continue a copy, so the finished run stays until success
        shutil.copytree(source, work)
        return work
    work.mkdir()
    write_yaml(work / "config.yaml", config_dict(config))
    return work


def run_meta_train(config: MetaTrainConfig, model_and_tokenizer=None) -> tuple[Path, dict]:
    """Meta-train with evaluation before and after; writes logs, checkpoints, the final model and a plot.

    The run trains in a hidden in-progress directory beside `runs_dir/name` and is published there only when it
    has finished (an existing run is replaced only then); an interrupted or stopped run keeps its in-progress
    directory for `--resume true`. `num_processes` > 1 spawns that many local processes (unless a launcher such
    as `accelerate launch` already started several); each runs this function, only rank 0 writes.
    """
    import os

    out = run_dir(config.runs_dir, config.name)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # not yet several processes (those are checked by rank 0)
        _check_inputs(config, out, model_and_tokenizer is None)
    from promptstep import distributed

    if config.num_processes > 1 and not distributed.launched():
        distributed.spawn(run_meta_train, config, config.num_processes, (InputError, TrainingStopped))
        return out, json.loads((out / "summary.json").read_text())
    with distributed.processes(config.device) as procs:
        return _meta_train(config, procs, model_and_tokenizer, out)


def _meta_train(config: MetaTrainConfig, procs, model_and_tokenizer, out: Path) -> tuple[Path, dict]:
    import shutil
    from contextlib import ExitStack

    from promptstep.checkpoints import clean_up
    from promptstep.meta.lora import build_trainer
    from promptstep.models import check_second_order, load_model, max_length
    from promptstep.precision import check_precision, meta_step_context
    from promptstep.reporting.render import markdown_table
    from promptstep.runs import publish, run_lock

    source = procs.on_main(lambda: _check_meta_target(config, out))
    reused_before = _reused_before(config) if config.before_from and not config.resume else None
    train = load_split(config.data, config.train_split, config.train_limit)
    eval_set = load_split(config.data, config.eval_split, config.eval_n)
    model, tokenizer = model_and_tokenizer or load_model(config.model, attn_implementation=config.attn,
                                                         device=procs.device,
                                                         trust_remote_code=config.trust_remote_code)
    limit = max_length(model, tokenizer)
    for split, triplets in ((config.train_split, train), (config.eval_split, eval_set)):
        fit_lengths(triplets, tokenizer, limit, Format(), False, str(dataset_file(config.data, split)),
                    config.max_new_tokens, NO_TRUNCATE_HINT)
    check_precision(config.precision, procs.device)
    if not config.first_order:
        with meta_step_context(model, config.precision):
            check_second_order(model)
    trainer = build_trainer(model, tokenizer, config, processes=procs, seed=config.seed)  # LC: teacher copy now
    if source is not None or config.resume:  # checked (another model's? damaged?) before anything is written
        trainer.restore(procs.broadcast(source) / "checkpoint")
    with ExitStack() as held:
        procs.on_main(lambda: held.enter_context(run_lock(out)))  # one writer per run, for the whole run
        work = procs.broadcast(procs.on_main(lambda: _open_work_dir(config, out, source,
                                                                    _disk_bytes_needed(model, config))))
        try:
            summary = _train_and_write_outputs(config, procs, trainer, train, eval_set, work, reused_before)
        except BaseException:
            if procs.is_main:
                clean_up(work / "checkpoint")  # a save cut short by the interruption leaves no staging behind
                if not (work / "checkpoint").is_dir() and not (work / "train_log.jsonl").is_file():
                    shutil.rmtree(work, ignore_errors=True)  # nothing to resume or read: leave no trace
            raise
        if procs.is_main:
            publish(work, out)
            print(markdown_table({"before": summary["before"], "after": summary["after"]}))
            if "heldout_text" in summary:
                ppl = summary["heldout_text"]
                print(f"held-out text perplexity (damage check): {ppl['before']['ppl']:.2f} -> "
                      f"{ppl['after']['ppl']:.2f} ({ppl['change_pct']:+.1f} %)")
            print(f"results in {out}; meta-trained model in {out / 'model'}")
    return out, summary


def _train_and_write_outputs(config: MetaTrainConfig, procs, trainer, train, eval_set, work: Path,
                             reused_before: dict | None) -> dict:
    """Train in `work` (resuming from its checkpoint if `--resume`), evaluate, and write every output there."""
    from promptstep.evaluate import heldout_perplexity
    from promptstep.meta.loop import batches_for, eval_summary, run_training
    from promptstep.reporting.render import plot_settings, plot_training
    from promptstep.runs import trim_log

    if config.resume:  # the trainer was restored from this run's checkpoint
        for log in ("train_log.jsonl", "eval_log.jsonl"):
            procs.on_main(lambda log=log: trim_log(work / log, trainer.step_count))
    examples = procs.main_first(lambda: trainer.build_examples(train, progress=procs.is_main))
    batches = batches_for(examples, config.batch_size, config.epochs, config.seed)[: config.max_steps]
    if "text" in config.lm_sources():
        trainer.set_lm_texts(general_texts(config.lm_texts))
    texts = heldout_texts(config.ppl_texts)
    if procs.is_main and texts and not (work / "heldout_ppl.json").is_file():
        write_json(work / "heldout_ppl.json", {"before": heldout_perplexity(trainer.eval_model(), trainer.tokenizer,
                                                                            texts, config.ppl_max_tokens)})
    if config.resume:
        from promptstep.files import read_json

        before = read_json(work / "before.json")
        if procs.is_main:
            print(f"resuming {work} at step {trainer.step_count} of {len(batches)}", flush=True)
    else:
        before = procs.on_main(lambda: reused_before or eval_summary(trainer, eval_set, progress=True)["summary"])
        if procs.is_main:
            write_json(work / "before.json", before)
    main = procs.is_main
    with Tracker(config.report_to, work, config.name, config_dict(config), enabled=main,
                 resumed_at=trainer.step_count if config.resume else None) as tracker:
        if not config.resume:
            tracker.log(before, 0, "before")
        result = run_training(trainer, batches, out=work if main else None, eval_set=eval_set if main else [],
                              eval_every=config.eval_every, checkpoint_every=config.checkpoint_every, progress=main,
                              on_step=lambda log: tracker.log(log, log["step"], "train"),
                              on_eval=lambda step, summary: tracker.log(summary, step, "eval"))
        stopped, after_eval = result["stopped"], None
        if main and not stopped:
            try:
                after_eval = eval_summary(trainer, eval_set, progress=True)
            except FloatingPointError as err:  # the trained weights no longer give a finite loss
                stopped = f"the evaluation after training diverged ({err})"
        if stopped:
            kept = (f"last good checkpoint in {work / 'checkpoint'} (continue with --resume true)"
                    if (work / "checkpoint").is_dir() else f"no checkpoint (logs in {work})")
            raise TrainingStopped(f"stopped: {stopped}; {kept}")
        if not main:
            return {}
        after = after_eval["summary"]
        summary = {"steps": result["steps"], "wall_s": result["wall_s"], "before": before, "after": after}
        if texts:
            ppl = json.loads((work / "heldout_ppl.json").read_text())
            ppl["after"] = heldout_perplexity(trainer.eval_model(), trainer.tokenizer, texts, config.ppl_max_tokens)
            ppl["change_pct"] = 100 * (ppl["after"]["ppl"] / ppl["before"]["ppl"] - 1)
            ppl["source"] = f"{len(texts)} held-out (test-split) paragraphs of the offline Wikipedia dump, first " \
                            f"{config.ppl_max_tokens} tokens each"
            write_json(work / "heldout_ppl.json", ppl)
            summary["heldout_text"] = ppl
        tracker.log(after, result["steps"], "after")
        tracker.log({"wall_s": result["wall_s"], "heldout_text": summary.get("heldout_text", {})}, result["steps"],
                    "summary")
    write_jsonl(work / "records.jsonl", after_eval["records"])
    write_json(work / "summary.json", summary)
    write_summary_csv(work / "metrics.csv", {f"{stage}/{s}": e for stage, block in (("before", before),
                                                                                    ("after", after))
                                             for s, e in block.items()})
    plot_settings({"before": before, "after": after}, work / "before_after.png",
                  f"meta-train ({config.objective}) {config.model}")
    plot_training(work / "train_log.jsonl", work / "training.png")
    trainer.export(work)
    return summary


def general_texts(path: str | None) -> list[str]:
    """The passages of the lm_source="text" regulariser: every paragraph (blank-line separated) of the documents at
    `path`, or the offline Wikipedia dump's train-split paragraphs."""
    if path is None:
        from promptstep.data.wiki_offline import wiki_offline_paragraphs

        return [text for _, text in wiki_offline_paragraphs("train")]
    import re

    from promptstep.documents import read_documents

    passages = [p.strip() for doc in read_documents(path) for p in re.split(r"\n\s*\n", doc.text) if p.strip()]
    if not passages:
        raise InputError(f"{path}: no text for the regulariser")
    return passages


def heldout_texts(n: int) -> list[str]:
    """The first `n` test-split paragraphs of the offline Wikipedia dump (articles no Wikipedia task trains on):
    the text of the damage check."""
    if n == 0:
        return []
    from promptstep.data.wiki_offline import wiki_offline_paragraphs

    return [text for _, text in wiki_offline_paragraphs("test")[:n]]


def _disk_bytes_needed(model, config: MetaTrainConfig) -> int:
    """Disk a meta-train run needs: the final model, plus two checkpoints (weights and Adam's two moments) while
    one replaces the other."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (1 + (6 if config.checkpoint_every else 0))
