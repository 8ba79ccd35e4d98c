"""Meta-training (paper §3): options, objectives, the LC teacher, the trainer, LoRA variants, the outer loop.

Names are re-exported lazily (`from promptstep.meta import MetaTrainer`), so importing `promptstep.meta.options`
loads no torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MetaOptions": "options", "LM_SOURCES": "options", "LORA_MODES": "options",
    "MetaTrainer": "trainer", "build_trainer": "lora", "OuterLoraTrainer": "lora",
    "batches_for": "loop", "epoch_order": "loop", "eval_summary": "loop", "run_training": "loop",
    "teacher_answers": "teacher",
    "MetaExample": "objectives", "build_example": "objectives", "OBJECTIVES": "objectives",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
