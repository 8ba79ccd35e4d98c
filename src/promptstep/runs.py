"""Run directories: refuse to overwrite, stage outputs, and publish them whole or not at all."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from promptstep.errors import InputError


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Fail early, writing nothing, if `path` exists (without `overwrite`) or could not be created and written."""
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite true or choose another name")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise InputError(f"cannot create {path}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {base} (read-only or no permission)")


def require_free_space(path: Path, needed: int) -> None:
    """Fail early if the file system that will hold `path` has fewer than `needed` bytes free."""
    base = _nearest_existing(path)
    free = shutil.disk_usage(base).free
    if free < needed:
        raise InputError(f"not enough free space for {path}: {free / 2**20:,.0f} MiB free on its disk, "
                         f"about {needed / 2**20:,.0f} MiB needed")


def trim_log(path: Path, last_step: int) -> None:
    """Keep the whole JSONL rows of `path` up to `last_step` (a resumed run writes the later steps again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a row cut short by a kill
            break
        if row["step"] > last_step:
            break
        kept.append(line + "\n")
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(kept), encoding="utf-8")
    os.replace(staging, path)


@contextmanager
def staged_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden staging directory; on success it replaces `path`, on failure it is removed."""
    check_run_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_summary_csv(path: Path, summary: dict[str, dict[str, float]]) -> None:
    """One row per setting with every summary column."""
    columns = ["setting"] + sorted({key for entry in summary.values() for key in entry}, key=_column_order)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for setting, entry in summary.items():
            writer.writerow({"setting": setting, **entry})


def _column_order(key: str) -> tuple[int, str]:
    return (0 if key == "n" else 1, key)
