"""`promptstep distract`: multi-fact contexts built from a dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.config import config_dict
from promptstep.data.triplets import load_triplets, write_triplets
from promptstep.errors import InputError
from promptstep.runs import (
    safe_name,
    staged_dir,
    write_json,
    write_yaml,
)


@dataclass
class DistractConfig:
    """`promptstep distract --data DIR --out DIR2`: multi-fact contexts, each the queried fact plus
    `distractors` facts of other triplets of the same split (for training and evaluation)."""

    data: str = ""
    """Dataset directory to read. Required."""
    out: str = ""
    """Directory to write. Required."""
    distractors: int = 2
    """Facts of other triplets of the same split added to each context."""
    splits: tuple[str, ...] = ("train", "test")
    """Splits to convert (<data>/<split>.jsonl)."""
    seed: int = 0
    """Seed of the distractors' choice and of the order of facts."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""

    def validate(self) -> None:
        if not self.data or not self.out:
            raise InputError("distract needs --data DIR and --out DIR")
        if self.distractors < 0:
            raise InputError(f"config key 'distractors' must be >= 0, got {self.distractors}")


def run_distract(config: DistractConfig) -> Path:
    from promptstep.experiments.controls import with_distractors

    sources = {split: Path(config.data) / f"{safe_name(split, 'split name')}.jsonl" for split in config.splits}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise InputError(f"distract: no such file {missing[0]}")
    out = Path(config.out)
    with staged_dir(out, config.overwrite) as staging:
        counts = {}
        for split, path in sources.items():
            made = with_distractors(load_triplets(path), config.distractors, config.seed)
            write_triplets(staging / f"{split}.jsonl", made)
            counts[split] = len(made)
        write_json(staging / "meta.json", {"source": config.data, "distractors": config.distractors,
                                           "seed": config.seed, "counts": counts})
        write_yaml(staging / "config.yaml", config_dict(config))
    print(f"wrote {counts} multi-fact triplets ({config.distractors} distractors each) to {out}")
    return out
