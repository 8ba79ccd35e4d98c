"""Datasets from the Hugging Face hub, through the optional `datasets` package, with one-line errors."""

from __future__ import annotations

from promptstep.errors import InputError


def load_hub_split(name: str, config: str | None, split: str, offline_hint: str):
    """`datasets.load_dataset(name, config, split=split)`; InputError if the package or the hub is unavailable."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise InputError(f"reading '{name}' from the hub needs the `datasets` package (pip install "
                         f"'promptstep[hub]'); offline, {offline_hint}") from None
    where = f"{name} ({config}, {split})" if config else f"{name} ({split})"
    try:
        return load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    except Exception as err:  # the hub raises many types (connection, missing repo, offline mode)
        raise InputError(f"could not load {where} from the hub: {err}".splitlines()[0]) from None
