"""FT-side update rules: vanilla GD as in Dai / Deutch et al., and Layer-Causal GD (papers.md §2, §3.4).

Both are gradient functions for `updates.inner_step` (signature `updates.GradientFn`), so the same rule serves
the analysis, evaluation and the inner step of meta-training (`MetaOptions.inner_rule`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from promptstep.anatomy import anatomy_of
from promptstep.errors import InputError
from promptstep.formats import lm_batch, to_device
from promptstep.updates import GradientFn, ParamDict, inner_step, select_parameters


def trainable(model: torch.nn.Module, spec: str) -> tuple[ParamDict, dict[str, torch.Tensor]]:
    """Parameters an FT update trains, with 0/1 gradient masks for parameters trained only in part.

    spec: "kv" = the key and value projections of every layer (Dai / Deutch; for GPT-2's fused c_attn the
    K and V columns, the Q columns masked), "all", or a regex searched in parameter names.
    """
    if spec == "all":
        return select_parameters(model), {}
    if spec != "kv":
        return select_parameters(model, spec), {}
    attention = anatomy_of(model).attentions[0]
    if hasattr(attention, "k_proj") and hasattr(attention, "v_proj"):
        return select_parameters(model, r"\.(k_proj|v_proj)\."), {}
    if hasattr(attention, "c_attn"):
        params = select_parameters(model, r"\.attn\.c_attn\.")
        masks = {}
        for name, p in params.items():
            mask = torch.ones_like(p)
            width = p.shape[-1] // 3  # Conv1D output columns: q | k | v
            mask[..., :width] = 0
            masks[name] = mask
        return params, masks
    raise InputError(f"train_params 'kv': no key/value projections found in {type(attention).__name__}")


def masked(gradients: GradientFn, masks: dict[str, torch.Tensor]) -> GradientFn:
    """The rule `gradients` with its gradients multiplied by `masks` where one is given."""
    if not masks:
        return gradients

    def apply(model, params, batch, create_graph):
        grads = gradients(model, params, batch, create_graph)
        return {name: g * masks[name] if name in masks else g for name, g in grads.items()}

    return apply


def finetune(model: torch.nn.Module, params: ParamDict, texts: Sequence[Sequence[int]], lr: float,
             gradients: GradientFn, pad_id: int) -> ParamDict:
    """GD as in Dai / Deutch: SGD, batch 1, one epoch over `texts` in order, on each text's mean next-token NLL.

    Returns detached adapted values of `params`; the model itself is not changed.
    """
    device = next(model.parameters()).device
    for ids in texts:
        batch = to_device(lm_batch([list(ids)], pad_id), device)
        params = inner_step(model, params, batch, lr=lr, differentiable=False, gradients=gradients)
    return params
