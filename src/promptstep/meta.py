"""The outer loop: one inner step per example, an outer loss through it, accumulated example by example."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from promptstep.analysis.rules import INNER_RULES
from promptstep.checkpoints import load_checkpoint, save_checkpoint
from promptstep.data.triplets import Triplet
from promptstep.distributed import Processes
from promptstep.errors import InputError
from promptstep.evaluate import EvalOptions, evaluate, greedy_continuations, summarize
from promptstep.formats import Format, encode_text
from promptstep.models import cache_dir
from promptstep.objectives import (
    OBJECTIVES,
    MetaExample,
    answer_logprobs,
    build_example,
    context_lm_batch,
    forward_kl,
    gold_nll,
)
from promptstep.precision import compute_dtype, enable_checkpointing, meta_step_context
from promptstep.updates import inner_step, select_parameters

LM_SOURCES = ("prompt", "context")
LORA_MODES = ("none", "inner", "outer")


@dataclass
class MetaOptions:
    """Hyperparameters of meta-training (the library-level view of the `meta-train` config)."""

    objective: str = "lc"
    inner_lr: float = 1e-3
    inner_steps: int = 1
    inner_params: str | None = None
    inner_rule: str = "sgd"
    first_order: bool = False
    outer_lr: float = 1e-5
    batch_size: int = 16
    clip: float = 1.0
    lm_weight: float = 0.0
    lm_source: str = "prompt"
    max_new_tokens: int = 16
    nan_patience: int = 3
    inner_k: int = 1  # contexts per inner step; the outer batch splits into batch_size / inner_k groups
    lora: str = "none"  # none | inner: a LoRA adapter is meta-learned and is what the inner step updates |
    # outer: a rank-r LoRA update of the weights is meta-learned, the inner step is full rank on the merged weights
    lora_rank: int | None = None  # default 8 for lora=inner, 1 for lora=outer (the paper's rank-1 outer update)
    lora_alpha: float | None = None  # default = lora_rank (scaling 1)
    lora_targets: str = "all-linear"  # PEFT target_modules: 'all-linear' or comma-separated module names
    precision: str = "fp32"
    grad_checkpointing: bool = False

    def validate(self) -> None:
        compute_dtype(self.precision)
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective '{self.objective}' (choose from {', '.join(OBJECTIVES)})")
        if self.inner_rule not in INNER_RULES:
            raise InputError(f"unknown inner_rule '{self.inner_rule}' (choose from {', '.join(INNER_RULES)})")
        if self.lm_source not in LM_SOURCES:
            raise InputError(f"unknown lm_source '{self.lm_source}' (choose from {', '.join(LM_SOURCES)})")
        if self.lora not in LORA_MODES:
            raise InputError(f"unknown lora '{self.lora}' (choose from {', '.join(LORA_MODES)})")
        for key in ("lora_rank", "lora_alpha"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.inner_k < 1 or self.batch_size % self.inner_k:
            raise InputError(f"inner_k must be >= 1 and divide batch_size (got inner_k={self.inner_k}, "
                             f"batch_size={self.batch_size})")
        for key in ("outer_lr", "clip", "batch_size", "inner_steps", "max_new_tokens", "nan_patience"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        for key in ("inner_lr", "lm_weight"):
            if getattr(self, key) < 0:
                raise InputError(f"config key '{key}' must be >= 0, got {getattr(self, key)}")


STOP_RULE = "newline-after-text"  # part of the teacher-answer cache key: where greedy answers end


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: identifies the weights a cache entry was computed with."""
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_answers(teacher, tokenizer, triplets: Sequence[Triplet], fmt: Format, max_new_tokens: int,
                    batch_size: int = 16, progress: bool = True) -> dict[str, list[int]]:
    """The teacher's greedy answer ids to context + query for every triplet, cached on disk per model and data."""
    key_src = json.dumps([model_fingerprint(teacher), fmt.separator, fmt.answer_prefix, max_new_tokens, STOP_RULE,
                          [(t.id, t.context, t.query) for t in triplets]])
    path = cache_dir() / "teacher" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    answers: dict[str, list[int]] = {}
    chunks = range(0, len(triplets), batch_size)
    for start in tqdm(chunks, desc="teacher answers", disable=not progress, unit="batch"):
        part = triplets[start : start + batch_size]
        prefixes = [encode_text(tokenizer, fmt.prefix(t, "prompt")) for t in part]
        for triplet, ids in zip(part, greedy_continuations(teacher, tokenizer, prefixes, max_new_tokens)):
            answers[triplet.id] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # runs (or processes) filling the same entry write apart
    tmp.write_text(json.dumps(answers), encoding="utf-8")
    tmp.replace(path)
    return answers


class MetaTrainer:
    """Meta-trains `model` so that one inner step on a context acts like the context in the prompt.

    Examples are processed one at a time and their outer gradients accumulated, so peak memory does not grow
    with the batch size. The teacher (LC) is a frozen copy of the model as it was when training started (kept
    in bf16 under bf16 precision). With several `processes`, each takes its share of every batch.
    """

    def __init__(self, model, tokenizer, options: MetaOptions, fmt: Format | None = None,
                 teacher: torch.nn.Module | None = None, processes: Processes | None = None) -> None:
        options.validate()
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.fmt = fmt or Format()
        self.params = select_parameters(model)
        self.inner_names = list(select_parameters(model, options.inner_params))
        self.optimizer = torch.optim.Adam(self.params.values(), lr=options.outer_lr)
        needs_teacher = options.objective == "lc"
        if needs_teacher and teacher is None:
            teacher = copy.deepcopy(model).to(compute_dtype(options.precision))
        self.teacher = teacher.eval().requires_grad_(False) if needs_teacher else None
        if options.grad_checkpointing:
            enable_checkpointing(model)
        self.step_count = 0
        self.bad_steps = 0
        self.device = next(model.parameters()).device
        self.processes = processes or Processes(device=self.device)

    # -------------------------------------------------------------- targets

    def build_examples(self, triplets: Sequence[Triplet], progress: bool = True) -> list[MetaExample]:
        """Tokenised examples whose targets are the teacher's greedy answers (LC) or the gold answers (LG)."""
        if self.options.objective == "lg":
            return [build_example(self.tokenizer, t, self.fmt) for t in triplets]
        with meta_step_context(self.teacher, self.options.precision):  # the precision the KL targets see
            answers = teacher_answers(self.teacher, self.tokenizer, triplets, self.fmt, self.options.max_new_tokens,
                                      progress=progress)
        return [build_example(self.tokenizer, t, self.fmt, answers[t.id]) for t in triplets if answers[t.id]]

    # -------------------------------------------------------------- losses

    def _target_loss(self, student_logp: torch.Tensor, example: MetaExample) -> torch.Tensor:
        if self.options.objective == "lg":
            return gold_nll(student_logp, example.answer_ids)
        with torch.no_grad():
            teacher_logp = answer_logprobs(self.teacher, None, example.teacher_ids, example.n_answer)
        return forward_kl(teacher_logp, student_logp)

    def inner_start(self) -> dict[str, torch.Tensor]:
        """The parameters the inner step starts from, as a differentiable function of the trained ones."""
        return {name: self.params[name] for name in self.inner_names}

    def inner_scope(self) -> AbstractContextManager:
        """The context in which the model runs with the inner step's parameters substituted."""
        return nullcontext()

    def eval_model(self) -> torch.nn.Module:
        """The model that evaluation runs (FT steps on its trainable parameters matching `inner_params`)."""
        return self.model

    def export(self, out: Path) -> Path:
        """Save the meta-trained model (a PEFT adapter for lora=inner) and tokenizer to `out/model`."""
        self.model.save_pretrained(out / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "model")
        return out / "model"

    def group_loss(self, group: Sequence[MetaExample]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed outer loss of a group: one inner step on all its contexts together (mean token loss), each
        example's target loss after it, plus lambda * L_LM before it."""
        with meta_step_context(self.model, self.options.precision, self.options.grad_checkpointing):
            return self._group_loss(group)

    def _group_loss(self, group: Sequence[MetaExample]) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.options
        context = context_lm_batch(self.tokenizer, group, self.device)
        start = self.inner_start()  # before the scope: PEFT's disable_adapter() also stops the adapter's grads
        with self.inner_scope():
            adapted = inner_step(self.model, start, context, lr=opts.inner_lr, steps=opts.inner_steps,
                                 first_order=opts.first_order, differentiable=True,
                                 gradients=INNER_RULES[opts.inner_rule])
            target = sum(self._target_loss(answer_logprobs(self.model, adapted, e.student_ids, e.n_answer), e)
                         for e in group)
        parts = {"target": target.item()}
        total = target
        if opts.lm_weight > 0:
            if opts.lm_source == "context":
                reg = self.model(**context, use_cache=False).loss * len(group)
            else:
                reg = sum(self._target_loss(answer_logprobs(self.model, None, e.teacher_ids, e.n_answer), e)
                          for e in group)
            parts["lm"] = reg.item()
            total = total + opts.lm_weight * reg
        return total, parts

    def example_loss(self, example: MetaExample) -> tuple[torch.Tensor, dict[str, float]]:
        """Outer loss of one example: target loss after the inner step on its context, plus lambda * L_LM."""
        return self.group_loss([example])

    # -------------------------------------------------------------- outer step

    def accumulate(self, batch: Sequence[MetaExample], inject: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   total: int | None = None) -> dict[str, float]:
        """Add the gradient of the mean outer loss of `batch` into `.grad`, one group of `inner_k` examples at once.

        `total` is the size of the whole batch when `batch` is one process's share of it (the mean is over all).
        """
        total = total or len(batch)
        sums: dict[str, float] = {}
        k = self.options.inner_k
        for start in range(0, len(batch), k):
            loss, parts = self.group_loss(batch[start : start + k])
            if inject is not None:
                loss = inject(loss)
            (loss / total).backward(inputs=list(self.params.values()))
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value / total
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / total
        return sums

    def outer_step(self, batch: Sequence[MetaExample], inject: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> dict[str, float]:
        """One clipped Adam step on the mean outer loss of `batch`; a non-finite loss or gradient skips it.

        With several processes, each accumulates its share and the gradients are summed before clipping.
        """
        self.optimizer.zero_grad(set_to_none=True)
        params = list(self.params.values())
        try:
            k = self.options.inner_k  # processes share whole groups of inner_k examples
            mine = self.processes.share([batch[i : i + k] for i in range(0, len(batch), k)])
            sums = self.accumulate([e for group in mine for e in group], inject, total=len(batch))
        except FloatingPointError:  # the inner loss itself was not finite
            sums = {"loss": float("nan")}
        sums = self.processes.reduce(params, sums)
        norm = torch.nn.utils.clip_grad_norm_(params, self.options.clip).item()
        self.step_count += 1
        log = {"step": self.step_count, **sums, "grad_norm": norm}
        if not (math.isfinite(norm) and math.isfinite(sums["loss"])):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            log["skipped"] = True
            return log
        self.bad_steps = 0
        self.optimizer.step()
        return log

    # -------------------------------------------------------------- state

    def state_weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    def save(self, path: Path, extra: dict | None = None) -> None:
        save_checkpoint(path, self.state_weights(), self.optimizer, {"step": self.step_count, **(extra or {})})

    def restore(self, path: Path) -> dict:
        """Load weights, optimizer, RNG and step count from a checkpoint; return its progress record."""

        def check(weights: dict[str, torch.Tensor]) -> None:
            if set(weights) != set(self.params):
                raise InputError(f"{path}: checkpoint parameters do not match the model (different model?)")
            for name, value in weights.items():
                if value.shape != self.params[name].shape:
                    raise InputError(f"{path}: parameter {name} has shape {tuple(value.shape)}, model has "
                                     f"{tuple(self.params[name].shape)} (different model?)")

        weights, progress = load_checkpoint(path, self.optimizer, check)
        with torch.no_grad():
            for name, value in weights.items():
                self.params[name].copy_(value)
        self.step_count = int(progress["step"])
        return progress


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
    options = EvalOptions(lrs=(opts.inner_lr,), steps=opts.inner_steps, param_filter=opts.inner_params,
                          max_new_tokens=opts.max_new_tokens, fmt=trainer.fmt,
                          gradients=INNER_RULES[opts.inner_rule])
    records = evaluate(trainer.eval_model(), trainer.tokenizer, triplets, options, progress=progress)
    return {"summary": summarize(records), "records": records}


def run_training(trainer: MetaTrainer, batches: Sequence[Sequence[MetaExample]], *, out: Path | None,
                 eval_set: Sequence[Triplet], eval_every: int, checkpoint_every: int,
                 progress: bool = True, inject: Callable | None = None,
                 on_step: Callable[[dict], None] | None = None) -> dict:
    """Run the remaining outer steps, with logs, periodic evaluation and checkpoints; return the last eval."""
    start_step = trainer.step_count
    log_file = (out / "train_log.jsonl").open("a", encoding="utf-8") if out else None
    last_eval: dict = {}
    began = time.time()
    stopped = None
    try:
        bar = tqdm(range(start_step, len(batches)), desc="meta-train", disable=not progress, unit="step",
                   initial=start_step, total=len(batches))
        for index in bar:
            log = trainer.outer_step(batches[index], inject)
            log["elapsed_s"] = round(time.time() - began, 2)
            bar.set_postfix(loss=f"{log['loss']:.3f}", gnorm=f"{log['grad_norm']:.2f}")
            if log_file:
                log_file.write(json.dumps(log) + "\n")
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
                last_eval = eval_summary(trainer, eval_set)
                _log_eval(out, trainer.step_count, last_eval["summary"])
            if checkpoint_every and (trainer.step_count % checkpoint_every == 0 or done):
                stopped = trainer.processes.broadcast(_save(trainer, out))
                if stopped:
                    break
    finally:
        if log_file:
            log_file.close()
    return {"stopped": stopped, "steps": trainer.step_count, "wall_s": round(time.time() - began, 1)}


def _save(trainer: MetaTrainer, out: Path | None) -> str | None:
    """Write `out/checkpoint` (nothing without `out`); why that failed, or None."""
    if out is None:
        return None
    try:
        trainer.save(out / "checkpoint")
    except OSError as err:  # e.g. a full disk: the previous checkpoint is still whole
        return f"could not write the step-{trainer.step_count} checkpoint ({err})"
    return None


def _log_eval(out: Path | None, step: int, summary: dict) -> None:
    if out is None:
        return
    with (out / "eval_log.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "settings": summary}) + "\n")
