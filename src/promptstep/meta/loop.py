"""The outer loop around a MetaTrainer: batches in seeded epoch order, logs, periodic evaluation, checkpoints."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from promptstep.data.triplets import Triplet
from promptstep.evaluate import EvalOptions, evaluate, summarize
from promptstep.meta.objectives import MetaExample
from promptstep.meta.trainer import MetaTrainer
from promptstep.runs import json_line


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) for one epoch (the same in a resumed run)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def batches_for(examples: Sequence[MetaExample], batch_size: int, epochs: int, seed: int
                ) -> list[list[MetaExample]]:
    """Full batches, epoch after epoch, in seeded order."""
    out: list[list[MetaExample]] = []
    per_epoch = len(examples) // batch_size
    for epoch in range(epochs):
        order = epoch_order(len(examples), epoch, seed)
        for b in range(per_epoch):
            out.append([examples[i] for i in order[b * batch_size : (b + 1) * batch_size]])
    return out


def eval_summary(trainer: MetaTrainer, triplets: Sequence[Triplet], progress: bool = False) -> dict:
    """NC / Prompt / FT summary with the trainer's inner step as the FT step."""
    opts = trainer.options
    options = EvalOptions(inner=trainer.inner, max_new_tokens=opts.max_new_tokens, fmt=trainer.fmt)
    records = evaluate(trainer.eval_model(), trainer.tokenizer, triplets, options, progress=progress)
    return {"summary": summarize(records), "records": records}


def run_training(trainer: MetaTrainer, batches: Sequence[Sequence[MetaExample]], *, out: Path | None,
                 eval_set: Sequence[Triplet], eval_every: int, checkpoint_every: int,
                 progress: bool = True, inject: Callable | None = None,
                 on_step: Callable[[dict], None] | None = None,
                 on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """Run the remaining outer steps, with logs, periodic evaluation and checkpoints; return the last eval.

    `on_step(log)` sees every step's log row, `on_eval(step, summary)` every periodic evaluation (trackers).
    `wall_s` (and each log row's `elapsed_s`) counts the training time of every segment of a resumed run: a
    checkpoint records the time trained up to it, and training resumes from there."""
    start_step = trainer.step_count
    # LC with cached targets: the teacher's answer distributions of this process's remaining examples go to disk
    # once, and the frozen teacher copy leaves memory before the first step.
    trainer.prepare_targets([e for batch in batches[start_step:] for e in trainer.my_share(batch)], progress)
    log_file = (out / "train_log.jsonl").open("a", encoding="utf-8") if out else None
    last_eval: dict = {}
    began = time.time() - trainer.trained_s
    stopped = None
    try:
        bar = tqdm(range(start_step, len(batches)), desc="meta-train", disable=not progress, unit="step",
                   initial=start_step, total=len(batches))
        for index in bar:
            log = trainer.outer_step(batches[index], inject)
            log["elapsed_s"] = round(time.time() - began, 2)
            bar.set_postfix(loss=f"{log['loss']:.3f}", gnorm=f"{log['grad_norm']:.2f}")
            if log_file:
                log_file.write(json_line(log))
                log_file.flush()
            if on_step:
                on_step(log)
            if trainer.bad_steps >= trainer.options.nan_patience:
                stopped = f"{trainer.bad_steps} non-finite steps in a row at step {trainer.step_count}"
                break
            if log.get("skipped"):
                continue
            done = trainer.step_count == len(batches)
            if eval_set and eval_every and (trainer.step_count % eval_every == 0) and not done:
                try:
                    last_eval = eval_summary(trainer, eval_set)
                except FloatingPointError as err:  # the weights no longer give a finite loss: keep the last checkpoint
                    stopped = f"the evaluation after step {trainer.step_count} diverged ({err})"
                    break
                _log_eval(out, trainer.step_count, last_eval["summary"])
                if on_eval:
                    on_eval(trainer.step_count, last_eval["summary"])
            if checkpoint_every and (trainer.step_count % checkpoint_every == 0 or done):
                stopped = trainer.processes.broadcast(_save(trainer, out, time.time() - began))
                if stopped:
                    break
    finally:
        if log_file:
            log_file.close()
        trainer.trained_s = time.time() - began
    return {"stopped": stopped, "steps": trainer.step_count, "wall_s": round(trainer.trained_s, 1)}


def _save(trainer: MetaTrainer, out: Path | None, trained_s: float) -> str | None:
    """Write `out/checkpoint` (nothing without `out`); why that failed, or None. Weights that are not finite are
    never saved as the last good checkpoint."""
    if out is None:
        return None
    if not trainer.state_finite():
        return f"the weights after step {trainer.step_count} are not finite; they were not checkpointed"
    try:
        trainer.save(out / "checkpoint", {"trained_s": round(trained_s, 3)})
    except OSError as err:  # e.g. a full disk: the previous checkpoint is still whole
        return f"could not write the step-{trainer.step_count} checkpoint ({err})"
    return None


def _log_eval(out: Path | None, step: int, summary: dict) -> None:
    if out is None:
        return
    with (out / "eval_log.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json_line({"step": step, "settings": summary}))
