"""Knowledge injection: documents -> the model's inner step on each chunk -> an exact, compact stored update.

Each document is split into chunks that fit the model's window; each chunk gets `updates.inner_step` (the rule,
η, steps and parameter subset of FT evaluation and meta-training), in one of two modes:

* `sequential`: every chunk steps from the weights left by the previous one (the paper's multi-context setting);
* `sum`: every chunk steps from the base weights, and the chunks' changes are added.

Exact compact form. One SGD step of a linear layer on T tokens changes its weight by -η Σ_t δ_t x_tᵀ, x_t the
layer's input and δ_t the loss gradient with respect to its output: a matrix of rank ≤ T. While the inner step
takes its gradient, forward hooks record each nn.Linear / GPT-2 Conv1D input x and tensor hooks on the outputs
record δ, so the change is kept as factors (B, A) with ΔW = B @ A in the parameter's own layout (Conv1D stores
Wᵀ); tokens whose δ is exactly zero (the last one: it predicts nothing) are dropped. An nn.Embedding's change is
the rows of the tokens seen, every other parameter's (biases, norms) a dense delta, and a tied input/output
embedding gets both (head factors + embedding rows). Each gradient call's factors are checked against the rule's
own gradient; where they do not reproduce it (e.g. Layer-Causal GD, whose logit lens runs the head without
training it, or a module the hooks cannot read), that parameter's dense gradient step is kept instead. Ranks add
over steps and chunks; a matrix whose factors would cost at least as much as the matrix itself is kept dense.

On disk (`save_injection`), an update directory holds a PEFT LoRA adapter (adapter_config.json +
adapter_model.safetensors, one rank per module via `rank_pattern`, alpha = rank so the scale is 1) for every
low-rank part — which `peft.PeftModel.from_pretrained` loads natively — plus `promptstep_update.safetensors`, the
exact side-car for what LoRA cannot hold (dense deltas, embedding rows), which promptstep adds to the base weights
before peft wraps them, and `update.json` (base model spec + fingerprint, where each parameter's change is). A
tied embedding's low-rank part is stored as two LoRAs (head and input embedding, same factors transposed) because
each role must see it. `load_injected` checks the base fingerprint and returns base + update(s); updates kept per
document combine exactly (factors concatenate, deltas add).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from promptstep.documents import Document
from promptstep.errors import InputError
from promptstep.formats import encode_text, lm_batch, to_device
from promptstep.updates import GradientFn, ParamDict, inner_step, select_parameters

MODES = ("sequential", "sum")
FORMAT = "promptstep-update/1"
MANIFEST = "manifest.json"
UPDATE_DIR = "update"
DOCUMENTS_DIR = "documents"
MERGED_DIR = "merged"
UPDATE_INFO = "update.json"
SIDECAR = "promptstep_update.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_NATIVE = ("LoRA factors of every nn.Linear / Conv1D weight change (and, for a tied embedding, of its "
               "input-embedding role) in adapter_model.safetensors")
PROMPTSTEP_ADDS = ("promptstep_update.safetensors: dense deltas (biases, norms, matrices whose factors would cost "
                   "more than the matrix) and embedding rows, added to the base weights before peft wraps them; "
                   "without it a peft-only load is not the injected model")


# ----------------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InjectOptions:
    """How documents become weights.

    lr, steps, params, rule: the inner step (`updates.inner_step`; `rule` names a gradient of
    `promptstep.rules`, `params` is a regex over parameter names, None = every trainable parameter).
    mode: `sequential` or `sum` (see the module docstring).
    chunk_tokens: the chunk size in tokens (None = the model's window); chunking=False refuses a document longer
    than one chunk instead of splitting it.
    max_rank: truncate each stored low-rank matrix change to this rank (SVD of the exact factors; the relative
    Frobenius error per parameter is reported); None keeps it exact.
    """

    lr: float = 1e-3
    steps: int = 1
    params: str | None = None
    rule: str = "sgd"
    mode: str = "sequential"
    chunk_tokens: int | None = None
    chunking: bool = True
    max_rank: int | None = None

    def validate(self) -> None:
        from promptstep.rules import check_rule

        if self.mode not in MODES:
            raise InputError(f"unknown injection mode '{self.mode}' (choose from {', '.join(MODES)})")
        check_rule(self.rule)
        if not (self.lr >= 0 and math.isfinite(self.lr)) or self.steps < 1:
            raise InputError(f"inner step needs a finite lr >= 0 and steps >= 1 (got lr={self.lr}, steps={self.steps})")
        if self.chunk_tokens is not None and self.chunk_tokens < 2:
            raise InputError(f"chunk_tokens must be at least 2 (a next-token loss needs two tokens), got "
                             f"{self.chunk_tokens}")
        if self.max_rank is not None and self.max_rank < 1:
            raise InputError(f"max_rank must be at least 1 (or None for the exact update), got {self.max_rank}")


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
    """The chunk size in tokens: `requested`, or the model's window (`models.max_length`); never above the window."""
    from promptstep.models import max_length

    window = max_length(model, tokenizer)
    if requested is None:
        return window
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


# ------------------------------------------------------------------------------------------------- the update itself


@dataclass
class ParamDelta:
    """The change of one parameter, in its own layout: B @ A (low rank) + `rows` added at `index` along dim 0 +
    `dense`. Any part may be absent."""

    shape: tuple[int, ...]
    B: torch.Tensor | None = None
    A: torch.Tensor | None = None
    index: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.B is None else int(self.B.shape[1])

    @property
    def nbytes(self) -> int:
        parts = (self.B, self.A, self.index, self.rows, self.dense)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def __add__(self, other: ParamDelta) -> ParamDelta:
        if tuple(other.shape) != tuple(self.shape):
            raise ValueError(f"cannot add changes of shapes {self.shape} and {other.shape}")
        out = ParamDelta(tuple(self.shape))
        if self.B is not None and other.B is not None:
            out.B, out.A = torch.cat([self.B, other.B], dim=1), torch.cat([self.A, other.A], dim=0)
        else:
            out.B, out.A = (self.B, self.A) if self.B is not None else (other.B, other.A)
        if self.index is not None and other.index is not None:
            out.index, out.rows = _coalesce(torch.cat([self.index, other.index]), torch.cat([self.rows, other.rows]))
        else:
            out.index, out.rows = (self.index, self.rows) if self.index is not None else (other.index, other.rows)
        if self.dense is not None and other.dense is not None:
            out.dense = self.dense + other.dense
        else:
            out.dense = self.dense if self.dense is not None else other.dense
        return out.folded()

    def folded(self) -> ParamDelta:
        """The same change, with the factors made dense once they cost as much as the matrix."""
        if self.B is not None and len(self.shape) == 2:
            rows, cols = self.shape
            if self.rank * (rows + cols) >= rows * cols:
                low = (self.B @ self.A).to(self.B.dtype)
                self.dense = low if self.dense is None else self.dense + low
                self.B = self.A = None
        return self

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole change as one tensor of the parameter's shape (accumulated in at least fp32)."""
        parts = [t for t in (self.B, self.rows, self.dense) if t is not None]
        work = torch.promote_types(parts[0].dtype, torch.float32) if parts else torch.float32
        device = parts[0].device if parts else "cpu"
        total = torch.zeros(self.shape, dtype=work, device=device)
        if self.B is not None:
            total += self.B.to(work) @ self.A.to(work)
        if self.index is not None:
            total.index_add_(0, self.index.to(device), self.rows.to(work))
        if self.dense is not None:
            total += self.dense.to(work)
        return total.to(dtype or (parts[0].dtype if parts else torch.float32))


def _coalesce(index: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique row indices with the rows of equal indices summed."""
    unique, inverse = torch.unique(index, return_inverse=True)
    summed = torch.zeros((len(unique), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    return unique, summed.index_add_(0, inverse, rows)


class Update(dict):
    """Parameter name -> ParamDelta; `a + b` is the exact sum of two updates (factors concatenate)."""

    def __add__(self, other: Update) -> Update:
        out = Update(self)
        for name, delta in other.items():
            out[name] = out[name] + delta if name in out else delta
        return out

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.values())

    def dense(self) -> dict[str, torch.Tensor]:
        return {name: delta.to_dense() for name, delta in self.items()}


def sum_updates(updates: Sequence[Update]) -> Update:
    """The exact sum of several updates."""
    total = Update()
    for update in updates:
        total = total + update
    return total


# ---------------------------------------------------------------------------------------------------------- capture


def _module_kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    return None


def parameter_roles(model: torch.nn.Module) -> dict[str, list[tuple[str, str]]]:
    """Parameter name -> [(module name, kind)] of every Linear / Conv1D / Embedding whose weight it is (a tied
    embedding has two roles: the input embedding and the output head)."""
    names = {id(p): n for n, p in model.named_parameters()}
    roles: dict[str, list[tuple[str, str]]] = {}
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        kind = _module_kind(module)
        if kind is not None and isinstance(weight, torch.Tensor) and id(weight) in names:
            roles.setdefault(names[id(weight)], []).append((module_name, kind))
    return roles


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
                part.index, part.rows = _coalesce(part.index, part.rows)
            else:
                x = x.reshape(-1, x.shape[-1])
                x, d = x[keep], -lr * d[keep]
                if kind == "linear":  # weight [out, in] changes by dᵀ x
                    part = ParamDelta(delta.shape, B=d.T.contiguous(), A=x.contiguous())
                else:  # Conv1D weight [in, out] changes by xᵀ d
                    part = ParamDelta(delta.shape, B=x.T.contiguous(), A=d.contiguous())
            delta = delta + part
        error = (delta.to_dense(torch.float32) - target.float()).norm()
        if not error <= _tolerance(target.dtype) * target.float().norm():
            return None
        return delta


# ---------------------------------------------------------------------------------------------------------- inject


@dataclass
class DocumentUpdate:
    """One document's chunks and the change its chunks made (in sequential mode: given the documents before it)."""

    document: Document
    chunks: list[Chunk]
    update: Update
    seconds: float


@dataclass
class Injection:
    """The result of `inject`: per-document updates, the settings, and the stepped parameters in memory
    (`stepped`: the inner steps' own output in sequential mode; base + the sum of the chunks' changes in sum mode)."""

    options: InjectOptions
    chunk_tokens: int
    base_fingerprint: str
    documents: list[DocumentUpdate]
    stepped: ParamDict = field(repr=False)
    fallbacks: list[str] = field(default_factory=list)

    @property
    def total(self) -> Update:
        return sum_updates([d.update for d in self.documents])


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every state-dict entry's name and bytes: identifies the base weights an update belongs to."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_plain(model: torch.nn.Module) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise InputError("injection into a model with a PEFT adapter is not supported yet; merge the adapter "
                         "(merge_and_unload) or inject into its base model")


def inject(model: torch.nn.Module, tokenizer, documents: Sequence[Document], options: InjectOptions = InjectOptions(),
           *, progress: bool = False) -> Injection:
    """Every document's chunks stepped on with `updates.inner_step`; the model itself is left unchanged.

    All documents are chunked (and checked) before any step is taken.
    """
    from promptstep.rules import gradient_fn

    options.validate()
    _check_plain(model)
    if not documents:
        raise InputError("no documents to inject")
    size = chunk_size(model, tokenizer, options.chunk_tokens)
    chunked = [(doc, split_document(tokenizer, doc, size, options.chunking)) for doc in documents]
    fingerprint = model_fingerprint(model)
    params = select_parameters(model, options.params)
    base = {name: p.detach() for name, p in params.items()}
    capture = _Capture(model, list(params))
    device = next(model.parameters()).device
    current = dict(base)
    summed: ParamDict = {}
    results: list[DocumentUpdate] = []
    for number, (document, chunks) in enumerate(chunked, start=1):
        started = time.perf_counter()
        capture.update = Update()
        for chunk in chunks:
            batch = to_device(lm_batch([list(chunk.ids)], tokenizer.pad_token_id), device)
            start = current if options.mode == "sequential" else base
            stepped = inner_step(model, start, batch, lr=options.lr, steps=options.steps, differentiable=False,
                                 gradients=capture.wrap(gradient_fn(options.rule), options.lr))
            if options.mode == "sequential":
                current = stepped
            else:
                for name, value in stepped.items():
                    change = value - base[name]
                    summed[name] = summed[name] + change if name in summed else change
        results.append(DocumentUpdate(document, chunks, capture.update, time.perf_counter() - started))
        if progress:
            print(f"inject {number}/{len(chunked)}: '{document.id}' ({len(chunks)} chunks, "
                  f"{results[-1].seconds:.1f} s)", flush=True)
    if options.mode == "sum":
        current = {name: base[name] + summed[name] if name in summed else base[name] for name in base}
    return Injection(options=options, chunk_tokens=size, base_fingerprint=fingerprint, documents=results,
                     stepped=current, fallbacks=sorted(capture.fallbacks))


# ---------------------------------------------------------------------------------------------------------- storage


def truncate_factors(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` approximation of B @ A (Eckart-Young, through QR + SVD of the small core) as factors,
    and its relative Frobenius error."""
    work = torch.float64
    qb, rb = torch.linalg.qr(B.to(work))
    qa, ra = torch.linalg.qr(A.T.to(work))
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return _cut(qb @ u, s, vh @ qa.T, rank, B.dtype)


def truncate_dense(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` approximation of a matrix as factors, and its relative Frobenius error."""
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return _cut(u, s, vh, rank, matrix.dtype)


def _cut(u, s, vh, rank, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    total = s.square().sum()
    error = float((s[rank:].square().sum() / total).sqrt()) if total > 0 else 0.0
    return (u[:, :rank] * s[:rank]).to(dtype).contiguous(), vh[:rank].to(dtype).contiguous(), error


def _lora_factors(kind: str, B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (lora_B, lora_A) for a module of `kind` whose weight changes by B @ A: Linear ΔW = lora_B lora_A;
    Conv1D and Embedding ΔW = (lora_B lora_A)ᵀ."""
    if kind == "linear":
        return B.contiguous(), A.contiguous()
    return A.T.contiguous(), B.T.contiguous()


@dataclass
class _Plan:
    """Where each parameter's change goes: LoRA modules (peft) and the side-car tensors (promptstep)."""

    lora: dict[str, dict] = field(default_factory=dict)  # module -> {param, kind, rank, primary}
    lora_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # peft state-dict keys
    sidecar: dict[str, torch.Tensor] = field(default_factory=dict)
    parameters: dict[str, dict] = field(default_factory=dict)


def _plan(update: Update, model: torch.nn.Module, max_rank: int | None) -> _Plan:
    roles = parameter_roles(model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    plan = _Plan()
    for name, delta in update.items():
        if name not in shapes:
            raise InputError(f"the update changes parameter '{name}', which the model does not have")
        if shapes[name] != tuple(delta.shape):
            raise InputError(f"the update changes '{name}' with shape {tuple(delta.shape)}, the model's is "
                             f"{shapes[name]}")
        B, A, dense = delta.B, delta.A, delta.dense
        info = {"shape": list(delta.shape), "captured_rank": delta.rank, "lora_rank": 0,
                "rows": 0 if delta.index is None else len(delta.index), "dense": False, "truncation_error": None}
        param_roles = roles.get(name, [])
        matrix = len(delta.shape) == 2 and bool(param_roles)
        if matrix and max_rank is not None:  # the matrix part (factors + dense); rows stay exact
            if dense is not None and min(delta.shape) > max_rank:
                whole = dense.double() + (B.double() @ A.double() if B is not None else 0)
                B, A, info["truncation_error"] = truncate_dense(whole, max_rank)
                B, A, dense = B.to(dense.dtype), A.to(dense.dtype), None
            elif dense is None and B is not None and delta.rank > max_rank:
                B, A, info["truncation_error"] = truncate_factors(B, A, max_rank)
            else:
                info["truncation_error"] = 0.0
        index, values = delta.index, delta.rows
        if B is not None:
            rows, cols = delta.shape
            copies = len(param_roles)  # a tied matrix's factors are stored once per role
            if dense is not None or not matrix or copies * B.shape[1] * (rows + cols) >= rows * cols:
                low = (B.double() @ A.double()).to(B.dtype)  # the dense form is exact and no larger
                dense = low if dense is None else dense + low
                B = A = None
            else:
                info["lora_rank"] = int(B.shape[1])
                for number, (module, kind) in enumerate(param_roles):
                    lora_b, lora_a = _lora_factors(kind, B, A)
                    plan.lora[module] = {"param": name, "kind": kind, "rank": int(B.shape[1]), "primary": number == 0}
                    key = PEFT_PREFIX + module
                    if kind == "embedding":
                        plan.lora_tensors[f"{key}.lora_embedding_A"] = lora_a
                        plan.lora_tensors[f"{key}.lora_embedding_B"] = lora_b
                    else:
                        plan.lora_tensors[f"{key}.lora_A.weight"] = lora_a
                        plan.lora_tensors[f"{key}.lora_B.weight"] = lora_b
        if index is not None and (dense is not None or values.numel() + 2 * index.numel() >= math.prod(delta.shape)):
            if dense is None:  # rows that cost as much as the matrix: dense
                dense = torch.zeros(delta.shape, dtype=values.dtype, device=values.device)
            dense = dense.index_add(0, index.to(dense.device), values.to(dense.dtype))
            index = values = None
            info["rows"] = 0
        if dense is not None:
            info["dense"] = True
            plan.sidecar[f"{name}.dense"] = dense.contiguous()
        if index is not None:
            plan.sidecar[f"{name}.rows.index"] = index.to(torch.int64).contiguous()
            plan.sidecar[f"{name}.rows.values"] = values.contiguous()
        plan.parameters[name] = info
    return plan


def _lora_config(plan: _Plan, base_path: str | None):
    from peft import LoraConfig

    modules = sorted(plan.lora)
    ranks = {re.escape(m): plan.lora[m]["rank"] for m in modules}
    config = LoraConfig(r=1, lora_alpha=1, target_modules=modules, rank_pattern=ranks, alpha_pattern=dict(ranks),
                        lora_dropout=0.0, bias="none", init_lora_weights=False,
                        fan_in_fan_out=any(plan.lora[m]["kind"] == "conv1d" for m in modules))
    config.base_model_name_or_path = base_path
    return config


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's warnings that do not apply here: per-module fan_in_fan_out fixes (GPT-2 mixes Conv1D and Linear) and
    LoRA on both roles of a tied embedding (intended: each role needs the change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        yield


def _base_info(model: torch.nn.Module, spec: str | None, fingerprint: str) -> dict:
    dtype = next(model.parameters()).dtype
    return {"spec": spec or str(model.config.name_or_path), "fingerprint": fingerprint,
            "dtype": str(dtype).removeprefix("torch."), "class": type(model).__name__}


def _resolved_base(spec: str) -> str | None:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_update(directory: str | Path, update: Update, model: torch.nn.Module, *, base: dict,
                max_rank: int | None = None, documents: Sequence[str] = ()) -> dict:
    """Write `update` (changes of `model`'s base weights) as an update directory: the PEFT LoRA adapter, the
    side-car and update.json. Returns update.json's content (with `stored_bytes`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = _plan(update, model, max_rank)
    if plan.lora:
        _lora_config(plan, _resolved_base(base["spec"])).save_pretrained(str(directory))
        save_file(plan.lora_tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    save_file(plan.sidecar, str(directory / SIDECAR), metadata={"format": "pt", "promptstep": FORMAT})
    info = {"format": FORMAT, "base": base, "documents": list(documents), "max_rank": max_rank,
            "peft_loads": PEFT_NATIVE, "promptstep_adds": PROMPTSTEP_ADDS,
            "lora_modules": plan.lora, "parameters": plan.parameters}
    (directory / UPDATE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    info["stored_bytes"] = _dir_bytes(directory)
    return info


def _slug(index: int, doc_id: str) -> str:
    return f"{index:04d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id).strip("._") or "doc")[:60]


def save_injection(out: str | Path, injection: Injection, model: torch.nn.Module, tokenizer=None, *,
                   per_document: bool = False, merged: bool = False, model_spec: str | None = None,
                   overwrite: bool = False) -> dict:
    """Write an injected directory (staged; published whole or not at all) and return its manifest.

    `out/update/` holds all documents' update together; with `per_document`, `out/documents/NNNN-ID/` holds each
    document's own (they combine exactly in `load_injected`); with `merged`, `out/merged/` holds the updated model
    itself (`save_pretrained`, with the tokenizer), loadable by transformers alone. `model` must be the base model
    `inject` stepped from (checked by fingerprint); `model_spec` is how to load it again (default: its
    name_or_path).
    """
    from promptstep.runs import staged_dir, write_json

    if model_fingerprint(model) != injection.base_fingerprint:
        raise InputError("the model given to save_injection is not the base model the documents were injected into")
    base = _base_info(model, model_spec, injection.base_fingerprint)
    max_rank = injection.options.max_rank
    started = time.perf_counter()
    with staged_dir(Path(out), overwrite) as stage:
        total = save_update(stage / UPDATE_DIR, injection.total, model, base=base, max_rank=max_rank,
                            documents=[d.document.id for d in injection.documents])
        rows = []
        for number, result in enumerate(injection.documents):
            row = {"id": result.document.id, "source": result.document.source, "chunks": len(result.chunks),
                   "chunk_tokens": [c.tokens for c in result.chunks], "tokens": sum(c.tokens for c in result.chunks),
                   "seconds": round(result.seconds, 4), "captured_bytes": result.update.nbytes}
            if per_document:
                sub = f"{DOCUMENTS_DIR}/{_slug(number, result.document.id)}"
                info = save_update(stage / sub, result.update, model, base=base, max_rank=max_rank,
                                   documents=[result.document.id])
                row.update(directory=sub, stored_bytes=info["stored_bytes"])
            rows.append(row)
        merged_bytes = None
        if merged:
            merged_bytes = _save_merged(stage / MERGED_DIR, model, tokenizer, read_update(stage / UPDATE_DIR, model))
        options = asdict(injection.options)
        manifest = {
            "format": FORMAT,
            "base": base,
            "mode": injection.options.mode,
            "inner_step": {k: options[k] for k in ("lr", "steps", "params", "rule")},
            "chunk_tokens": injection.chunk_tokens,
            "chunking": injection.options.chunking,
            "max_rank": max_rank,
            "documents": rows,
            "update": {"directory": UPDATE_DIR, "stored_bytes": total["stored_bytes"],
                       "lora_modules": len(total["lora_modules"]), "parameters": total["parameters"]},
            "per_document": ("each document's change given the documents before it: only all of them together "
                             "equal the run" if injection.options.mode == "sequential" else
                             "each document's change from the base weights: any subset combines exactly")
            if per_document else None,
            "dense_fallbacks": injection.fallbacks,
            "merged": {"directory": MERGED_DIR, "stored_bytes": merged_bytes} if merged else None,
            "peft_loads": PEFT_NATIVE,
            "promptstep_adds": PROMPTSTEP_ADDS,
            "seconds": {"inject": round(sum(d.seconds for d in injection.documents), 4),
                        "save": round(time.perf_counter() - started, 4)},
        }
        write_json(stage / MANIFEST, manifest)
    return manifest


def _save_merged(directory: Path, model: torch.nn.Module, tokenizer, update: Update) -> int:
    import copy

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    merged = copy.deepcopy(model)
    apply_update(merged, update)
    merged.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    del merged
    return _dir_bytes(directory)


# ---------------------------------------------------------------------------------------------------------- loading


def _update_dir(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if (path / UPDATE_INFO).is_file():
        return path
    if (path / MANIFEST).is_file() and (path / UPDATE_DIR / UPDATE_INFO).is_file():
        return path / UPDATE_DIR
    if not path.exists():
        raise InputError(f"{path}: no such injected directory")
    raise InputError(f"{path}: not an injected directory (no {UPDATE_INFO} or {MANIFEST})")


def _read_info(directory: Path) -> dict:
    try:
        info = json.loads((directory / UPDATE_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{directory / UPDATE_INFO}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(f"{directory / UPDATE_INFO}: not a {FORMAT} file")
    return info


def read_update(directory: str | Path, model: torch.nn.Module) -> Update:
    """The update stored in an update directory, as factors / rows / dense deltas of `model`'s parameters."""
    directory = _update_dir(directory)
    info = _read_info(directory)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    update = Update()

    def delta_of(name: str) -> ParamDelta:
        if name not in shapes:
            raise InputError(f"{directory}: changes parameter '{name}', which the model does not have")
        return update.setdefault(name, ParamDelta(shapes[name]))

    lora = info.get("lora_modules", {})
    if lora:
        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
        for module, entry in lora.items():
            if not entry["primary"]:
                continue
            key = PEFT_PREFIX + module
            if entry["kind"] == "embedding":
                lora_a, lora_b = tensors[f"{key}.lora_embedding_A"], tensors[f"{key}.lora_embedding_B"]
            else:
                lora_a, lora_b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
            delta = delta_of(entry["param"])
            delta.B, delta.A = (lora_b, lora_a) if entry["kind"] == "linear" else (lora_a.T, lora_b.T)
    sidecar = load_file(str(directory / SIDECAR))
    for key, tensor in sidecar.items():
        if key.endswith(".dense"):
            delta_of(key.removesuffix(".dense")).dense = tensor
        elif key.endswith(".rows.index"):
            name = key.removesuffix(".rows.index")
            delta = delta_of(name)
            delta.index, delta.rows = tensor, sidecar[f"{name}.rows.values"]
    return update


def apply_update(model: torch.nn.Module, update: Update) -> None:
    """Add `update` to `model`'s weights in place (the merged form)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in update.items():
            param = named[name]
            param.add_(delta.to_dense().to(device=param.device, dtype=torch.promote_types(param.dtype, torch.float32))
                       .to(param.dtype))


def _apply_sidecar(model: torch.nn.Module, plan_sidecar: dict[str, torch.Tensor]) -> None:
    update = Update()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for key, tensor in plan_sidecar.items():
        if key.endswith(".dense"):
            name = key.removesuffix(".dense")
            update.setdefault(name, ParamDelta(shapes[name])).dense = tensor
        elif key.endswith(".rows.index"):
            name = key.removesuffix(".rows.index")
            delta = update.setdefault(name, ParamDelta(shapes[name]))
            delta.index, delta.rows = tensor, plan_sidecar[f"{name}.rows.values"]
    apply_update(model, update)


def _check_base(model: torch.nn.Module, directory: Path, info: dict, fingerprint: str) -> None:
    base = info.get("base", {})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if base.get("fingerprint") != fingerprint:
        hint = (f" (it was injected in {base.get('dtype')}, the model given is {dtype})"
                if base.get("dtype") not in (None, dtype) else "")
        raise InputError(f"{directory}: injected into another base model ('{base.get('spec')}', fingerprint "
                         f"{str(base.get('fingerprint'))[:12]}), not the model given (fingerprint {fingerprint[:12]})"
                         f"{hint}")


def load_injected(sources: str | Path | Sequence[str | Path], *, model: torch.nn.Module | None = None,
                  tokenizer=None, merged: bool = False, **load_options) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the base model with the stored update(s) on top.

    `sources`: an injected directory (its `update/`), an update directory (e.g. `documents/0003-x`), or several,
    whose updates are added exactly. The base is `model` (modified in place) or, if None, loaded with
    `models.load_model` from the spec and dtype recorded at injection (`load_options` pass on). Every source must
    carry the base's fingerprint, or InputError. merged=False: a `peft.PeftModel` (the side-car added to the base
    weights, the LoRA factors as an adapter — one source loads through `PeftModel.from_pretrained`); merged=True:
    the plain model with the whole update added to its weights.
    """
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

    single = isinstance(sources, (str, Path))
    dirs = [_update_dir(s) for s in ([sources] if single else sources)]
    if not dirs:
        raise InputError("no injected directory to load")
    infos = [_read_info(d) for d in dirs]
    if model is None:
        from promptstep.models import load_model

        base = infos[0]["base"]
        load_options.setdefault("dtype", getattr(torch, base.get("dtype", "float32")))
        model, tokenizer = load_model(base["spec"], **load_options)
    _check_plain(model)
    fingerprint = model_fingerprint(model)
    for directory, info in zip(dirs, infos):
        _check_base(model, directory, info, fingerprint)
    if len(dirs) == 1 and not merged:
        _apply_sidecar(model, load_file(str(dirs[0] / SIDECAR)))
        if not infos[0].get("lora_modules"):
            return model.eval(), tokenizer
        with _quiet_peft():
            wrapped = PeftModel.from_pretrained(model, str(dirs[0]))
        return wrapped.eval(), tokenizer
    update = sum_updates([read_update(d, model) for d in dirs])
    if merged:
        apply_update(model, update)
        return model.eval(), tokenizer
    plan = _plan(update, model, None)
    _apply_sidecar(model, plan.sidecar)
    if not plan.lora:
        return model.eval(), tokenizer
    with _quiet_peft():
        wrapped = get_peft_model(model, _lora_config(plan, None))
        result = set_peft_model_state_dict(wrapped, plan.lora_tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"peft did not take the combined LoRA tensors {unexpected[:3]}")
    return wrapped.eval(), tokenizer
