"""Knowledge injection: documents -> the model's inner step on each chunk -> an exact, compact stored update.

Each document is split into chunks (default 512 tokens, or the model's window if smaller); each chunk gets the
model's `updates.InnerStep` (the rule, η, steps and parameter subset of FT evaluation and meta-training; for a
meta-trained model, by default the step it was meta-trained for), in one of two modes:

* `sequential`: every chunk steps from the weights left by the previous one (the paper's multi-context setting);
* `sum`: every chunk steps from the base weights, and the chunks' changes are added.

While the inner step takes its gradient, forward hooks record each nn.Linear / GPT-2 Conv1D / nn.Embedding input x
and tensor hooks on the outputs record δ, so one step's change -η Σ_t δ_t x_tᵀ is kept as factors (see
`adapters`); tokens whose δ is exactly zero (the last one: it predicts nothing) are dropped. Each gradient call's
factors are checked against the rule's own gradient (on random probe vectors); where they do not reproduce it
(e.g. Layer-Causal GD, whose logit lens runs the head without training it, a masked parameter subset, or a module
the hooks cannot read), that parameter's dense gradient step is kept instead. Ranks add over steps and chunks; a
matrix whose factors would cost at least as much as the matrix itself is kept dense.

A model that carries a PEFT adapter (a LoRA-inner meta-trained model, whose inner step moves only the adapter) is
injected by stepping the adapter; its update is the stepped adapter itself, stored as a PEFT adapter.

`save_injection` writes an injected directory: `update/` (all documents together), optionally `documents/NNNN-ID/`
(each document's own update; they combine exactly) and `merged/` (the updated model, transformers alone loads it),
`documents.jsonl` (the documents' text, for `ask --compare`) and `manifest.json` (base model, inner step and where
it came from, per-document chunks / tokens / seconds / stored bytes). `models.load_model(DIR)` and
`models.load_injected` load it back exactly.

Memory: capturing a chunk of T tokens keeps every linear layer's input and output gradient for T tokens (the head's
is T × vocabulary), which is why chunks default to 512 tokens rather than the whole window (SmolLM2's 8,192 tokens
would need ≈ 1.6 GB for the head alone).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from promptstep.adapters import ParamDelta, Update, coalesce, parameter_roles, sum_updates
from promptstep.documents import INJECTION_MODES, Document, Question
from promptstep.errors import InputError
from promptstep.formats import Format, encode_pair, encode_text, lm_batch, pad_batch, to_device
from promptstep.updates import GradientFn, InnerStep, ParamDict, inner_step

MODES = INJECTION_MODES
DEFAULT_CHUNK_TOKENS = 512
INNER_KEYS = {"lr": "inner_lr", "steps": "inner_steps", "params": "inner_params", "rule": "inner_rule"}
DOCUMENTS_DIR = "documents"
MERGED_DIR = "merged"
DOCUMENTS_FILE = "documents.jsonl"


# ----------------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InjectOptions:
    """How documents become weights.

    inner: the inner step (`updates.InnerStep`: lr, steps, parameter subset, rule) taken on each chunk.
    mode: `sequential` or `sum` (see the module docstring).
    chunk_tokens: the chunk size in tokens (None = 512, or the model's window if smaller); chunking=False refuses a
    document longer than one chunk instead of splitting it.
    max_rank: truncate each stored low-rank matrix change to this rank (SVD of the exact factors; the relative
    Frobenius error per parameter is reported); None keeps it exact.
    """

    inner: InnerStep = field(default_factory=InnerStep)
    mode: str = "sequential"
    chunk_tokens: int | None = None
    chunking: bool = True
    max_rank: int | None = None

    def validate(self) -> None:
        from promptstep.rules import check_rule

        if self.mode not in MODES:
            raise InputError(f"unknown injection mode '{self.mode}' (choose from {', '.join(MODES)})")
        check_rule(self.inner.rule)
        lr, steps = self.inner.lr, self.inner.steps
        if not (lr >= 0 and math.isfinite(lr)) or steps < 1:
            raise InputError(f"inner step needs a finite lr >= 0 and steps >= 1 (got lr={lr}, steps={steps})")
        if self.chunk_tokens is not None and self.chunk_tokens < 2:
            raise InputError(f"chunk_tokens must be at least 2 (a next-token loss needs two tokens), got "
                             f"{self.chunk_tokens}")
        if self.max_rank is not None and self.max_rank < 1:
            raise InputError(f"max_rank must be at least 1 (or None for the exact update), got {self.max_rank}")


def meta_run_config(spec: str) -> tuple[Path, dict] | None:
    """(path, content) of the config.yaml of the meta-train run whose `model/` directory `spec` is, else None."""
    from promptstep.config import read_yaml

    path = Path(spec).expanduser()
    config = path.parent / "config.yaml"
    if not path.is_dir() or not config.is_file() or not (path.parent / "summary.json").is_file():
        return None
    content = read_yaml(config)
    return (config, content) if all(key in content for key in INNER_KEYS.values()) else None


def resolve_inner_step(spec: str, lr: float | None = None, steps: int | None = None, params: str | None = None,
                       rule: str | None = None) -> tuple[InnerStep, dict]:
    """The inner step to inject with into model `spec`, and where it came from.

    When `spec` is a meta-train run's `model/` directory, the step it was meta-trained for (inner_lr, inner_steps,
    inner_params, inner_rule of `../config.yaml`); else `InnerStep()`'s defaults. Any of lr / steps / params / rule
    given (not None) overrides it ('all' for params: every trainable parameter).
    """
    run = meta_run_config(spec)
    default = InnerStep()
    values = {key: getattr(default, key) for key in INNER_KEYS}
    source = "promptstep defaults (InnerStep)"
    if run is not None:
        path, content = run
        values = {key: content[name] for key, name in INNER_KEYS.items()}
        source = f"meta-train run config {path.resolve()} (inner_lr, inner_steps, inner_params, inner_rule)"
    given = {"lr": lr, "steps": steps, "params": params, "rule": rule}
    overridden = sorted(key for key, value in given.items() if value is not None)
    values.update({key: value for key, value in given.items() if value is not None})
    if values["params"] == "all":
        values["params"] = None
    step = InnerStep(lr=float(values["lr"]), steps=int(values["steps"]), params=values["params"],
                     rule=str(values["rule"]))
    return step, {"source": source, "overridden": overridden}


# ---------------------------------------------------------------------------------------------------------- chunking




@dataclass(frozen=True)
class Chunk:
    """One window-sized piece of a document: its text and the token ids the inner step trains on."""

    document: str
    index: int
    text: str
    ids: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.ids)


_BOUNDARIES = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"(?<=[.!?;:])\s+"), re.compile(r"\s+"))


def chunk_size(model: torch.nn.Module, tokenizer, requested: int | None = None) -> int:
    """The chunk size in tokens: `requested`, or DEFAULT_CHUNK_TOKENS capped at the model's window
    (`models.max_length`); a request above the window is an InputError."""
    from promptstep.models import max_length

    window = max_length(model, tokenizer)
    if requested is None:
        return min(DEFAULT_CHUNK_TOKENS, window)
    if requested < 2:
        raise InputError(f"chunk size must be at least 2 tokens, got {requested}")
    if requested > window:
        raise InputError(f"chunk size {requested} is over the model's window of {window} tokens")
    return requested


def _pieces(text: str, boundary: re.Pattern) -> list[str]:
    """`text` cut after each match of `boundary` (the separator stays with the piece before it)."""
    pieces, start = [], 0
    for match in boundary.finditer(text):
        if match.end() > start and match.start() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def split_document(tokenizer, document: Document, size: int, chunking: bool = True) -> list[Chunk]:
    """The chunks of `document`, each at most `size` tokens as `formats.encode_text` counts them.

    A document that fits is one chunk. A longer one is cut on paragraph boundaries, then sentence ends, then
    whitespace, and only a single over-long word by tokens, and the pieces are packed greedily into chunks (a
    left-over piece of one token, which predicts nothing, is dropped). With `chunking=False` a longer document is an
    InputError naming it and its token count.
    """
    ids = encode_text(tokenizer, document.text)
    if len(ids) < 2:
        raise InputError(f"document '{document.id}' ({document.source}) is {len(ids)} token long; a next-token loss "
                         "needs at least 2")
    if len(ids) <= size:
        return [Chunk(document.id, 0, document.text, tuple(ids))]
    if not chunking:
        raise InputError(f"document '{document.id}' ({document.source}) is {len(ids)} tokens, longer than one chunk "
                         f"of {size} tokens (allow chunking, or raise the chunk size up to the model's window)")

    def bare(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    extra = len(encode_text(tokenizer, "a")) - bare("a")  # special tokens the tokenizer adds to every text

    def units(text: str, level: int) -> Iterator[str | None]:
        """Pieces of at most `size` tokens; None marks where a sentence cut into words begins and ends (its words
        are packed apart from the neighbouring sentences)."""
        if bare(text) + extra <= size:
            yield text
        elif level < len(_BOUNDARIES):
            fragments = level == len(_BOUNDARIES) - 1
            if fragments:
                yield None
            for piece in _pieces(text, _BOUNDARIES[level]):
                yield from units(piece, level + 1)
            if fragments:
                yield None
        else:  # one word longer than a chunk: windows of tokens
            word = tokenizer(text, add_special_tokens=False).input_ids
            step = max(1, size - extra)
            for start in range(0, len(word), step):
                yield tokenizer.decode(word[start:start + step])

    texts, current, estimate = [], "", extra
    for unit in units(document.text, 0):
        if unit is None:
            if current.strip():
                texts.append(current)
            current, estimate = "", extra
            continue
        count = bare(unit)
        if current and estimate + count > size:
            exact = len(encode_text(tokenizer, (current + unit).strip()))
            if exact > size:
                texts.append(current)
                current, estimate = unit, extra + count
                continue
            estimate = exact - count
        current += unit
        estimate += count
    texts.append(current)

    chunks: list[Chunk] = []
    for text in (t.strip() for t in texts):
        chunk_ids = encode_text(tokenizer, text) if text else []
        for start in range(0, len(chunk_ids), size):  # a safety net: re-encoding never lets a chunk exceed `size`
            part = chunk_ids[start:start + size]
            if len(part) < 2:  # one token predicts nothing: no loss, no change
                continue
            piece = text if len(chunk_ids) <= size else tokenizer.decode(part, skip_special_tokens=True)
            chunks.append(Chunk(document.id, len(chunks), piece, tuple(part)))
    return chunks



# ---------------------------------------------------------------------------------------------------------- capture


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


class _Capture:
    """Records each linear/embedding module's inputs and output gradients while a rule takes its gradient, and
    turns one gradient call into the exact change -lr * grad of every parameter (factored where it can)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        self.model = model
        wanted = set(names)
        self.roles = {n: r for n, r in parameter_roles(model).items() if n in wanted}
        self.modules = {m: (name, kind) for name, roles in self.roles.items() for m, kind in roles}
        self.calls: dict[str, list[list]] = {}
        self.update = Update()
        self.fallbacks: set[str] = set()

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        self.calls = {name: [] for name in self.roles}

        def hook_for(param: str, kind: str) -> Callable:
            def hook(_module, args, kwargs, output):
                x = args[0] if args else next(iter(kwargs.values()))
                if not isinstance(output, torch.Tensor) or not output.requires_grad:
                    return
                entry = [kind, x.detach(), None]
                self.calls[param].append(entry)
                output.register_hook(lambda grad: entry.__setitem__(2, grad.detach()))
            return hook

        handles = [self.model.get_submodule(m).register_forward_hook(hook_for(*self.modules[m]), with_kwargs=True)
                   for m in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def wrap(self, rule: GradientFn, lr: float) -> GradientFn:
        """`rule` with its every call's change (-lr * gradient) added to `self.update`."""

        def gradients(model, params, batch, create_graph):
            with self._hooks():
                grads = rule(model, params, batch, create_graph)
            step = Update()
            for name, grad in grads.items():
                target = -lr * grad.detach()
                if not target.any():
                    continue
                delta = self._factored(name, target, lr) if name in self.roles else None
                if delta is None:
                    if name in self.roles:
                        self.fallbacks.add(name)
                    delta = ParamDelta(tuple(target.shape), dense=target)
                step[name] = delta.folded()
            self.calls = {}
            self.update = self.update + step
            return grads

        return gradients

    def _factored(self, name: str, target: torch.Tensor, lr: float) -> ParamDelta | None:
        """The change `target` (= -lr * gradient) as factors / rows, or None where they do not reproduce it."""
        calls = [(kind, x, d.reshape(-1, d.shape[-1])) for kind, x, d in self.calls[name] if d is not None]
        keeps = [d.ne(0).any(dim=1) if kind != "embedding" else None for kind, _, d in calls]
        rank = sum(int(keep.sum()) for keep in keeps if keep is not None)
        if target.dim() == 2 and rank * sum(target.shape) >= target.numel():  # the dense form is no larger
            return ParamDelta(tuple(target.shape), dense=target)
        delta = ParamDelta(tuple(target.shape))
        for (kind, x, d), keep in zip(calls, keeps):
            if kind == "embedding":
                part = ParamDelta(delta.shape, index=x.reshape(-1), rows=-lr * d)
                part.index, part.rows = coalesce(part.index, part.rows)
            else:
                x = x.reshape(-1, x.shape[-1])
                x, d = x[keep], -lr * d[keep]
                if kind == "linear":  # weight [out, in] changes by dᵀ x
                    part = ParamDelta(delta.shape, B=d.T.contiguous(), A=x.contiguous())
                else:  # Conv1D weight [in, out] changes by xᵀ d
                    part = ParamDelta(delta.shape, B=x.T.contiguous(), A=d.contiguous())
            delta = delta + part
        # checked on random probes (a Gaussian vector is almost surely not orthogonal to a nonzero difference), which
        # costs one pass over the gradient instead of forming the change densely
        generator = torch.Generator(device=target.device).manual_seed(0)
        probe = torch.randn(target.shape[-1], 2, generator=generator, device=target.device)
        want = target.float() @ probe
        if not (delta.times(probe) - want).norm() <= _tolerance(target.dtype) * want.norm():
            return None
        return delta


# ---------------------------------------------------------------------------------------------------------- inject


@dataclass


# ---------------------------------------------------------------------------------------------------------- inject


@dataclass
class DocumentUpdate:
    """One document's chunks and the change its chunks made (in sequential mode: given the documents before it)."""

    document: Document
    chunks: list[Chunk]
    update: Update
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)


@dataclass
class Injection:
    """The result of `inject`: per-document updates and the settings; `adapter` when the update is a LoRA-inner
    model's stepped adapter; `stepped` (only if asked for) the stepped parameters in memory: the inner steps' own
    output in sequential mode, base + the sum of the chunks' changes in sum mode."""

    options: InjectOptions
    chunk_tokens: int
    base_fingerprint: str
    documents: list[DocumentUpdate]
    stepped: ParamDict | None = field(default=None, repr=False)
    fallbacks: list[str] = field(default_factory=list)
    adapter: bool = False

    @property
    def total(self) -> Update:
        return sum_updates([d.update for d in self.documents])


def carries_adapter(model: torch.nn.Module) -> bool:
    """Whether `model` carries a PEFT adapter (a LoRA-inner model: injection steps the adapter)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


class Injector:
    """Documents stepped on one at a time (`add`), so a caller can answer after each; the model is left unchanged.

    `current` holds the stepped values of the inner step's parameters so far (one copy of them): in sequential mode
    the last step's output, in sum mode base + the sum of every chunk's change. Answer with them through
    `updates.swapped_parameters(model, injector.current)`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, options: InjectOptions = InjectOptions()) -> None:
        from promptstep.models import fingerprint

        options.validate()
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.adapter = carries_adapter(model)
        self.size = chunk_size(model, tokenizer, options.chunk_tokens)
        self.fingerprint = fingerprint(model)
        params = options.inner.parameters(model)
        if not params:
            raise InputError("the inner step updates no parameter of the model (none is trainable)")
        self.base: ParamDict = {name: p.detach() for name, p in params.items()}
        self.current: ParamDict = dict(self.base)
        rule = options.inner.gradients(model)
        self.capture = None if self.adapter else _Capture(model, list(params))
        self.gradients = rule if self.capture is None else self.capture.wrap(rule, options.inner.lr)
        self.device = next(model.parameters()).device
        self.documents: list[DocumentUpdate] = []

    def split(self, document: Document) -> list[Chunk]:
        """The document's chunks (InputError if it is too short, or too long without chunking)."""
        return split_document(self.tokenizer, document, self.size, self.options.chunking)

    def add(self, document: Document, chunks: Sequence[Chunk] | None = None) -> DocumentUpdate:
        """Step on every chunk of `document`; return its update (also appended to `documents`)."""
        chunks = list(chunks) if chunks is not None else self.split(document)
        started = time.perf_counter()
        before = self.current
        if self.capture is not None:
            self.capture.update = Update()
        inner = self.options.inner
        for chunk in chunks:
            batch = to_device(lm_batch([list(chunk.ids)], self.tokenizer.pad_token_id), self.device)
            start = self.current if self.options.mode == "sequential" else self.base
            stepped = inner_step(self.model, start, batch, lr=inner.lr, steps=inner.steps, differentiable=False,
                                 gradients=self.gradients)
            if self.options.mode == "sequential":
                self.current = stepped
            else:
                self.current = {name: self.current[name] + (value - self.base[name]) for name, value in stepped.items()}
        if self.capture is not None:
            update = self.capture.update
        else:  # the adapter's change: dense (an adapter is small)
            update = Update({name: ParamDelta(tuple(value.shape), dense=value - before[name])
                             for name, value in self.current.items() if not torch.equal(value, before[name])})
        result = DocumentUpdate(document, chunks, update, time.perf_counter() - started)
        self.documents.append(result)
        return result

    def injection(self, keep_stepped: bool = False) -> Injection:
        fallbacks = sorted(self.capture.fallbacks) if self.capture is not None else []
        return Injection(options=self.options, chunk_tokens=self.size, base_fingerprint=self.fingerprint,
                         documents=list(self.documents), stepped=dict(self.current) if keep_stepped else None,
                         fallbacks=fallbacks, adapter=self.adapter)


def inject(model: torch.nn.Module, tokenizer, documents: Sequence[Document], options: InjectOptions = InjectOptions(),
           *, progress: bool = False, keep_stepped: bool = False) -> Injection:
    """Every document's chunks stepped on with the options' inner step; the model itself is left unchanged.

    All documents are chunked (and checked) before any step is taken. `keep_stepped` keeps the stepped parameters
    in the result (a full copy of them; for checks), else only the compact per-document updates are kept.
    """
    from tqdm.auto import tqdm

    if not documents:
        raise InputError("no documents to inject")
    injector = Injector(model, tokenizer, options)
    chunked = [(document, injector.split(document)) for document in documents]
    bar = tqdm(chunked, desc="inject", unit="doc", disable=not progress)
    for document, chunks in bar:
        result = injector.add(document, chunks)
        bar.set_postfix(tokens=result.tokens, chunks=len(chunks), s=f"{result.seconds:.2f}")
    return injector.injection(keep_stepped)


# ---------------------------------------------------------------------------------------------------------- storage


def _slug(index: int, doc_id: str) -> str:
    return f"{index:04d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id).strip("._") or "doc")[:60]


def adapter_values(model: torch.nn.Module, update: Update) -> ParamDict:
    """A LoRA-inner model's adapter parameters with `update` added (the stepped adapter)."""
    named = dict(model.named_parameters())
    return {name: named[name].detach() + delta.to_dense().to(named[name].dtype) for name, delta in update.items()}


def _save_update(directory: Path, injection: Injection, update: Update, model: torch.nn.Module, base: dict,
                 documents: Sequence[str]) -> dict:
    from promptstep.adapters import save_adapter_update, save_update

    if injection.adapter:
        return save_adapter_update(directory, model, adapter_values(model, update), base=base, documents=documents)
    return save_update(directory, update, model, base=base, max_rank=injection.options.max_rank, documents=documents)


def document_stored_bytes(update: Update, model: torch.nn.Module, adapter: bool = False,
                          max_rank: int | None = None) -> int:
    """Bytes of the tensors a document's own update directory would hold (computed, not written): the compact
    update, or for a LoRA-inner model (`adapter`) the whole stepped adapter."""
    from promptstep.adapters import adapter_state, stored_bytes

    if adapter:
        return sum(t.numel() * t.element_size() for t in adapter_state(model).values())
    return stored_bytes(update, model, max_rank)


def save_injection(out: str | Path, injection: Injection, model: torch.nn.Module, tokenizer=None, *,
                   per_document: bool = False, merged: bool = False, model_spec: str | None = None,
                   overwrite: bool = False, inner_source: dict | None = None) -> dict:
    """Write an injected directory (staged; published whole or not at all) and return its manifest.

    `out/update/` holds all documents' update together; with `per_document`, `out/documents/NNNN-ID/` holds each
    document's own (they combine exactly in `models.load_injected`); with `merged`, `out/merged/` holds the updated
    model itself (`save_pretrained`, with the tokenizer), loadable by transformers alone (not for LoRA-inner models:
    their update is an adapter). `model` must be the base model `inject` stepped from (checked by fingerprint);
    `model_spec` is how to load it again (default: its name_or_path); `inner_source` says where the inner step came
    from (`resolve_inner_step`).
    """
    from promptstep.adapters import MANIFEST, UPDATE_DIR, base_info
    from promptstep.models import fingerprint
    from promptstep.runs import staged_dir, write_json, write_jsonl

    if merged and injection.adapter:
        raise InputError("the merged form is not available for a model that carries a PEFT adapter (LoRA-inner): "
                         "its update is the stepped adapter, stored as a PEFT adapter in update/")
    if fingerprint(model) != injection.base_fingerprint:
        raise InputError("the model given to save_injection is not the base model the documents were injected into")
    base = base_info(model, model_spec, injection.base_fingerprint)
    started = time.perf_counter()
    with staged_dir(Path(out), overwrite) as stage:
        total = _save_update(stage / UPDATE_DIR, injection, injection.total, model, base,
                             [d.document.id for d in injection.documents])
        rows = []
        for number, result in enumerate(injection.documents):
            row = {"id": result.document.id, "source": result.document.source, "chunks": len(result.chunks),
                   "chunk_tokens": [c.tokens for c in result.chunks], "tokens": result.tokens,
                   "seconds": round(result.seconds, 4), "captured_bytes": result.update.nbytes}
            if per_document:
                sub = f"{DOCUMENTS_DIR}/{_slug(number, result.document.id)}"
                info = _save_update(stage / sub, injection, result.update, model, base, [result.document.id])
                row.update(directory=sub, stored_bytes=info["stored_bytes"])
            else:
                row["stored_bytes"] = document_stored_bytes(result.update, model, injection.adapter,
                                                            injection.options.max_rank)
            rows.append(row)
        merged_bytes = None
        if merged:
            merged_bytes = _save_merged(stage / MERGED_DIR, model, tokenizer, injection.total)
        write_jsonl(stage / DOCUMENTS_FILE, [{"id": d.document.id, "text": d.document.text, "source": d.document.source}
                                             for d in injection.documents])
        inner = injection.options.inner
        manifest = {
            "format": total["format"],
            "kind": total["kind"],
            "base": base,
            "mode": injection.options.mode,
            "inner_step": {"lr": inner.lr, "steps": inner.steps, "params": inner.params, "rule": inner.rule,
                           **(inner_source or {"source": "given by the caller"})},
            "chunk_tokens": injection.chunk_tokens,
            "chunking": injection.options.chunking,
            "max_rank": injection.options.max_rank,
            "documents": rows,
            "update": {"directory": UPDATE_DIR, "stored_bytes": total["stored_bytes"],
                       "lora_modules": len(total["lora_modules"]), "parameters": total["parameters"]},
            "per_document": ("each document's change given the documents before it: only all of them together "
                             "equal the run" if injection.options.mode == "sequential" else
                             "each document's change from the base weights: any subset combines exactly")
            if per_document else None,
            "dense_fallbacks": injection.fallbacks,
            "merged": {"directory": MERGED_DIR, "stored_bytes": merged_bytes} if merged else None,
            "peft_loads": total["peft_loads"],
            "promptstep_adds": total["promptstep_adds"],
            "load": "promptstep ask --injected DIR, or models.load_model(DIR) / models.load_injected(DIR)",
            "seconds": {"inject": round(sum(d.seconds for d in injection.documents), 4),
                        "save": round(time.perf_counter() - started, 4)},
        }
        write_json(stage / MANIFEST, manifest)
    return manifest


def _save_merged(directory: Path, model: torch.nn.Module, tokenizer, update: Update) -> int:
    import copy

    from transformers.utils import logging as hf_logging

    from promptstep.adapters import apply_update, dir_bytes

    hf_logging.disable_progress_bar()
    merged = copy.deepcopy(model)
    apply_update(merged, update)
    merged.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    del merged
    return dir_bytes(directory)


# ---------------------------------------------------------------------------------------------------------- asking


def question_prefix(question: Question, context: str | None, fmt: Format | None = None) -> str:
    """The text the model answers after: the question, with `context` in front (the Prompt format) if given."""
    return question.question if context is None else context + (fmt or Format()).separator + question.question


@torch.no_grad()
def _top_tokens(model, tokenizer, prefixes: Sequence[list[int]], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable next tokens (decoded text, probability) after each prefix."""
    batch = pad_batch(list(prefixes), tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logits = model(**to_device(batch, device), use_cache=False).logits.float()
    last = batch["attention_mask"].sum(dim=1) - 1
    probs = torch.softmax(logits[torch.arange(len(prefixes)), last.to(logits.device)], dim=-1)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(tokenizer.decode([i]), round(float(p), 6)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, ids)]


def answer_questions(model, tokenizer, questions: Sequence[Question], contexts: Sequence[str | None] | None = None,
                     *, max_new_tokens: int = 32, top_k: int = 5, batch_size: int = 16,
                     fmt: Format | None = None) -> list[dict]:
    """One record per question, answered with the model's current weights: the greedy generation (stopped at the
    end of the answer line, as `evaluate` does), its first line (`prediction`), the top-k next-token probabilities
    after the prefix (`top`, if top_k > 0) and, when the question has gold answers, `em`, `starts`, `f1`, `tok_acc`
    and `nll` (as `evaluate` scores them) and `distractor` (the prediction is one of the question's distractors).

    `contexts[i]` (if given and not None) is put in front of question i (the Prompt format).
    """
    from promptstep.evaluate import generate_answers, score_answers
    from promptstep.metrics import exact_match, f1_score, first_line, starts_with_answer
    from promptstep.models import max_length

    fmt = fmt or Format()
    window = max_length(model, tokenizer)
    contexts = list(contexts) if contexts is not None else [None] * len(questions)
    records: list[dict] = []
    for start in range(0, len(questions), batch_size):
        part = questions[start:start + batch_size]
        prefixes = [question_prefix(q, c, fmt) for q, c in zip(part, contexts[start:start + batch_size])]
        encoded = [encode_pair(tokenizer, p, q.answers[0], fmt.answer_prefix) if q.answers else None
                   for p, q in zip(prefixes, part)]
        prefix_ids = [e.prefix_ids if e is not None else encode_text(tokenizer, p) for e, p in zip(encoded, prefixes)]
        for question, ids, e in zip(part, prefix_ids, encoded):
            if max(len(ids) + max_new_tokens, len(e.ids) if e is not None else 0) > window:
                raise InputError(f"question '{question.id}' is {len(ids)} tokens with its context; with a "
                                 f"{max_new_tokens}-token answer that is over the model's window of {window} tokens")
        generations = generate_answers(model, tokenizer, prefix_ids, max_new_tokens)
        tops = _top_tokens(model, tokenizer, prefix_ids, top_k) if top_k > 0 else [None] * len(part)
        known = [e for e in encoded if e is not None]
        scores = iter(score_answers(model, known, tokenizer.pad_token_id) if known else [])
        for question, e, generation, top, ids in zip(part, encoded, generations, tops, prefix_ids):
            prediction = first_line(generation)
            record = {"id": question.id, "question": question.question, "document": question.document,
                      "prefix_tokens": len(ids), "generation": generation, "prediction": prediction}
            if top is not None:
                record["top"] = [[token, p] for token, p in top]
            if e is not None:
                acc, nll = next(scores)
                record.update(answer=question.answers[0], em=exact_match(prediction, question.answers),
                              starts=starts_with_answer(prediction, question.answers),
                              f1=f1_score(prediction, question.answers), tok_acc=acc, nll=nll,
                              n_answer_tokens=len(e.answer_ids),
                              distractor=float(bool(question.distractors)
                                               and exact_match(prediction, question.distractors) > 0))
            records.append(record)
    return records
