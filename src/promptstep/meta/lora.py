"""LoRA variants of meta-training (paper §3.4), built on `peft`.

* lora=inner ("LoRA Inner Step"): a LoRA adapter is the outer variable and also the only thing the inner
  step updates; the base weights stay frozen. PEFT's standard initialisation (A random, B = 0) is kept, so
  the untrained adapter computes exactly the base model, and its first inner step moves only B (the
  gradient with respect to A is B^T(...) = 0); meta-training moves A through the second-order path. The
  before-training evaluation of such a run is the paper's "Untrained FT" column, the after one "Meta FT".
* lora=outer ("LoRA Outer Loop"): a rank-r LoRA update ΔW(φ) = scale·B·A of the targeted weights is the outer
  variable; the inner step is a full-rank SGD step on every weight of the merged model θ_B + ΔW(φ), and the
  outer gradient reaches φ through the merged weights and through the inner gradient. With B = 0 at the
  start, dW/dA = 0, so the first outer step moves only B and A follows from the second step on.

Adapters are saved in PEFT's own format (adapter_config.json + adapter_model.safetensors), so
`PeftModel.from_pretrained(base, path)` loads them.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from promptstep.errors import InputError
from promptstep.meta.options import MetaOptions
from promptstep.meta.trainer import MetaTrainer
from promptstep.updates import select_parameters

DEFAULT_RANK = {"inner": 8, "outer": 1}
ADAPTER = "default"


def lora_config(model: torch.nn.Module, options: MetaOptions) -> LoraConfig:
    """The LoraConfig of `options` (rank, alpha, targets) for `model`, without dropout."""
    rank = options.lora_rank or DEFAULT_RANK[options.lora]
    targets = options.lora_targets.strip()
    modules: str | list[str] = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t]
    return LoraConfig(r=rank, lora_alpha=options.lora_alpha or rank, target_modules=modules, lora_dropout=0.0,
                      fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))


def wrap_lora(model: torch.nn.Module, options: MetaOptions) -> PeftModel:
    """`model` (modified in place) wrapped with a fresh LoRA adapter; only the adapter is trainable."""
    try:
        wrapped = get_peft_model(model, lora_config(model, options))
    except ValueError as err:
        raise InputError(f"lora_targets {options.lora_targets!r}: {str(err).splitlines()[0]}") from None
    base_path = Path(str(model.config.name_or_path))
    if base_path.is_dir():  # so the saved adapter names a base that load_model finds from any directory
        wrapped.peft_config[ADAPTER].base_model_name_or_path = str(base_path.resolve())
    wrapped.eval()
    return wrapped


class OuterLoraTrainer(MetaTrainer):
    """Meta-trains a rank-r LoRA update of the weights; the inner step is full rank on the merged weights."""

    def __init__(self, model: PeftModel, tokenizer, options: MetaOptions, teacher: torch.nn.Module | None = None,
                 processes=None, teacher_scope=None) -> None:
        super().__init__(model, tokenizer, options, teacher=teacher, processes=processes, teacher_scope=teacher_scope)
        chosen = select_parameters(model, options.inner_params, include_frozen=True)  # the base weights too
        self.base = {n: p for n, p in chosen.items() if n not in self.params}
        if not self.base:
            raise InputError(f"inner_params {options.inner_params!r} matches no base weight of the model")
        self.inner_names = list(self.base)
        self.layers = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
                       if hasattr(module, "get_delta_weight") and ADAPTER in getattr(module, "lora_A", {})}

    def inner_start(self) -> dict[str, torch.Tensor]:
        """θ_B + ΔW(φ) for the targeted weights, θ_B elsewhere (fresh leaves, so the step can differentiate)."""
        start = {}
        for name in self.inner_names:
            layer = self.layers.get(name)
            start[name] = (self.base[name] + layer.get_delta_weight(ADAPTER) if layer is not None
                           else self.base[name].detach().requires_grad_(True))
        return start

    def inner_scope(self) -> AbstractContextManager:
        """Run with the LoRA branch off: the merged weights already hold ΔW(φ)."""
        return self.model.disable_adapter()

    def eval_model(self) -> torch.nn.Module:
        """A merged plain copy of the model, every weight trainable: its FT step is the full-rank inner step."""
        return copy.deepcopy(self.model).merge_and_unload().requires_grad_(True)

    def export(self, out: Path) -> Path:
        """The merged model in `out/model` (what `eval` loads) and the rank-r update as a PEFT adapter in
        `out/outer_adapter`."""
        self.model.save_pretrained(out / "outer_adapter", safe_serialization=True)
        merged = self.eval_model()
        merged.save_pretrained(out / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "model")
        return out / "model"


def build_trainer(model: torch.nn.Module, tokenizer, options: MetaOptions, processes=None, seed: int = 0
                  ) -> MetaTrainer:
    """The trainer for `options.lora`: plain, LoRA inner + outer, or rank-r outer with a full-rank inner step.

    With LoRA the teacher (LC) is the model itself with its adapter disabled: the base weights are frozen, so that
    is exactly the model meta-training started from, with no second copy in memory. The adapter's random
    initialisation is seeded with `seed`.
    """
    options.validate()
    if options.lora == "none":
        return MetaTrainer(model, tokenizer, options, processes=processes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = wrap_lora(model, options)
    trainer_class = OuterLoraTrainer if options.lora == "outer" else MetaTrainer
    return trainer_class(wrapped, tokenizer, options, teacher=wrapped, teacher_scope=wrapped.disable_adapter,
                         processes=processes)
