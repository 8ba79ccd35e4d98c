"""What the command modules share: loading a model from a config, reading a dataset split, checking values,
writing the standard run files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from promptstep.config import config_dict
from promptstep.data.triplets import Triplet, load_triplets
from promptstep.errors import InputError
from promptstep.runs import write_json, write_jsonl, write_summary_csv, write_yaml

if TYPE_CHECKING:
    from promptstep.formats import Format


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise InputError(f"config key '{name}' must be positive, got {value}")


def check_device(spec: str, several: bool = False) -> None:
    """Refuse a device spec that is malformed, or a GPU this machine does not have (torch is imported only to
    check a GPU request)."""
    if spec not in ("auto", "cpu"):
        from promptstep.distributed import resolve_device

        resolve_device(spec, several=several)


def check_models(config, *specs: str | None) -> None:
    """Before a command loads or writes anything: every model it will load (the config's `model` and `specs`)
    exists and is loadable, and its attention implementation is available (`model_specs.check_model_spec`)."""
    from promptstep.model_specs import check_model_spec

    for spec in (getattr(config, "model", None), *specs):
        if spec is not None:
            check_model_spec(spec, getattr(config, "attn", None))


def check_run_name(name: str | None) -> None:
    """Refuse a run name that is not a single safe path component (None: the command derives one)."""
    from promptstep.runs import safe_name

    if name is not None:
        safe_name(name)


def load_from_config(config, spec: str | None = None):
    """(model, tokenizer) of `spec` (default: the config's model) on the config's device."""
    from promptstep.distributed import resolve_device
    from promptstep.models import load_model

    return load_model(spec or config.model, attn_implementation=config.attn, device=resolve_device(config.device),
                      trust_remote_code=getattr(config, "trust_remote_code", False))


def dataset_file(data: str, split: str) -> Path:
    """The JSONL file of `split` in a dataset directory, or `data` itself when it is a file."""
    from promptstep.runs import safe_name

    path = Path(data)
    return path / f"{safe_name(split, 'split name')}.jsonl" if path.is_dir() else path


def load_split(data: str, split: str, limit: int | None) -> list[Triplet]:
    triplets = load_triplets(dataset_file(data, split))
    return triplets[:limit] if limit else triplets


def fitted_split(model, tokenizer, data: str, split: str, limit: int | None, new_tokens: int,
                 fmt: Format | None = None, truncate: bool | None = None) -> list[Triplet]:
    """The triplets of a split, each fitted in the model's window with `new_tokens` generated tokens
    (`formats.fit_lengths`); `truncate` None: the command has no --truncate option."""
    from promptstep.formats import TRUNCATE_HINT, Format, fit_lengths  # noqa: F811 - the runtime import
    from promptstep.models import max_length

    triplets = load_split(data, split, limit)
    hint = TRUNCATE_HINT if truncate is not None else NO_TRUNCATE_HINT
    return fit_lengths(triplets, tokenizer, max_length(model, tokenizer), fmt or Format(), bool(truncate),
                       str(dataset_file(data, split)), new_tokens, hint)


NO_TRUNCATE_HINT = " (shorten its context, or lower --max-new-tokens)"


def write_run_files(staging: Path, config, records: list[dict], summary: dict, csv_rows: dict) -> None:
    write_yaml(staging / "config.yaml", config_dict(config))
    write_jsonl(staging / "records.jsonl", records)
    write_json(staging / "summary.json", summary)
    write_summary_csv(staging / "metrics.csv", csv_rows)
