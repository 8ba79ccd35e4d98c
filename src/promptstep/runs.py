"""Run directories: safe names, one writer at a time, staged outputs published whole or not at all.

The rules every command follows (a user's files are sacred):

* A run, split or suite name is one safe path component (`safe_name`): never empty, '.', '..', hidden, or a
  path; names derived from user input (model specs, file stems) go through `name_from` first.
* Output goes to a hidden staging directory next to the target; the target is replaced only after the new
  output is complete (`staged_dir`), and only if it is recognisably something promptstep wrote
  (`check_replaceable`) — never a directory that holds the current working directory.
* One writer per target: a lock file beside it (`run_lock`), held for the whole command; leftovers of a killed
  writer (staging directories, a half-done swap) are cleaned up by the next one to hold the lock.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from promptstep.errors import InputError

try:  # POSIX advisory locks; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

MAX_NAME_BYTES = 200
# Files that only promptstep writes beside a config.yaml: a directory holding config.yaml and one of these (or a
# tiny-model directory) is a promptstep run, dataset or report that may be replaced with --overwrite.
RUN_MARKERS = ("summary.json", "meta.json", "metrics.json", "report.md", "train_log.jsonl", "before.json",
               "manifest.json")
MODEL_MARKERS = ("pretrain_config.yaml", "pretrain_log.jsonl")
STAGING_KINDS = ("partial", "old", "inprogress", "lock")


def safe_name(name: str, what: str = "run name") -> str:
    """`name` if it is a single safe path component, else InputError: not empty, '.', '..', hidden (a leading '.',
    the prefix of promptstep's staging directories), a path (no '/' or '\\'), surrounded by spaces, unprintable,
    or longer than 200 bytes."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "is a path (it contains a directory separator); give a plain name"
    elif name.startswith("."):
        problem = "starts with '.' ('.', '..' and hidden names are not allowed)"
    elif name != name.strip():
        problem = "starts or ends with whitespace"
    elif not name.isprintable():
        problem = "contains unprintable characters"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise InputError(f"{what} {name!r} {problem}")
    return name


def name_from(*parts: str) -> str:
    """A safe name built from free text (model specs, file stems): unsafe characters become '_'."""
    text = "-".join(p for p in parts if p)
    text = re.sub(r"[\\/\s]+", "_", text)
    text = "".join(ch if ch.isprintable() else "_" for ch in text).lstrip(".") or "run"
    return text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore").strip() or "run"


def run_dir(runs_dir: str | Path, name: str, what: str = "run name") -> Path:
    """`runs_dir / name` after checking that `name` is one safe path component."""
    return Path(runs_dir) / safe_name(name, what)


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def _hidden(path: Path, kind: str, suffix: str = "") -> Path:
    return path.parent / f".{path.name}.{kind}{suffix}"


def is_promptstep_dir(path: Path) -> bool:
    """Whether directory `path` is something promptstep wrote (a run, dataset, report, suite or tiny model)."""
    if not path.is_dir():
        return False
    if (path / "config.yaml").is_file() and any((path / m).exists() for m in RUN_MARKERS):
        return True
    if (path / "suite.yaml").is_file() and ((path / "timings.jsonl").is_file() or (path / "report").is_dir()):
        return True  # a `reproduce` suite directory
    return all((path / m).is_file() for m in MODEL_MARKERS)


def _contains_cwd(path: Path) -> bool:
    try:
        target, cwd = path.resolve(), Path.cwd().resolve()
    except OSError:
        return False
    return target == cwd or target in cwd.parents


def check_replaceable(path: Path) -> None:
    """Refuse, writing nothing, to replace `path` unless it is a promptstep output (or absent)."""
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; refusing to replace it (remove it or choose another name)")
    if not path.exists():
        return
    if _contains_cwd(path):
        raise InputError(f"refusing to replace {path}: it holds the current working directory")
    if not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; refusing to replace it")
    if not is_promptstep_dir(path):
        raise InputError(f"{path} exists and is not a promptstep run or dataset directory; refusing to replace it "
                         "(move it away or choose another name)")


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Fail early, writing nothing, if `path` exists (without `overwrite`), is not ours to replace, or could not
    be created and written."""
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite true or choose another name")
    check_replaceable(path)
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


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold the lock of target `path` (a `.NAME.lock` file beside it) for the block; another process holding it
    makes this an InputError. On entry, leftovers of earlier killed writers of `path` are cleaned up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _hidden(path, "lock")
    handle = None
    if fcntl is not None:
        while True:
            handle = open(lock, "a+b")  # noqa: SIM115 - held open for the duration of the block
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise InputError(f"{path} is being written by another promptstep process; wait for it to finish "
                                 "or choose another name") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
    try:
        _clean_leftovers(path)
        yield
    finally:
        if handle is not None:
            lock.unlink(missing_ok=True)
            handle.close()


def _clean_leftovers(path: Path) -> None:
    """Under the lock: finish a swap cut short between its two renames, and remove dead staging directories."""
    olds = sorted(path.parent.glob(f".{glob_escape(path.name)}.old-*"))
    if not path.exists() and olds:
        os.replace(olds[-1], path)  # the new output never arrived: the old one goes back
        olds = olds[:-1]
    for stale in [*olds, *path.parent.glob(f".{glob_escape(path.name)}.partial-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def umask() -> int:
    """This process's file-creation mask (read from /proc where there is one: setting and resetting it would
    race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: Path) -> None:
    """Give `path` the permissions an ordinary mkdir / open would (tempfile makes them private, 0700 / 0600, and
    so does safetensors), so published runs and datasets are as readable as the user's other files."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def give_default_modes(root: Path) -> None:
    """`give_default_mode` for `root` and everything below it (symbolic links are left alone)."""
    give_default_mode(root)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(directory) / name
            if not path.is_symlink():
                give_default_mode(path)


def glob_escape(text: str) -> str:
    """`text` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def publish(staging: Path, path: Path) -> None:
    """Move complete output `staging` to `path`, replacing what is there only now (old copy set aside first, so an
    interruption between the renames leaves it recoverable by the next writer); what is published gets the
    permissions the user's umask gives."""
    give_default_modes(staging)
    old = None
    if path.exists() or path.is_symlink():
        check_replaceable(path)
        old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden staging directory; on success it replaces `path` (only then), on failure it is removed.

    The target is checked first (exists without `overwrite`, not ours to replace, not writable) and locked for
    the duration, so two processes never write one target."""
    check_run_dir(path, overwrite)
    with run_lock(path):
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
        try:
            give_default_mode(staging)
            yield staging
            publish(staging, path)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def in_progress_dir(path: Path) -> Path:
    """Where a resumable long run (meta-train) targeting `path` lives until it is published."""
    return _hidden(path, "inprogress")


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


def finite(data: Any) -> Any:
    """`data` with every non-finite float replaced by None, so JSON output stays valid JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(finite(data), indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def json_line(row: Any) -> str:
    """One JSONL row as strict JSON (a non-finite number becomes null), non-ASCII kept, ending in a newline."""
    return json.dumps(finite(row), ensure_ascii=False, allow_nan=False) + "\n"


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json_line(row))


def write_summary_csv(path: Path, summary: dict[str, dict[str, float]]) -> None:
    """One row per setting with every summary column."""
    columns = ["setting"] + sorted({key for entry in summary.values() for key in entry}, key=_column_order)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for setting, entry in summary.items():
            writer.writerow({"setting": setting, **finite(entry)})


def _column_order(key: str) -> tuple[int, str]:
    return (0 if key == "n" else 1, key)
