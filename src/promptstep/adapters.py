"""Stored weight updates: an exact, compact form of a change of a model's weights, on disk as a PEFT adapter plus a
side-car, and loading it back onto the base model.

One SGD step of a linear layer on T tokens changes its weight by -η Σ_t δ_t x_tᵀ (x_t the layer's input, δ_t the
loss gradient with respect to its output): a matrix of rank ≤ T, kept as factors (B, A) with ΔW = B @ A in the
parameter's own layout (GPT-2's Conv1D stores Wᵀ). An nn.Embedding's change is the rows of the tokens seen, any
other parameter's (biases, norms) a dense delta; a tied input/output embedding gets both. `inject.py` captures such
updates; this module stores, combines and loads them (it knows nothing of documents or inner steps).

An update directory (`save_update`) holds

* `adapter_config.json` + `adapter_model.safetensors`: a PEFT LoRA adapter (one rank per module via `rank_pattern`,
  alpha = rank so the scale is 1) for every low-rank part, which `peft.PeftModel.from_pretrained` loads natively; a
  tied embedding's low-rank part is stored twice (head and input embedding, the same factors transposed) because
  each role must see it;
* `promptstep_update.safetensors`: the exact side-car for what LoRA cannot hold (dense deltas, embedding rows),
  added to the base weights before peft wraps them;
* `update.json`: the base model (spec, fingerprint, dtype) and where each parameter's change is.

Never `merge_and_unload` such an adapter on a tied model: peft would add the tied low-rank part once per role, i.e.
twice. `apply_update` adds an update to the weights exactly (the merged form).

For a model that carries a PEFT adapter of its own (LoRA-inner meta-training: the adapter is what the inner step
moves), the update is kind `adapter`: the stepped adapter itself, saved by peft (`save_adapter_update`), with the
same update.json; several combine as adapter₀ + Σ (adapterᵢ − adapter₀).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from promptstep.errors import InputError

FORMAT = "promptstep-update/1"
MANIFEST = "manifest.json"  # an injected directory: manifest.json + update/ (+ documents/, merged/)
UPDATE_DIR = "update"
UPDATE_INFO = "update.json"
SIDECAR = "promptstep_update.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
DELTA, ADAPTER = "delta", "adapter"  # the two kinds of update (see the module docstring)
PEFT_NATIVE = ("LoRA factors of every nn.Linear / Conv1D weight change (and, for a tied embedding, of its "
               "input-embedding role) in adapter_model.safetensors")
PROMPTSTEP_ADDS = ("promptstep_update.safetensors: dense deltas (biases, norms, matrices whose factors would cost "
                   "more than the matrix) and embedding rows, added to the base weights before peft wraps them; "
                   "without it a peft-only load is not the injected model")
ADAPTER_NATIVE = ("the stepped adapter of a LoRA-inner model, complete: PeftModel.from_pretrained(base, this "
                  "directory) loads the injected model")


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
            out.index, out.rows = coalesce(torch.cat([self.index, other.index]), torch.cat([self.rows, other.rows]))
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

    def times(self, probe: torch.Tensor) -> torch.Tensor:
        """The change (a matrix) times `probe` [columns, k], in fp32, without forming the change."""
        probe = probe.float()
        out = torch.zeros((self.shape[0], probe.shape[1]), dtype=torch.float32, device=probe.device)
        if self.B is not None:
            out += self.B.float() @ (self.A.float() @ probe)
        if self.index is not None:
            out.index_add_(0, self.index.to(probe.device), self.rows.float() @ probe)
        if self.dense is not None:
            out += self.dense.float() @ probe
        return out

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


def coalesce(index: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


# ------------------------------------------------------------------------------------------------ modules


def module_kind(module: torch.nn.Module) -> str | None:
    """'linear', 'conv1d' or 'embedding' for the modules whose weight change has a compact form, else None."""
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
        kind = module_kind(module)
        if kind is not None and isinstance(weight, torch.Tensor) and id(weight) in names:
            roles.setdefault(names[id(weight)], []).append((module_name, kind))
    return roles


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
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers 5 on peft's call
        yield


def base_info(model: torch.nn.Module, spec: str | None, fingerprint: str) -> dict:
    """What update.json records about the base model: how to load it (`spec`), its fingerprint, dtype and class."""
    dtype = next(model.parameters()).dtype
    return {"spec": spec or str(model.config.name_or_path), "fingerprint": fingerprint,
            "dtype": str(dtype).removeprefix("torch."), "class": type(model).__name__}


def _resolved_base(spec: str) -> str | None:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def dir_bytes(path: Path) -> int:
    """Bytes of every file below `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write_info(directory: Path, info: dict) -> dict:
    (directory / UPDATE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return {**info, "stored_bytes": dir_bytes(directory)}


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
    return _write_info(directory, {"format": FORMAT, "kind": DELTA, "base": base, "documents": list(documents),
                                   "max_rank": max_rank, "peft_loads": PEFT_NATIVE, "promptstep_adds": PROMPTSTEP_ADDS,
                                   "lora_modules": plan.lora, "parameters": plan.parameters})


def stored_bytes(update: Update, model: torch.nn.Module, max_rank: int | None = None) -> int:
    """Bytes of the tensors `save_update` would write for `update` (without writing them)."""
    plan = _plan(update, model, max_rank)
    return sum(t.numel() * t.element_size() for t in (*plan.lora_tensors.values(), *plan.sidecar.values()))


def adapter_state(model: torch.nn.Module, values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A PEFT model's adapter weights in peft's saved form (`adapter_model.safetensors` keys), with the parameters
    named in `values` (model parameter names) replaced by those values."""
    from peft import get_peft_model_state_dict

    values = values or {}
    state = {name: values.get(name, tensor).detach() for name, tensor in model.state_dict().items()}
    return {key: tensor.contiguous() for key, tensor in get_peft_model_state_dict(model, state_dict=state).items()}


def save_adapter_update(directory: str | Path, model: torch.nn.Module, values: dict[str, torch.Tensor], *,
                        base: dict, documents: Sequence[str] = ()) -> dict:
    """Write the adapter of PEFT model `model` with its parameters set to `values` (a LoRA-inner model's stepped
    adapter) as an update directory of kind `adapter`; the model itself is not changed."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise InputError("an adapter update needs a model that carries a PEFT adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.peft_config[model.active_adapter].save_pretrained(str(directory))
    save_file(adapter_state(model, values), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    changed = sorted(name for name in values if "lora_" in name)
    return _write_info(directory, {"format": FORMAT, "kind": ADAPTER, "base": base, "documents": list(documents),
                                   "max_rank": None, "peft_loads": ADAPTER_NATIVE, "promptstep_adds": None,
                                   "lora_modules": {}, "parameters": {n: {"adapter": True} for n in changed}})


# ---------------------------------------------------------------------------------------------------------- loading


def is_injected(path: str | Path) -> bool:
    """Whether `path` is an injected directory (manifest.json + update/) or an update directory (update.json)."""
    path = Path(path).expanduser()
    return (path / UPDATE_INFO).is_file() or ((path / MANIFEST).is_file()
                                              and (path / UPDATE_DIR / UPDATE_INFO).is_file())


def update_dir(source: str | Path) -> Path:
    """The update directory of `source`: itself (update.json) or its `update/` (an injected directory)."""
    path = Path(source).expanduser()
    if (path / UPDATE_INFO).is_file():
        return path
    if (path / MANIFEST).is_file() and (path / UPDATE_DIR / UPDATE_INFO).is_file():
        return path / UPDATE_DIR
    if not path.exists():
        raise InputError(f"{path}: no such injected directory")
    raise InputError(f"{path}: not an injected directory (no {UPDATE_INFO} or {MANIFEST})")


def read_info(directory: Path) -> dict:
    """The update.json of an update directory, checked to be one."""
    try:
        info = json.loads((directory / UPDATE_INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{directory / UPDATE_INFO}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("base"), dict):
        raise InputError(f"{directory / UPDATE_INFO}: not a {FORMAT} file")
    info.setdefault("kind", DELTA)
    return info


def read_update(directory: str | Path, model: torch.nn.Module) -> Update:
    """The update stored in an update directory (kind `delta`), as factors / rows / dense deltas of `model`'s
    parameters."""
    directory = update_dir(directory)
    info = read_info(directory)
    if info["kind"] != DELTA:
        raise InputError(f"{directory}: holds a LoRA-inner model's stepped adapter, not a weight change")
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


def check_base(directory: Path, info: dict, fingerprint: str, dtype: torch.dtype) -> None:
    """InputError unless the update in `directory` was made for the model whose fingerprint is `fingerprint`."""
    base = info.get("base", {})
    dtype_name = str(dtype).removeprefix("torch.")
    if base.get("fingerprint") != fingerprint:
        hint = (f" (it was injected in {base.get('dtype')}, the model given is {dtype_name})"
                if base.get("dtype") not in (None, dtype_name) else "")
        raise InputError(f"{directory}: injected into another base model ('{base.get('spec')}', fingerprint "
                         f"{str(base.get('fingerprint'))[:12]}), not the model given (fingerprint {fingerprint[:12]})"
                         f"{hint}")


def attach(model: torch.nn.Module, directories: Sequence[Path], infos: Sequence[dict], *,
           merged: bool = False) -> torch.nn.Module:
    """The base `model` (checked by the caller with `check_base`, modified in place) with the updates in
    `directories` on top, added exactly.

    Kind `delta`: merged=False gives a `peft.PeftModel` (the side-car added to the base weights, the LoRA factors as
    an adapter; one directory loads through `PeftModel.from_pretrained`), merged=True the plain model with the whole
    update added to its weights. Kind `adapter` (a LoRA-inner model): the model's adapter set to
    adapter₀ + Σ (stored − adapter₀).
    """
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

    kinds = {info["kind"] for info in infos}
    if len(kinds) > 1:
        raise InputError("cannot combine a LoRA-inner model's adapter update with a weight-change update")
    if kinds == {ADAPTER}:
        if not isinstance(model, PeftModel):
            raise InputError(f"{directories[0]}: made for a model that carries a PEFT adapter (LoRA-inner)")
        if merged:
            raise InputError("the merged form is not available for a LoRA-inner model's update (its adapter is the "
                             "update; load it without merging)")
        start = adapter_state(model)
        combined = dict(start)
        for directory in directories:
            stored = load_file(str(directory / ADAPTER_WEIGHTS))
            if set(stored) != set(start):
                raise InputError(f"{directory}: its adapter does not match the model's adapter modules")
            for key, tensor in stored.items():
                combined[key] = combined[key] + (tensor.to(start[key]) - start[key])
        result = set_peft_model_state_dict(model, combined)
        if getattr(result, "unexpected_keys", []):
            raise RuntimeError(f"peft did not take the adapter tensors {result.unexpected_keys[:3]}")
        return model.eval()
    if isinstance(model, PeftModel):
        raise InputError(f"{directories[0]}: a weight-change update cannot go on a model that carries a PEFT adapter")
    if len(directories) == 1 and not merged:
        _apply_sidecar(model, load_file(str(directories[0] / SIDECAR)))
        if not infos[0].get("lora_modules"):
            return model.eval()
        with _quiet_peft():
            return PeftModel.from_pretrained(model, str(directories[0])).eval()
    update = sum_updates([read_update(d, model) for d in directories])
    if merged:
        apply_update(model, update)
        return model.eval()
    plan = _plan(update, model, None)
    _apply_sidecar(model, plan.sidecar)
    if not plan.lora:
        return model.eval()
    with _quiet_peft():
        wrapped = get_peft_model(model, _lora_config(plan, None))
        result = set_peft_model_state_dict(wrapped, plan.lora_tensors)
    if getattr(result, "unexpected_keys", []):
        raise RuntimeError(f"peft did not take the combined LoRA tensors {result.unexpected_keys[:3]}")
    return wrapped.eval()
