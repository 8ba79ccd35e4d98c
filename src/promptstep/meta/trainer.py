"""The meta-trainer: one inner step per example (or group), an outer loss through it, accumulated example
by example, clipped Adam."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from promptstep.checkpoints import load_checkpoint, save_checkpoint
from promptstep.data.triplets import Triplet
from promptstep.distributed import Processes
from promptstep.errors import InputError
from promptstep.formats import Format, encode_text, lm_batch, to_device
from promptstep.meta.objectives import OBJECTIVES, MetaExample, answer_logprobs, context_lm_batch
from promptstep.meta.options import MetaOptions
from promptstep.meta.teacher import TeacherTargets, teacher_answers
from promptstep.models import fingerprint as weights_fingerprint
from promptstep.precision import compute_dtype, enable_checkpointing, meta_step_context
from promptstep.runs import require_free_space
from promptstep.updates import lm_loss, select_parameters


def fused_adam(params: dict[str, torch.Tensor]) -> bool | None:
    """Whether Adam runs as torch's fused kernel: one pass over each parameter and its moments, no temporaries
    (about 10x faster than the per-tensor loop on CPU; the same update up to rounding, about 1e-7 relative per
    step). Used wherever the parameters' device has the kernel (CPU, CUDA), else None (torch's default)."""
    return True if all(p.device.type in ("cpu", "cuda") for p in params.values()) else None


class MetaTrainer:
    """Meta-trains `model` so that one inner step on a context acts like the context in the prompt.

    Examples are processed one at a time and their outer gradients accumulated, so peak memory does not grow
    with the batch size. The teacher θ_B (an objective that needs one: LC; the prompt-format regulariser) is a
    frozen copy of the model as it was when training started (kept in bf16 under bf16 precision), or a given
    module; with `teacher_scope` the given module is shared and the scope makes it compute θ_B (LoRA: the
    model itself with its adapter disabled, no copy). With `teacher_targets="cached"` (the default),
    `prepare_targets` computes the teacher's answer distributions of the examples once, stores them on disk
    (`TeacherTargets`) and releases the frozen copy: meta-steps then read the targets and run no teacher forward.
    With several `processes`, each takes its share of every batch.
    """

    def __init__(self, model, tokenizer, options: MetaOptions, fmt: Format | None = None,
                 teacher: torch.nn.Module | None = None, processes: Processes | None = None,
                 teacher_scope: Callable[[], AbstractContextManager] | None = None) -> None:
        options.validate()
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.fmt = fmt or Format()
        self.params = select_parameters(model)
        self.inner = options.inner()
        self.inner_names = list(self.inner.parameters(model))
        self.optimizer = torch.optim.Adam(self.params.values(), lr=options.outer_lr, fused=fused_adam(self.params))
        self.objective = OBJECTIVES[options.objective]
        self.teacher, self.teacher_scope = None, nullcontext
        self.targets: TeacherTargets | None = None  # set by prepare_targets (teacher_targets="cached")
        self._fingerprint: str | None = None
        if self.objective.needs_teacher:
            if teacher is None:
                teacher = copy.deepcopy(model).to(compute_dtype(options.precision))
            if teacher_scope is None:
                teacher.eval().requires_grad_(False)
            self.teacher, self.teacher_scope = teacher, teacher_scope or nullcontext
        if options.grad_checkpointing:
            enable_checkpointing(model)
        self.lm_texts: list[list[int]] = []  # lm_source "text": token ids of the general-text passages (set_lm_texts)
        self.step_count = 0
        self.bad_steps = 0
        self.trained_s = 0.0  # wall time of the steps taken so far, over every resumed segment
        self.device = next(model.parameters()).device
        self.processes = processes or Processes(device=self.device)

    def set_lm_texts(self, texts: Sequence[str]) -> None:
        """The general text of the `lm_source="text"` regulariser: each passage's first `lm_text_tokens` tokens.
        An example always reads the same passage (chosen by a hash of its id), so a resumed run equals an
        uninterrupted one."""
        ids = [encode_text(self.tokenizer, t)[: self.options.lm_text_tokens] for t in texts]
        self.lm_texts = [i for i in ids if len(i) >= 2]
        if not self.lm_texts:
            raise InputError("lm_source text: no passage of the regulariser's text has two tokens")

    def lm_text_for(self, example: MetaExample) -> list[int]:
        """The general-text passage `example` is regularised with."""
        if not self.lm_texts:
            raise InputError("lm_source text needs the regulariser's text (MetaTrainer.set_lm_texts)")
        digest = hashlib.sha256(example.id.encode()).digest()
        return self.lm_texts[int.from_bytes(digest[:8], "big") % len(self.lm_texts)]

    # -------------------------------------------------------------- targets

    def build_examples(self, triplets: Sequence[Triplet], progress: bool = True) -> list[MetaExample]:
        """Tokenised examples whose targets the objective sets (LC: the teacher's greedy answers; LG: gold)."""
        return self.objective.examples(self, triplets, progress)

    def teacher_fingerprint(self) -> str:
        """The hash of the teacher's weights (the base weights alone for an adapter-disabled teacher), computed once:
        the key of the cached teacher answers and targets."""
        if self._fingerprint is None:
            if self.teacher is None:
                raise RuntimeError("the trainer has no teacher (objective without one, or released)")
            with self.teacher_scope():
                self._fingerprint = weights_fingerprint(self.teacher,
                                                        skip_adapters=self.teacher_scope is not nullcontext)[:16]
        return self._fingerprint

    def teacher_answers(self, triplets: Sequence[Triplet], progress: bool = True) -> dict[str, list[int]]:
        """The teacher's greedy answers to context + query, under the training precision (what the KL targets
        see), cached on disk."""
        fingerprint = self.teacher_fingerprint()
        with self.teacher_scope(), meta_step_context(self.teacher, self.options.precision):
            return teacher_answers(self.teacher, self.tokenizer, triplets, self.fmt, self.options.max_new_tokens,
                                   progress=progress, fingerprint=fingerprint)

    def prepare_targets(self, examples: Iterable[MetaExample], progress: bool = True) -> None:
        """With `teacher_targets="cached"`: make sure the teacher's answer log-probabilities of every example are
        on disk (computing the missing ones, one unpadded sequence at a time, exactly as the live teacher would),
        then release the frozen teacher copy. A no-op for objectives without a teacher, for `"live"` targets, and
        once the teacher is released (examples not prepared by then cannot be trained on)."""
        if self.teacher is None or self.options.teacher_targets != "cached":
            return
        if self.targets is None:
            self.targets = TeacherTargets(self.teacher_fingerprint(), self.options.precision)
        wanted = dict.fromkeys((tuple(e.teacher_ids), e.n_answer) for e in examples)
        missing = [key for key in wanted if not self.targets.path(*key).is_file()]
        with meta_step_context(self.teacher, self.options.precision):
            for index, (ids, n_answer) in enumerate(tqdm(missing, desc="teacher targets", unit="ex",
                                                         disable=not progress or not missing)):
                logprobs = self._live_teacher_logprobs(ids, n_answer)
                if index == 0:  # every row is vocab-sized: refuse early if the rest cannot fit on the disk
                    per_token = logprobs[0].numel() * logprobs.element_size()
                    needed = sum(n for _, n in missing) * per_token
                    try:
                        require_free_space(self.targets.dir, needed + (64 << 20))
                    except InputError as err:
                        raise InputError(f"{err} (the teacher's answer distributions; teacher_targets: live "
                                         "computes them at every step instead)") from None
                self.targets.put(ids, n_answer, logprobs)
        self.release_teacher()

    def release_teacher(self) -> None:
        """Drop the frozen teacher copy (kept when the teacher is the model itself, as in LoRA runs)."""
        if self.teacher_scope is nullcontext:
            self.teacher = None

    def teacher_logprobs(self, ids: Sequence[int], n_answer: int) -> torch.Tensor:
        """The teacher's log-probabilities at the positions predicting the last `n_answer` tokens of `ids`: read
        from the prepared targets when they hold them, else computed by the live teacher."""
        if self.targets is not None:
            with record_function("teacher targets (read)"):
                stored = self.targets.get(ids, n_answer)
            if stored is not None:
                return stored.to(self.device)
        if self.teacher is None:
            raise RuntimeError("no prepared teacher targets for this example and the teacher copy was released: "
                               "call prepare_targets with every example before training")
        return self._live_teacher_logprobs(ids, n_answer)

    @torch.no_grad()
    def _live_teacher_logprobs(self, ids: Sequence[int], n_answer: int) -> torch.Tensor:
        with record_function("teacher forward"), self.teacher_scope():
            return answer_logprobs(self.teacher, None, ids, n_answer)

    # -------------------------------------------------------------- losses

    def _student_logprobs(self, adapted, ids, n_answer) -> torch.Tensor:
        with record_function("outer forward"):
            return answer_logprobs(self.model, adapted, ids, n_answer)

    def _target_loss(self, student_logp: torch.Tensor, example: MetaExample) -> torch.Tensor:
        return self.objective.loss(self, student_logp, example)

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
            adapted = self.inner(self.model, start, context, differentiable=True, first_order=opts.first_order)
            target = sum(self._target_loss(self._student_logprobs(adapted, e.student_ids, e.n_answer), e)
                         for e in group)
        parts = {"target": target.item()}
        total = target
        if opts.lm_weight > 0:
            reg = sum(self._regulariser(source, group, context) for source in opts.lm_sources())
            parts["lm"] = reg.item()
            total = total + opts.lm_weight * reg
        return total, parts

    def _regulariser(self, source: str, group: Sequence[MetaExample], context: dict) -> torch.Tensor:
        """L_LM of one source at the pre-update weights, summed over the group: the objective in the Prompt format
        (prompt), or the next-token loss of the contexts (context) or of general-text passages (text)."""
        with record_function("regulariser forward"):
            if source == "prompt":
                logps = [answer_logprobs(self.model, None, e.teacher_ids, e.n_answer) for e in group]
                return sum(self._target_loss(logp, e) for logp, e in zip(logps, group))
            text = context if source == "context" else to_device(
                lm_batch([self.lm_text_for(e) for e in group], self.tokenizer.pad_token_id), self.device)
            return lm_loss(self.model, {}, text) * len(group)

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
            with record_function("backward through the step"):
                (loss / total).backward(inputs=list(self.params.values()))
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value / total
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / total
        return sums

    def my_share(self, batch: Sequence[MetaExample]) -> list[MetaExample]:
        """This process's examples of `batch`: processes share whole groups of `inner_k` examples."""
        k = self.options.inner_k
        mine = self.processes.share([batch[i : i + k] for i in range(0, len(batch), k)])
        return [e for group in mine for e in group]

    def outer_step(self, batch: Sequence[MetaExample], inject: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> dict[str, float]:
        """One clipped Adam step on the mean outer loss of `batch`; a non-finite loss or gradient skips it.

        With several processes, each accumulates its share and the gradients are summed before clipping.
        """
        self.optimizer.zero_grad(set_to_none=True)
        params = list(self.params.values())
        try:
            sums = self.accumulate(self.my_share(batch), inject, total=len(batch))
        except FloatingPointError:  # the inner loss itself was not finite
            sums = {"loss": float("nan")}
        sums = self.processes.reduce(params, sums)
        with record_function("gradient clipping"):
            norm = torch.nn.utils.clip_grad_norm_(params, self.options.clip).item()
        self.step_count += 1
        log = {"step": self.step_count, **sums, "grad_norm": norm}
        if not (math.isfinite(norm) and math.isfinite(sums["loss"])):
            return self._skip(log)
        before = self._snapshot()
        with record_function("Adam"):
            self.optimizer.step()
        if not self.state_finite():  # e.g. a huge outer_lr: the step itself overflowed; undo it
            self._restore(before)
            log["non_finite_weights"] = True
            return self._skip(log)
        self.bad_steps = 0
        return log

    def _skip(self, log: dict) -> dict:
        """Count a bad step (its gradient dropped, the weights as they were) toward `nan_patience`."""
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        log["skipped"] = True
        return log

    def _snapshot(self) -> tuple[list[torch.Tensor], dict]:
        """Copies of the trained weights and Adam's state, which a step that overflows restores bit for bit (the
        price: one more copy of the weights and of Adam's two moments while the step is taken)."""
        weights = [p.detach().clone() for p in self.params.values()]
        state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in entry.items()}
                 for p, entry in self.optimizer.state.items()}
        return weights, state

    def _restore(self, snapshot: tuple[list[torch.Tensor], dict]) -> None:
        weights, state = snapshot
        with torch.no_grad():
            for param, saved in zip(self.params.values(), weights):
                param.copy_(saved)
        self.optimizer.state.clear()
        self.optimizer.state.update(state)

    def state_finite(self) -> bool:
        """Whether every trained weight and every number of Adam's state is finite."""
        tensors = [p.detach() for p in self.params.values()]
        tensors += [v for entry in self.optimizer.state.values() for v in entry.values()
                    if torch.is_tensor(v) and v.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

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
        for group in self.optimizer.param_groups:  # a checkpoint's param_groups carry the implementation it ran
            group["fused"], group["foreach"] = fused_adam(self.params), None
        with torch.no_grad():
            for name, value in weights.items():
                self.params[name].copy_(value)
        self.step_count = int(progress["step"])
        self.trained_s = float(progress.get("trained_s", 0.0))
        return progress
