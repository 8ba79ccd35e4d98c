"""How the meta-step runs on an accelerator: bf16 autocast, the MATH attention rule, activation checkpointing.

* `precision="bf16"`: forward passes under `torch.autocast(bfloat16)`; the parameters (master weights), their
  gradients, Adam and every loss (log-softmax, KL, NLL) stay fp32.
* Attention: fused SDPA kernels (flash, memory-efficient, CPU flash) have no double backward, so the meta-step
  and its recomputations run under `sdpa_kernel([SDPBackend.MATH])`, on CPU and CUDA alike; eager attention is
  unaffected.
* Activation checkpointing (non-reentrant, per decoder layer, transformers' own): HF recomputes a layer during
  backward from the module's *current* attributes, but the inner step runs the model through
  `functional_call`, whose adapted weights are swapped out again by then. The recomputation is therefore run with
  the weights that the layer saw in its forward pass (checkpoint's `context_fn`), which keeps the second-order
  meta-gradient exact (tested against the unchecked gradient).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.stateless import _reparametrize_module
from transformers.modeling_layers import GradientCheckpointingLayer

from promptstep.errors import InputError

PRECISIONS = ("fp32", "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of matrix products under `precision` (fp32 or bf16)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse bf16 on a GPU that cannot compute in it."""
    if compute_dtype(precision) == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use fp32")


class _Recompute:
    """Re-entrant context for checkpoint recomputation: the layer weights of the original forward, MATH attention."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        self.model, self.weights = model, weights
        self.stacks: list[ExitStack] = []

    def __enter__(self) -> None:
        stack = ExitStack()
        stack.enter_context(_reparametrize_module(self.model, self.weights))
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        self.stacks.append(stack)

    def __exit__(self, *exc) -> None:
        self.stacks.pop().close()


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers that transformers can checkpoint."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Turn on non-reentrant per-layer activation checkpointing that is exact through `functional_call`.

    It takes effect only inside `meta_step_context(..., checkpointing=True)`: transformers checkpoints a layer
    only while that layer is in training mode, and the model otherwise stays in eval mode.
    """
    layers = checkpointed_layers(model)
    if not layers or not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError(f"{type(model).__name__} cannot checkpoint its layers; set grad_checkpointing false")
    names = [f"{prefix}.{name}" for prefix, module in model.named_modules()
             if isinstance(module, GradientCheckpointingLayer) for name, _ in module.named_parameters()]
    getters = [(name, operator.attrgetter(name)) for name in names]

    def context_fn():
        weights = {name: get(model) for name, get in getters}  # the tensors this forward pass is using
        return nullcontext(), _Recompute(model, weights)

    model.activation_checkpointing_enable({"use_reentrant": False, "context_fn": context_fn})


@contextmanager
def meta_step_context(model: torch.nn.Module, precision: str = "fp32", checkpointing: bool = False
                      ) -> Iterator[None]:
    """Forward passes of the meta-step: autocast for bf16, MATH attention, checkpointed layers if enabled."""
    device = next(model.parameters()).device
    layers = checkpointed_layers(model) if checkpointing else []
    with ExitStack() as stack:
        if compute_dtype(precision) != torch.float32:
            stack.enter_context(torch.autocast(device.type, dtype=compute_dtype(precision)))
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        modes = [layer.training for layer in layers]
        for layer in layers:
            layer.training = True  # the layer object alone: its dropout submodules stay in eval mode
        try:
            yield
        finally:
            for layer, mode in zip(layers, modes):
                layer.training = mode
