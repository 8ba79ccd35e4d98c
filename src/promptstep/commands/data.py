"""`promptstep data TASK --out DIR`: build a triplet dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.commands.common import (
    positive,
)
from promptstep.config import config_dict
from promptstep.data.triplets import Triplet, write_triplets
from promptstep.errors import InputError
from promptstep.runs import staged_dir, write_json, write_yaml


@dataclass
class DataConfig:
    """`promptstep data TASK --out DIR`: build a triplet dataset (train.jsonl, test.jsonl, meta.json, config.yaml)."""

    task: str = "character"
    """Dataset to build: character, reversal (generated), squad, wikitext (from source or the hub) or wiki-offline (the
    Wikipedia sample in gensim's test data)."""
    out: str = ""
    """Directory to write. Required."""
    n_train: int | None = None
    """Training triplets (default: 5000 for generated tasks, every usable record for real text)."""
    n_test: int | None = None
    """Test triplets (default: 500 for generated tasks, every usable record for real text)."""
    seed: int = 0
    """Seed of the generator and of sampling real text down to n_train / n_test."""
    source: str | None = None
    """squad, wikitext, wiki-offline: a directory or file holding the official files, or a hub id (default: the hub's
    dataset; wiki-offline: gensim's copy)."""
    variant: str = "wikitext-103-raw-v1"
    """wikitext from the hub: wikitext-103-raw-v1 or wikitext-2-raw-v1."""
    query_words: int = 1
    """wikitext, wiki-offline: words in the query, right after the context."""
    answer_words: int = 5
    """wikitext, wiki-offline: words in the answer, right after the query."""
    min_context_words: int = 20
    """wikitext, wiki-offline: shortest context in words (its length is drawn uniformly between min and max)."""
    max_context_words: int = 150
    """wikitext, wiki-offline: longest context in words."""
    min_paragraph_words: int = 30
    """wiki-offline: shortest paragraph kept, in words."""
    max_passage_words: int | None = None
    """squad: drop passages longer than this many words (default: keep all)."""
    # character / reversal only (synthetic.SyntheticOptions; the defaults give the original files byte for byte):
    facts: tuple[int, ...] = (1,)
    """character, reversal: facts per context, drawn uniformly from the list (1,2,2: two facts twice as often as
    one)."""
    same_family: float = 0.25
    """character, reversal: probability that a distractor fact is of the queried family (another filler)."""
    same_filler: float = 0.25
    """character, reversal: probability that a distractor fact is of another family about the queried filler."""
    name_styles: tuple[str, ...] = ("invented",)
    """character, reversal: name styles, one drawn per triplet: invented, common, initials, titled, hyphenated."""
    heldout_families: int = 0
    """character, reversal: K > 0 keeps K families out of train and test; they make test_families.jsonl."""
    templates: str = "canonical"
    """character, reversal: fact phrasings: canonical, or varied (8 phrasings per order)."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""

    def validate(self) -> None:
        if not self.out:
            raise InputError("data needs --out DIR")
        for key in ("n_train", "n_test", "max_passage_words"):
            if getattr(self, key) is not None:
                positive(key, getattr(self, key))
        positive("min_paragraph_words", self.min_paragraph_words)
        self.spans().validate()
        from promptstep.data.synthetic import SyntheticOptions

        options = self.synthetic()
        options.validate()
        if self.task in REAL_TASKS and options != SyntheticOptions():
            raise InputError("options facts, same_family, same_filler, name_styles, heldout_families and templates "
                             f"apply only to the character and reversal tasks, not to {self.task}")

    def synthetic(self):
        from promptstep.data.synthetic import SyntheticOptions

        return SyntheticOptions(facts=self.facts, same_family=self.same_family, same_filler=self.same_filler,
                                name_styles=self.name_styles, heldout_families=self.heldout_families,
                                templates=self.templates)

    def spans(self):
        from promptstep.data.prose import SpanOptions

        return SpanOptions(self.query_words, self.answer_words, self.min_context_words, self.max_context_words)


SYNTHETIC_SIZES = {"train": 5000, "test": 500}


REAL_TASKS = ("squad", "wikitext", "wiki-offline")


def _real_split(config: DataConfig, split: str) -> tuple[list[Triplet], dict]:
    """One split of a real-text task, sampled down to n_train / n_test, and how many records were kept/dropped."""
    from promptstep.data.prose import prose_triplets, sample

    if config.task == "squad":
        from promptstep.data.squad import squad_rows, squad_triplets

        triplets, dropped = squad_triplets(squad_rows(config.source or "rajpurkar/squad", split),
                                           max_context_words=config.max_passage_words)
    else:
        if config.task == "wikitext":
            from promptstep.data.wikitext import DEFAULT_HUB, load_wikitext

            paragraphs = load_wikitext(config.source or DEFAULT_HUB, split, config.variant)
        else:
            from promptstep.data.wiki_offline import wiki_offline_paragraphs

            paragraphs = wiki_offline_paragraphs(split, config.min_paragraph_words,
                                                 Path(config.source) if config.source else None)
        triplets, dropped = prose_triplets(paragraphs, config.spans(), config.seed)
    if not triplets:
        raise InputError(f"{config.task} {split}: preprocessing kept no records ({dict(dropped)})")
    limit = config.n_train if split == "train" else config.n_test
    kept = sample(triplets, limit, config.seed)
    return kept, {"records": len(triplets) + sum(dropped.values()), "usable": len(triplets), "kept": len(kept),
                  "dropped": dict(dropped)}


def run_data(config: DataConfig) -> Path:
    from promptstep.data.synthetic import TASKS, generate_splits
    from promptstep.runs import check_run_dir

    out = Path(config.out)
    check_run_dir(out, config.overwrite)
    if config.task in TASKS:
        splits, meta = generate_splits(config.task, config.n_train or SYNTHETIC_SIZES["train"],
                                       config.n_test or SYNTHETIC_SIZES["test"], config.seed, config.synthetic())
        train, test = splits["train"], splits["test"]
    elif config.task in REAL_TASKS:
        (train, train_stats), (test, test_stats) = (_real_split(config, s) for s in ("train", "test"))
        meta = {"task": config.task, "source": config.source, "seed": config.seed, "train": train_stats,
                "test": test_stats}
        splits = {"train": train, "test": test}
        for split, stats in (("train", train_stats), ("test", test_stats)):
            reasons = ", ".join(f"{n} {why}" for why, n in stats["dropped"].items()) or "none"
            print(f"{split}: {stats['records']} records, {stats['usable']} usable (dropped: {reasons}), "
                  f"kept {stats['kept']}")
    else:
        raise InputError(f"unknown data task '{config.task}' (choose from {', '.join((*TASKS, *REAL_TASKS))})")
    with staged_dir(out, config.overwrite) as staging:
        for split, items in splits.items():  # train, test and, with held-out families, test_families
            write_triplets(staging / f"{split}.jsonl", items)
        write_json(staging / "meta.json", meta)
        write_yaml(staging / "config.yaml", config_dict(config))
    print(f"wrote {' / '.join(f'{len(items)} {split}' for split, items in splits.items())} triplets to {out}")
    return out
