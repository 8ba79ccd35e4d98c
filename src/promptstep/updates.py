"""The inner step every command shares: `InnerStep` (rule, learning rate, steps, parameter subset), applied as a
pure function from a parameter dict and a batch to adapted parameters.

The same step is FT in evaluation (no graph), the inner step of meta-training (a graph through the step, so the
outer gradient is exact second order unless `first_order`), the irrelevant-context and multi-context controls,
the analysis instruments and injection. A rule is a module of `promptstep.rules`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module
from torch.profiler import record_function

from promptstep.errors import InputError

ParamDict = dict[str, torch.Tensor]
# (model, params, batch, create_graph) -> gradient of the rule's loss for every entry of params, as new tensors (a
# step without a graph turns them into the updated parameters in place).
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


def parameter_subset(model: torch.nn.Module, spec: str | None) -> tuple[ParamDict, dict[str, torch.Tensor]]:
    """The parameters an inner step updates, with 0/1 gradient masks for parameters updated only in part.

    spec: None or "all" = every trainable parameter; "kv" = the key and value projections of every layer (Dai /
    Deutch; for GPT-2's fused c_attn the K and V columns, the Q columns masked); else a regex searched in names.
    """
    if spec is None or spec == "all":
        return select_parameters(model), {}
    if spec != "kv":
        return select_parameters(model, spec), {}
    from promptstep.anatomy import anatomy_of

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
    raise InputError(f"parameter subset 'kv': no key/value projections found in {type(attention).__name__}")


def masked(gradients: GradientFn, masks: dict[str, torch.Tensor]) -> GradientFn:
    """The rule `gradients` with its gradients multiplied by `masks` where one is given."""
    if not masks:
        return gradients

    def apply(model, params, batch, create_graph):
        grads = gradients(model, params, batch, create_graph)
        return {name: g * masks[name] if name in masks else g for name, g in grads.items()}

    return apply


def forward_takes(model: torch.nn.Module, argument: str) -> bool:
    """Whether the model's forward (for a PEFT model, the wrapped model's) has a parameter named `argument`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = (type(base), argument)
    if key not in _FORWARD_TAKES:
        try:
            _FORWARD_TAKES[key] = argument in inspect.signature(base.forward).parameters
        except (TypeError, ValueError):
            _FORWARD_TAKES[key] = False
    return _FORWARD_TAKES[key]


_FORWARD_TAKES: dict[tuple[type, str], bool] = {}


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs: the LM head runs only at the
    last positions asked for, which saves its vocab-sized matmul and logits at every other position)."""
    return forward_takes(model, "logits_to_keep")


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


def sgd_update(params: ParamDict, grads: ParamDict, lr: float, own_grads: bool = False) -> ParamDict:
    """theta - lr * grad for every entry.

    Computed as (grad * -lr) + theta, which rounds to the same floats as theta - lr * grad but allocates one
    model-sized tensor instead of two (none with `own_grads`: the gradients, which no graph holds, are overwritten
    in place), and through a graph its backward needs no negation.
    """
    if own_grads:
        return {name: grads[name].mul_(-lr).add_(p) for name, p in params.items()}
    return {name: (grads[name] * -lr).add_(p) for name, p in params.items()}




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

    `gradients` is the rule's gradient (a `promptstep.rules` module's `gradients`): by default plain SGD on the
    context's LM loss. differentiable=True keeps the result a function of
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
        constant = not differentiable or first_order
        if constant:
            grads = {n: g.detach() for n, g in grads.items()}
        params = sgd_update(params, grads, lr, own_grads=constant)
        if not differentiable:
            params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return {n: p.detach() for n, p in params.items()} if not differentiable else params


@contextmanager
def swapped_parameters(model: torch.nn.Module, values: ParamDict) -> Iterator[None]:
    """Temporarily copy `values` into the model's parameters; restore the originals bit-exactly on exit."""
    named = dict(model.named_parameters())
    with record_function("weight swap in"):
        saved = {name: named[name].detach().clone() for name in values}
    try:
        with torch.no_grad(), record_function("weight swap in"):
            for name, value in values.items():
                named[name].copy_(value)
        yield
    finally:
        with torch.no_grad(), record_function("weight restore"):
            for name, value in saved.items():
                named[name].copy_(value)


@contextmanager
def substituted_parameters(model: torch.nn.Module, values: ParamDict) -> Iterator[None]:
    """Within the block the model computes with `values` in place of its parameters of those names (tied weights
    follow; each value requires grad as the parameter it replaces does). Nothing is copied and the model's own
    tensors are never written, so on exit it is exactly as before."""
    named = dict(model.named_parameters())
    values = {name: value.requires_grad_(named[name].requires_grad) if value.is_leaf else value
              for name, value in values.items()}
    with _reparametrize_module(model, values, tie_weights=True, strict=False):
        yield


@dataclass(frozen=True)
class InnerStep:
    """The inner update: `steps` steps of rule `rule` with learning rate `lr` on the parameters `params` selects
    (see `parameter_subset`). Built the same way by every command from its config (`config.inner()`)."""

    lr: float = 1e-3
    steps: int = 1
    params: str | None = None
    rule: str = "sgd"

    def with_lr(self, lr: float) -> InnerStep:
        return replace(self, lr=lr)

    def parameters(self, model: torch.nn.Module) -> ParamDict:
        """The parameters this step updates (current values, still attached to the model)."""
        return parameter_subset(model, self.params)[0]

    def gradients(self, model: torch.nn.Module) -> GradientFn:
        """The rule's gradient function for `model` (masked where the subset covers a parameter in part)."""
        from promptstep.rules import gradient_fn

        return masked(gradient_fn(self.rule), parameter_subset(model, self.params)[1])

    def __call__(self, model: torch.nn.Module, params: ParamDict, batch: dict[str, torch.Tensor], *,
                 differentiable: bool = False, first_order: bool = False) -> ParamDict:
        """The step from `params` on `batch` (see `inner_step` for `differentiable` and `first_order`)."""
        return inner_step(model, params, batch, lr=self.lr, steps=self.steps, first_order=first_order,
                          differentiable=differentiable, gradients=self.gradients(model))

    def adapted(self, model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                params: ParamDict | None = None) -> ParamDict:
        """Detached values of the parameters after this step on each batch in turn (one text after another, as
        continual fine-tuning), starting from `params` (default: the model's own)."""
        params = self.parameters(model) if params is None else params
        gradients = self.gradients(model)
        for batch in batches:
            params = inner_step(model, params, batch, lr=self.lr, steps=self.steps, differentiable=False,
                                gradients=gradients)
        return params

    def adapted_each(self, model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                     lrs: Sequence[float]) -> Iterator[ParamDict]:
        """`with_lr(lr).adapted(model, batches)` for each learning rate in turn, bit for bit; for one step on one
        batch the gradient is computed once and shared (the update is then all that differs between them)."""
        if self.steps != 1 or len(batches) != 1 or len(lrs) < 2:
            for lr in lrs:
                yield self.with_lr(lr).adapted(model, batches)
            return
        if min(lrs) < 0:
            raise InputError(f"inner step needs lr >= 0 (got {min(lrs)})")
        params = {n: p.detach().requires_grad_(True) for n, p in self.parameters(model).items()}
        with torch.enable_grad():
            grads = self.gradients(model)(model, params, batches[0], False)
        grads = {n: g.detach() for n, g in grads.items()}
        start = {n: p.detach() for n, p in params.items()}
        for lr in lrs:
            yield sgd_update(start, grads, lr)

    @contextmanager
    def applied(self, model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> Iterator[None]:
        """Within the block the model answers with the weights after this step on `batches`; on exit it is exactly
        as before (take a step, answer, restore). The stepped tensors are substituted for the model's
        (`substituted_parameters`), not copied into them and back."""
        with record_function("FT step"):
            adapted = self.adapted(model, batches)
        with substituted_parameters(model, adapted):
            yield

