"""Reading the files a user names, each problem one InputError line that names the file.

* Only regular files are read: a directory, named pipe (FIFO), device or socket is named for what it is, and is
  never opened (opening a FIFO blocks until someone writes to it; /dev/zero never ends).
* Text is UTF-8 (a leading byte-order mark is dropped); the error names the line and byte of the first bad byte.
* JSON is strict: NaN and Infinity are not JSON and are refused, as are documents nested too deeply for the
  parser and numbers too long to convert.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from promptstep.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when it is not a regular file ('a directory', 'a named pipe (FIFO)', ...), None for a regular
    file; InputError if it cannot be looked at (missing, not reachable, no permission)."""
    try:
        mode = os.stat(path).st_mode  # follows symbolic links; never opens the file
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise InputError(f"{path}: no such file (a part of its path is a file, not a directory)") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | os.PathLike, hint: str = "") -> Path:
    """`path` if it is a regular file; else InputError saying what it is (`hint` is added to the message)."""
    kind = file_kind(path)
    if kind is not None:
        raise InputError(f"{path}: is {kind}, not a regular file{hint}")
    return Path(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of regular file `path`."""
    check_regular_file(path)
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None


def decode_utf8(raw: bytes, where: str, hint: str = "") -> str:
    """UTF-8 text of `raw` (a leading byte-order mark dropped); InputError naming the line and byte of the first
    invalid byte."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{where}:{line}: not UTF-8 text (byte {err.start}){hint}") from None


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of regular file `path`."""
    return decode_utf8(read_bytes(path), str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, where: str) -> Any:
    """`text` parsed as strict JSON (no NaN or Infinity); InputError naming `where` on any problem."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        at = f", line {err.lineno} column {err.colno}" if "\n" in text.strip() else ""
        raise InputError(f"{where}: not valid JSON ({err.msg}{at})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as err:  # NaN / Infinity, or an integer too long to convert
        raise InputError(f"{where}: not valid JSON ({str(err).splitlines()[0][:120]})") from None


def read_json(path: str | os.PathLike) -> Any:
    """Strict JSON from regular UTF-8 file `path`."""
    return parse_json(read_text(path), str(path))



def pickled_files(path: Path) -> list[str]:
    """Names of the files in directory `path` that hold pickles (which can run code when loaded)."""
    return sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES)


def looks_like_path(spec: str) -> bool:
    """Whether `spec` (a model or dataset source) is meant as a local path rather than a hub id: it starts with '.',
    '/' or '~', has more than one '/', a backslash, or its first part exists here."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or os.sep in spec.replace("/", ""):
        return True
    first = spec.split("/", 1)[0]
    return bool(first) and Path(first).expanduser().exists()
