"""WikiText paragraphs (the raw variants, -2 or -103) from local `wiki.*.raw` files or the hub.

A record is one paragraph: a non-empty line that is not a ` = Heading = ` line. The raw files keep WikiText's
tokenised spacing and its `@-@`, `@,@`, `@.@` joiners; both are undone so the model reads ordinary prose.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from promptstep.data.hub import load_hub_split
from promptstep.data.prose import tidy_spacing
from promptstep.errors import InputError
from promptstep.files import file_kind, looks_like_path, read_text

RAW_FILES = {"train": "wiki.train.raw", "test": "wiki.test.raw", "valid": "wiki.valid.raw"}
HUB_SPLITS = {"train": "train", "test": "test", "valid": "validation"}
DEFAULT_HUB = "Salesforce/wikitext"
DEFAULT_VARIANT = "wikitext-103-raw-v1"
_JOINERS = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}


def wikitext_paragraphs(lines: Iterable[str], prefix: str) -> list[tuple[str, str]]:
    """(id, paragraph) for every prose line; ids are `prefix`-<line number> so they stay stable across limits."""
    paragraphs = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or (text.startswith("=") and text.endswith("=")):
            continue
        for joiner, char in _JOINERS.items():
            text = text.replace(joiner, char)
        paragraphs.append((f"{prefix}-{number}", tidy_spacing(text)))
    return paragraphs


def raw_lines(path: Path) -> list[str]:
    """The lines of a local WikiText raw file."""
    if not path.exists():
        raise InputError(f"{path}: no such file (expected WikiText raw files: {', '.join(RAW_FILES.values())})")
    return read_text(path).splitlines()


def hub_lines(name: str, variant: str, split: str) -> list[str]:
    """The `text` column of a WikiText split on the Hugging Face hub (needs the optional `datasets` package)."""
    return list(load_hub_split(name, variant, HUB_SPLITS[split], "pass --source DIR holding the wiki.*.raw files")
                ["text"])


def load_wikitext(source: str, split: str, variant: str = DEFAULT_VARIANT) -> list[tuple[str, str]]:
    """(id, paragraph) of `split` from a directory of raw files, or else from the hub dataset `source`."""
    path = Path(source)
    if path.is_dir():
        lines = raw_lines(path / RAW_FILES[split])
        where = str(path / RAW_FILES[split])
    elif path.exists() or looks_like_path(source):
        kind = "no such directory" if not path.exists() else f"is {file_kind(path) or 'a file'}, not a directory"
        raise InputError(f"{source}: {kind} (expected a directory of WikiText raw files: "
                         f"{', '.join(RAW_FILES.values())}, or a hub dataset id)")
    else:
        lines = hub_lines(source, variant, split)
        where = f"{source} ({variant}, {HUB_SPLITS[split]})"
    paragraphs = wikitext_paragraphs(lines, f"wikitext-{split}")
    if not paragraphs:
        raise InputError(f"{where}: holds no paragraphs")
    return paragraphs
