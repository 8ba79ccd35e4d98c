"""Plain gradient descent: the gradient of the context's mean next-token NLL (the paper's inner step)."""

from __future__ import annotations

import torch
from torch.profiler import record_function

from promptstep.updates import ParamDict, lm_loss


def context_gradients(
    model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor], create_graph: bool
) -> ParamDict:
    """Gradient of the context's LM loss with respect to `params`, keeping the graph if asked."""
    with record_function("inner forward"):
        loss = lm_loss(model, params, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"inner loss is {loss.item()}")
    with record_function("inner backward (with graph)" if create_graph else "inner backward"):
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    return {name: (torch.zeros_like(p) if g is None else g) for (name, p), g in zip(params.items(), grads)}



gradients = context_gradients
