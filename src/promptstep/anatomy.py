"""Where a causal LM keeps its blocks, attention modules, final norm and head (Llama and GPT-2 families)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptstep.errors import InputError


@dataclass(frozen=True)
class Anatomy:
    """The parts of a causal LM that the instruments need."""

    layers: torch.nn.ModuleList
    layers_prefix: str  # qualified name of the block list, e.g. "model.layers" or "transformer.h"
    attentions: tuple[torch.nn.Module, ...]
    final_norm: torch.nn.Module
    head: torch.nn.Module

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit lens U: the final norm, then the unembedding."""
        return self.head(self.final_norm(hidden))

    def layer_of(self, parameter_name: str) -> int | None:
        """Index of the block a parameter belongs to, or None for parameters outside the blocks."""
        prefix = self.layers_prefix + "."
        if not parameter_name.startswith(prefix):
            return None
        return int(parameter_name[len(prefix) :].split(".", 1)[0])


def anatomy_of(model: torch.nn.Module) -> Anatomy:
    """The blocks, attention modules, final norm and head of a Llama- or GPT-2-family model."""
    base = getattr(model, "base_model", None)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    final_norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    attentions = [getattr(layer, "self_attn", None) or getattr(layer, "attn", None) for layer in layers or ()]
    if not layers or final_norm is None or head is None or any(a is None for a in attentions):
        raise InputError(f"the analysis supports Llama- and GPT-2-family causal LMs, not {type(model).__name__}")
    prefix = next(name for name, module in model.named_modules() if module is layers)
    return Anatomy(layers, prefix, tuple(attentions), final_norm, head)
