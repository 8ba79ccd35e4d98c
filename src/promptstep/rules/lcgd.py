"""Layer-Causal GD (Deutch et al. 2024): each block trained on its own logit-lens loss, inputs stop-gradiented."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.profiler import record_function

from promptstep.anatomy import Anatomy, anatomy_of
from promptstep.updates import ParamDict, at_least_fp32


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
    with record_function("inner forward"):
        losses = layer_losses(model, params, batch, anatomy)
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    for index, loss in enumerate(losses):
        names = [name for name in params if anatomy.layer_of(name) == index]
        if not names:
            continue
        if not torch.isfinite(loss):
            raise FloatingPointError(f"layer {index} loss is {loss.item()}")
        with record_function("inner backward (with graph)" if create_graph else "inner backward"):
            values = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph,
                                         retain_graph=True, allow_unused=True)
        grads.update({name: g for name, g in zip(names, values) if g is not None})
    return grads



gradients = layer_causal_gradients
