"""`promptstep pretrain-tiny`: train the tiny model from scratch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    positive,
)
from promptstep.runs import staged_dir


@dataclass
class PretrainTinyConfig:
    """`promptstep pretrain-tiny`: train the tiny model's tokenizer and weights from scratch on generated text."""

    out: str = ""
    """Directory to write the model to (default: the tiny model shipped inside the package, replaced)."""
    steps: int = 1000
    """AdamW steps."""
    batch_size: int = 32
    """Generated episodes per step."""
    lr: float = 3e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the generated text and of the initialisation."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""

    def validate(self) -> None:
        for key in ("steps", "batch_size", "lr"):
            positive(key, getattr(self, key))


def run_pretrain_tiny(config: PretrainTinyConfig) -> Path:
    from promptstep.tiny import default_tiny_dir, pretrain_tiny

    out = Path(config.out) if config.out else default_tiny_dir()
    with staged_dir(out, config.overwrite) as staging:
        pretrain_tiny(staging, config.steps, seed=config.seed, batch_size=config.batch_size, lr=config.lr)
    print(f"tiny model in {out}")
    return out
