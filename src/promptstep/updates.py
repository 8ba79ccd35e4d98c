"""Inner update rules as pure functions from a parameter dict and a batch to adapted parameters.

The same functions serve evaluation (no graph) and meta-training (a graph through the step, so the outer
gradient is exact second order unless `first_order`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.func import functional_call

from promptstep.errors import InputError

ParamDict = dict[str, torch.Tensor]
# (model, params, batch, create_graph) -> gradient of the rule's loss for every entry of params.
GradientFn = Callable[[torch.nn.Module, ParamDict, dict[str, torch.Tensor], bool], ParamDict]


def select_parameters(model: torch.nn.Module, pattern: str | None = None, include_frozen: bool = False) -> ParamDict:
    """The model's trainable (or, with `include_frozen`, all) parameters whose names match `pattern` (a regex
    searched in the name; all if None)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or include_frozen}
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise InputError(f"param_filter {pattern!r} is not a valid regex ({err})") from None
        params = {n: p for n, p in params.items() if regex.search(n)}
        if not params:
            raise InputError(f"param_filter {pattern!r} matches no parameter of the model")
    return params


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision values to fp32; keep fp32 and fp64 as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def lm_loss(model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token NLL over the labelled tokens of `batch` under the model with `params` substituted."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    logits = functional_call(model, params, args=(), kwargs=inputs).logits
    return torch.nn.functional.cross_entropy(
        at_least_fp32(logits[:, :-1]).flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )


def sgd_update(params: ParamDict, grads: ParamDict, lr: float) -> ParamDict:
    """theta - lr * grad for every entry."""
    return {name: p - lr * grads[name] for name, p in params.items()}




def inner_step(
    model: torch.nn.Module,
    params: ParamDict,
    batch: dict[str, torch.Tensor],
    *,
    lr: float,
    steps: int = 1,
    first_order: bool = False,
    differentiable: bool = True,
    gradients: GradientFn | None = None,
) -> ParamDict:
    """`steps` plain SGD steps of size `lr` on the LM loss of `batch`.

    `gradients` is the rule's gradient: by default that of the context's LM loss (Layer-Causal GD is
    promptstep.analysis.rules.layer_causal_gradients). differentiable=True keeps the result a function of
    `params` (second order unless `first_order`, where the gradients are treated as constants);
    differentiable=False returns detached tensors for evaluation.
    """
    if gradients is None:
        from promptstep.rules import gradient_fn

        gradients = gradient_fn("sgd")
    if lr < 0 or steps < 1:
        raise InputError(f"inner step needs lr >= 0 and steps >= 1 (got lr={lr}, steps={steps})")
    if not differentiable:
        params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    for _ in range(steps):
        with torch.enable_grad():
            grads = gradients(model, params, batch, differentiable and not first_order)
        if not differentiable or first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        params = sgd_update(params, grads, lr)
        if not differentiable:
            params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return {n: p.detach() for n, p in params.items()} if not differentiable else params


@contextmanager
def swapped_parameters(model: torch.nn.Module, values: ParamDict) -> Iterator[None]:
    """Temporarily copy `values` into the model's parameters; restore the originals bit-exactly on exit."""
    named = dict(model.named_parameters())
    saved = {name: named[name].detach().clone() for name in values}
    try:
        with torch.no_grad():
            for name, value in values.items():
                named[name].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                named[name].copy_(value)
