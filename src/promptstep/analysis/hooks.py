"""Where a model's blocks, attentions and logit-lens head are, and recording of per-layer attention states.

A recording forward keeps, for every layer, the attention output (after the output projection, before the
residual) at the last position, and the pre-softmax attention scores (scaled q·k, before the mask) from that
position to the last `n_keys` positions. Scores come from a custom entry in transformers' AttentionInterface
that reads query and key (after rotary embeddings) and then runs the model's own eager attention, so the
forward itself is unchanged. Supported: Llama-family and GPT-2-family models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from promptstep.anatomy import Anatomy, anatomy_of
from promptstep.errors import InputError

RECORDING_ATTENTION = "promptstep_recording"

# id(attention module) -> callback(query, key, scaling) while a recording forward is active
_SINKS: dict[int, Callable[[torch.Tensor, torch.Tensor, float], None]] = {}






def _eager_attention(module: torch.nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file."""
    function = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
    if function is None:
        raise InputError(f"{type(module).__name__} has no eager attention to record scores from")
    return function


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Hand query and key to the active sink (if any), then compute attention exactly as eager does."""
    sink = _SINKS.get(id(module))
    if sink is not None:
        sink(query, key, query.shape[-1] ** -0.5 if scaling is None else scaling)
    return _eager_attention(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                    **kwargs)


def last_position_scores(query: torch.Tensor, key: torch.Tensor, scaling: float, n_keys: int) -> torch.Tensor:
    """(heads, n_keys) scaled q·k from the last query position to the last `n_keys` keys (first batch row).

    Grouped-query keys are shared by consecutive heads, as in transformers' repeat_kv.
    """
    groups = query.shape[1] // key.shape[1]
    keys = key[0, :, -n_keys:].repeat_interleave(groups, dim=0)
    return torch.einsum("hd,hnd->hn", query[0, :, -1], keys) * scaling


@dataclass(frozen=True)
class Recording:
    """One sequence's states: per layer at the last position, plus the next-token logits where asked."""

    attn_out: torch.Tensor  # (layers, hidden)
    scores: torch.Tensor  # (layers, heads, n_keys), pre-softmax
    logits: torch.Tensor  # (vocab,)


@contextmanager
def _recording(model: torch.nn.Module, anatomy: Anatomy, n_keys: int, outputs: list, scores: list) -> Iterator[None]:
    AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
    AttentionMaskInterface.register(RECORDING_ATTENTION, eager_mask)
    handles = []
    for index, attention in enumerate(anatomy.attentions):

        def keep_output(_module, _args, output, index=index):
            outputs[index] = (output[0] if isinstance(output, tuple) else output)[0, -1]

        def keep_scores(query, key, scaling, index=index):
            scores[index] = last_position_scores(query, key, scaling, n_keys)

        handles.append(attention.register_forward_hook(keep_output))
        _SINKS[id(attention)] = keep_scores
    previous = model.config._attn_implementation
    model.config._attn_implementation = RECORDING_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for handle in handles:
            handle.remove()
        for attention in anatomy.attentions:
            _SINKS.pop(id(attention), None)


@torch.no_grad()
def record(model: torch.nn.Module, ids: Sequence[int], n_keys: int, logits_at: int = -1) -> Recording:
    """Forward one sequence and record every layer's attention output and scores at its last token.

    The scores run to the last `n_keys` tokens (the test input); the logits are those at `logits_at` (< 0).
    """
    if not 0 < n_keys <= len(ids) or not -len(ids) <= logits_at < 0:
        raise ValueError(f"need 0 < n_keys <= {len(ids)} and -{len(ids)} <= logits_at < 0")
    anatomy = anatomy_of(model)
    n_layers = len(anatomy.layers)
    outputs: list = [None] * n_layers
    scores: list = [None] * n_layers
    device = next(model.parameters()).device
    with _recording(model, anatomy, n_keys, outputs, scores):
        logits = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False,
                       logits_to_keep=-logits_at).logits
    return Recording(torch.stack(outputs).float(), torch.stack(scores).float(), logits[0, logits_at].float())
