"""Hyperparameters of meta-training (no torch import: the CLI reads them for --help and checks)."""

from __future__ import annotations

from dataclasses import dataclass

from promptstep.errors import InputError

LM_SOURCES = ("prompt", "context")


LORA_MODES = ("none", "inner", "outer")

TEACHER_TARGETS = ("cached", "live")


@dataclass
class MetaOptions:
    """Hyperparameters of meta-training (the library-level view of the `meta-train` config)."""

    objective: str = "lc"
    inner_lr: float = 1e-3
    inner_steps: int = 1
    inner_params: str | None = None
    inner_rule: str = "sgd"
    first_order: bool = False
    outer_lr: float = 1e-5
    batch_size: int = 16
    clip: float = 1.0
    lm_weight: float = 0.0
    lm_source: str = "prompt"
    max_new_tokens: int = 16
    nan_patience: int = 3
    inner_k: int = 1  # contexts per inner step; the outer batch splits into batch_size / inner_k groups
    lora: str = "none"  # none | inner: a LoRA adapter is meta-learned and is what the inner step updates |
    # outer: a rank-r LoRA update of the weights is meta-learned, the inner step is full rank on the merged weights
    lora_rank: int | None = None  # default 8 for lora=inner, 1 for lora=outer (the paper's rank-1 outer update)
    lora_alpha: float | None = None  # default = lora_rank (scaling 1)
    lora_targets: str = "all-linear"  # PEFT target_modules: 'all-linear' or comma-separated module names
    precision: str = "fp32"
    grad_checkpointing: bool = False
    teacher_targets: str = "cached"  # LC: cached = the teacher's answer distributions computed once before training
    # and read from disk (no teacher forward per step, no teacher copy in memory while training; about
    # 4 bytes x vocab per answer token on disk); live = the frozen teacher runs at every step

    def inner(self):
        """The inner step being meta-trained for (also the FT step of this run's evaluations)."""
        from promptstep.updates import InnerStep

        return InnerStep(lr=self.inner_lr, steps=self.inner_steps, params=self.inner_params, rule=self.inner_rule)

    def validate(self) -> None:
        from promptstep.rules import RULES

        if self.inner_rule not in RULES:
            raise InputError(f"unknown inner_rule '{self.inner_rule}' (choose from {', '.join(RULES)})")
        if self.lm_source not in LM_SOURCES:
            raise InputError(f"unknown lm_source '{self.lm_source}' (choose from {', '.join(LM_SOURCES)})")
        if self.teacher_targets not in TEACHER_TARGETS:
            raise InputError(f"unknown teacher_targets '{self.teacher_targets}' (choose from "
                             f"{', '.join(TEACHER_TARGETS)})")
        if self.lora not in LORA_MODES:
            raise InputError(f"unknown lora '{self.lora}' (choose from {', '.join(LORA_MODES)})")
        for key in ("lora_rank", "lora_alpha"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if self.inner_k < 1 or self.batch_size % self.inner_k:
            raise InputError(f"inner_k must be >= 1 and divide batch_size (got inner_k={self.inner_k}, "
                             f"batch_size={self.batch_size})")
        for key in ("outer_lr", "clip", "batch_size", "inner_steps", "max_new_tokens", "nan_patience"):
            if getattr(self, key) <= 0:
                raise InputError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        for key in ("inner_lr", "lm_weight"):
            if getattr(self, key) < 0:
                raise InputError(f"config key '{key}' must be >= 0, got {getattr(self, key)}")
        from promptstep.meta.objectives import OBJECTIVES
        from promptstep.precision import compute_dtype

        compute_dtype(self.precision)
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective '{self.objective}' (choose from {', '.join(OBJECTIVES)})")
