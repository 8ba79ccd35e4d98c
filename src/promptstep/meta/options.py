"""Hyperparameters of meta-training (no torch import: the CLI reads them for --help and checks)."""

from __future__ import annotations

from dataclasses import dataclass

from promptstep.errors import InputError

LM_SOURCES = ("prompt", "context", "text")


LORA_MODES = ("none", "inner", "outer")

TEACHER_TARGETS = ("cached", "live")


@dataclass
class MetaOptions:
    """Hyperparameters of meta-training (the library-level view of the `meta-train` config)."""

    objective: str = "lc"
    """Outer objective: lc (learning from conditioning: match the prompted teacher's answer distribution) or lg
    (learning from gold answers: their NLL after the step)."""
    inner_lr: float = 1e-3
    """Learning rate η of the inner step on the context (also the FT step of this run's evaluations)."""
    inner_steps: int = 1
    """Gradient steps of the inner update."""
    inner_params: str | None = None
    """Parameters the inner step updates: all (default), kv (key/value projections) or a regex on parameter names."""
    inner_rule: str = "sgd"
    """Inner update rule: sgd (plain gradient step) or lcgd (Layer-Causal GD: each block follows its own layer's
    loss)."""
    first_order: bool = False
    """Treat the inner gradient as a constant (first order, about 2x faster) instead of differentiating through it."""
    outer_lr: float = 1e-5
    """Adam learning rate of the outer (meta) update."""
    batch_size: int = 16
    """Examples per outer step; they are processed one after another with the gradient accumulated, so memory does not
    grow with it."""
    clip: float = 1.0
    """Largest gradient norm of an outer step (norms before clipping are logged)."""
    lm_weight: float = 0.0
    """Weight λ of the language-modelling regulariser at the pre-update weights (0 = off)."""
    lm_source: str = "prompt"
    """Regulariser: prompt (the objective in the Prompt format), context (the context's next-token loss), text (on
    general text: meta-train's lm_texts), or several joined by + (prompt+text), each weighted lm_weight."""
    lm_text_tokens: int = 128
    """lm_source text: tokens of each general-text passage the regulariser reads (its first ones)."""
    max_new_tokens: int = 16
    """Longest greedy answer generated, for the LC teacher's answers and for the evaluations."""
    nan_patience: int = 3
    """Non-finite outer steps in a row (each is skipped) after which the run stops at its last good checkpoint."""
    inner_k: int = 1
    """Contexts per inner step (paper Table 2): the outer batch splits into batch_size / inner_k groups, each stepped
    on its contexts at once."""
    lora: str = "none"
    """LoRA variant: none; inner (a meta-learned adapter is all the inner step updates); outer (a meta-learned low-rank
    update of the weights, inner step full rank)."""
    lora_rank: int | None = None
    """LoRA rank (default: 8 for lora inner, 1 for lora outer, the paper's rank-1 outer update)."""
    lora_alpha: float | None = None
    """LoRA alpha (default: the rank, i.e. scaling 1)."""
    lora_targets: str = "all-linear"
    """Modules LoRA adapts (PEFT target_modules): all-linear or comma-separated module names."""
    precision: str = "fp32"
    """Meta-step precision: fp32, or bf16 (forward passes under autocast; weights, gradients, Adam and losses stay
    fp32)."""
    grad_checkpointing: bool = False
    """Recompute each layer's activations during backward to save memory (exact: the recomputation uses the weights of
    the forward pass)."""
    teacher_targets: str = "cached"
    """LC teacher targets: cached (computed once, read from disk, teacher copy freed; 4 bytes x vocab per answer token)
    or live (the frozen teacher runs at every step)."""

    def lm_sources(self) -> tuple[str, ...]:
        """The regulariser's sources: lm_source split at +."""
        return tuple(part.strip() for part in self.lm_source.split("+"))

    def inner(self):
        """The inner step being meta-trained for (also the FT step of this run's evaluations)."""
        from promptstep.updates import InnerStep

        return InnerStep(lr=self.inner_lr, steps=self.inner_steps, params=self.inner_params, rule=self.inner_rule)

    def validate(self) -> None:
        from promptstep.rules import NO_ADAPTERS, RULES

        if self.inner_rule not in RULES:
            raise InputError(f"unknown inner_rule '{self.inner_rule}' (choose from {', '.join(RULES)})")
        if self.lora != "none" and self.inner_rule in NO_ADAPTERS:
            raise InputError(f"inner_rule '{self.inner_rule}' does not work with lora '{self.lora}': "
                             f"{NO_ADAPTERS[self.inner_rule]}")
        sources = self.lm_sources()
        unknown = next((source for source in sources if source not in LM_SOURCES), None)
        if unknown is not None or not sources:
            raise InputError(f"unknown lm_source '{self.lm_source}' (choose from {', '.join(LM_SOURCES)}, or several "
                             f"joined by +)")
        if len(set(sources)) != len(sources):
            raise InputError(f"lm_source '{self.lm_source}' names a source twice")
        if self.lm_text_tokens < 2:
            raise InputError(f"config key 'lm_text_tokens' must be >= 2, got {self.lm_text_tokens}")
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
