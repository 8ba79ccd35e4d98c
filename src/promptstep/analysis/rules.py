"""FT-side update rules: vanilla GD as in Dai / Deutch et al., and Layer-Causal GD (papers.md §2, §3.4).

Both are gradient functions for `updates.inner_step` (signature `updates.GradientFn`), so the same rule serves
the analysis, evaluation and the inner step of meta-training (`MetaOptions.inner_rule`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from promptstep.analysis.hooks import Anatomy, anatomy_of
from promptstep.errors import InputError
from promptstep.formats import lm_batch, to_device
from promptstep.updates import GradientFn, ParamDict, at_least_fp32, context_gradients, inner_step, select_parameters


def layer_losses(model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor],
                 anatomy: Anatomy | None = None) -> list[torch.Tensor]:
    """Per block: mean next-token NLL of the block's output read through U (final norm + unembedding).

    One ordinary forward with `params` substituted; the last block's term is the model's own LM loss.
    """
    anatomy = anatomy or anatomy_of(model)
    logits: list[torch.Tensor] = []

    def read(_module, _args, output):
        logits.append(anatomy.unembed(output[0] if isinstance(output, tuple) else output))

    handles = [layer.register_forward_hook(read) for layer in anatomy.layers]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False,
              "logits_to_keep": 1}
    try:
        functional_call(model, params, args=(), kwargs=inputs)
    finally:
        for handle in handles:
            handle.remove()
    labels = batch["labels"][:, 1:].flatten()
    return [F.cross_entropy(at_least_fp32(x[:, :-1]).flatten(0, 1), labels, ignore_index=-100) for x in logits]


def layer_causal_gradients(model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor],
                           create_graph: bool) -> ParamDict:
    """Layer-Causal GD (Deutch et al. 2024): the gradient of Σ_l loss_l with every block's input stop-gradiented.

    loss_l is block l's logit-lens loss (`layer_losses`), U frozen. With each block's input a constant, block l's
    parameters get the gradient of loss_l only — never of the losses above it — and parameters outside the blocks
    (embeddings, final norm, head) get zero. It is computed as ∂loss_l/∂θ_l for each block, which equals the
    stop-gradient form but keeps each block's input a function of the lower blocks, so with `create_graph` the
    result is exactly differentiable for second-order meta-gradients.
    """
    anatomy = anatomy_of(model)
    losses = layer_losses(model, params, batch, anatomy)
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    for index, loss in enumerate(losses):
        names = [name for name in params if anatomy.layer_of(name) == index]
        if not names:
            continue
        if not torch.isfinite(loss):
            raise FloatingPointError(f"layer {index} loss is {loss.item()}")
        values = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        grads.update({name: g for name, g in zip(names, values) if g is not None})
    return grads


INNER_RULES: dict[str, GradientFn] = {"sgd": context_gradients, "lcgd": layer_causal_gradients}


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
