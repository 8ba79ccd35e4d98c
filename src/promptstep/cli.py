"""The `promptstep` command: `promptstep <command> [TASK] [--config FILE] [--key value ...]`.

Exit codes: 0 done; 2 bad input (one line `promptstep CMD: error: ...` on stderr, nothing written); 1 the
command could not finish (meta-training stopped, a step diverged, out of memory or disk, or an internal error:
`error: internal error: TYPE: ...`, with the traceback when PROMPTSTEP_DEBUG=1); 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import logging
import os
import shutil
import signal
import sys
import textwrap
import threading
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from promptstep.config import build_config, field_docs, option_docs
from promptstep.errors import InputError, TrainingStopped
from promptstep.malloc import keep_freed_memory


@dataclass(frozen=True)
class Command:
    """A CLI command: the module under `promptstep.commands` holding its config dataclass and run function.

    Modules are imported only when their command runs (or shows --help), so the CLI starts without torch."""

    module: str
    config_name: str
    run_name: str
    help: str
    positional: str | None = None
    many: bool = False  # the positional takes any number of values

    def load(self) -> tuple[type, Callable]:
        module = importlib.import_module(f"promptstep.commands.{self.module}")
        return getattr(module, self.config_name), getattr(module, self.run_name)

    @property
    def config(self) -> type:
        return self.load()[0]


COMMANDS: dict[str, Command] = {
    "data": Command("data", "DataConfig", "run_data", "build a triplet dataset", positional="task"),
    "eval": Command("eval", "EvalConfig", "run_eval", "evaluate NC / Prompt / FT on triplets"),
    "demo": Command("demo", "DemoConfig", "run_demo", "the main job on the embedded model"),
    "prepare": Command("prepare", "PrepareConfig", "run_prepare", "format fine-tuning on a saved subset"),
    "meta-train": Command("meta_train", "MetaTrainConfig", "run_meta_train", "meta-train the inner step"),
    "pretrain-tiny": Command("pretrain_tiny", "PretrainTinyConfig", "run_pretrain_tiny", "pretrain the tiny model"),
    "analyze": Command("analyze", "AnalyzeConfig", "run_analyze", "ICL vs GD instruments"),
    "multi-context": Command("multi_context", "MultiContextConfig", "run_multi_context", "accuracy after N updates"),
    "controls": Command("controls", "ControlsConfig", "run_controls", "irrelevant context, 2x2 breakdown"),
    "distract": Command("distract", "DistractConfig", "run_distract", "multi-fact contexts with distractors"),
    "transfer": Command("transfer", "TransferConfig", "run_transfer", "cross-dataset transfer (Table 3)"),
    "report": Command("report", "ReportConfig", "run_report", "paper-style tables from runs", "runs", many=True),
    "reproduce": Command("reproduce", "ReproduceConfig", "run_reproduce",
                         "run a YAML suite of the paper's experiments"),
    "inject": Command("inject", "InjectConfig", "run_inject", "inject documents into a model's weights"),
    "ask": Command("ask", "AskConfig", "run_ask", "answer questions with injected documents (side by side)"),
    "inject-eval": Command("inject_eval", "InjectEvalConfig", "run_inject_eval",
                           "benchmark knowledge injection against fine-tuning and prompting"),
    "playground": Command("playground", "PlaygroundConfig", "run_playground",
                          "a local web page: paste a document, inject it, ask"),
}


DESCRIPTION = ("Meta-train a causal LM so that one gradient step on a text changes it the way putting the text in "
               "its prompt does, and measure it (No Context / Prompt / one-step FT). Options: --KEY VALUE, or a YAML "
               "preset with --config FILE.")


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise InputError(f"unexpected argument '{token}' (options are --key value)")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise InputError(f"option --{key} needs a value")
            value = tokens[i + 1]
            i += 1
        overrides[key] = value  # a later option overrides an earlier one
        i += 1
    return overrides


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`): unwinds like Ctrl-C, so staging directories are cleaned up."""


def _terminate(signum, frame):
    raise Terminated


class _UsageError(Exception):
    """A command line argparse could not parse; `str()` is the whole error line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other input error, instead of usage + error
        raise _UsageError(f"{self.prog}: error: {message}")


def _wrap(text: str, indent: int) -> str:
    """`text` wrapped to the terminal (as argparse wraps its own help), every line indented by `indent`."""
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    return textwrap.fill(text, width, initial_indent=" " * indent, subsequent_indent=" " * indent)


def options_help(config_class: type) -> str:
    """The `--help` section listing every option of a command's config: name, type, default, then its meaning
    (the field's attribute docstring, see `promptstep.config.field_docs`)."""
    lines = ["command options (--key value or --key=value; dashes or underscores; they override --config):"]
    for name, kind, default, meaning in option_docs(config_class):
        lines.append(f"  --{name} {kind}  (default: {default})")
        lines.append(_wrap(meaning or "(undocumented)", 6))
    return "\n".join(lines)


def _parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` command's module is imported (for its options and their documentation)."""
    parser = _Parser(prog="promptstep", description=DESCRIPTION, epilog="`promptstep COMMAND --help` lists the options "
                     "of a command with their types, defaults and meanings.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=command.help, description=command.help)
            continue
        config = command.config
        docs = field_docs(config)
        positional = ""
        if command.positional:
            label = command.positional.upper()
            positional = f" [{label} ...]" if command.many else f" [{label}]"
        p = sub.add_parser(name, help=command.help, description=inspect.cleandoc(config.__doc__ or command.help),
                           usage=f"%(prog)s{positional} [-h] [--config FILE] [--threads N] [--KEY VALUE ...]",
                           epilog=options_help(config), formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.positional:
            p.add_argument(command.positional, nargs="*" if command.many else "?", metavar=command.positional.upper(),
                           help=f"{docs[command.positional]} Also --{command.positional}.")
        p.add_argument("--config", metavar="FILE", help="YAML preset: a mapping of the options below; --KEY VALUE "
                       "options override it (default: none)")
        p.add_argument("--threads", metavar="N", help="CPU threads for torch (default: all cores; split among "
                       "--num-processes)")
    return parser


def _set_threads(value: str | None) -> None:
    """torch's CPU thread count for this command (restored afterwards, for in-process callers)."""
    if value is None:
        return
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--threads must be a positive integer, got {value!r}")
    import torch

    torch.set_num_threads(int(value))


def _threads_now() -> int | None:
    """torch's thread count, if torch is loaded (it is restored after the command)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_threads(threads: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)


def _selected(argv: list[str]) -> str | None:
    """The command named on the command line (the first argument that is one), if any."""
    return next((arg for arg in argv if arg in COMMANDS), None)


MAX_ERROR_CHARS = 600  # an error line longer than this is cut (a bad value can be megabytes long)
DEBUG_VARIABLE = "PROMPTSTEP_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").lower() not in ("", "0", "false", "no", "off")


def one_line(text: str) -> str:
    """`text` as one line of at most MAX_ERROR_CHARS characters (newlines and tabs become spaces)."""
    line = " ".join(str(text).split())
    if len(line) > MAX_ERROR_CHARS:
        line = f"{line[:MAX_ERROR_CHARS]}... ({len(line) - MAX_ERROR_CHARS:,} more characters)"
    return line


def describe_failure(err: BaseException) -> str:
    """The error line of an exception no check anticipated: what ran out or went wrong, in words."""
    message = one_line(str(err)) or "(no message)"
    if isinstance(err, FloatingPointError):
        return f"non-finite numbers: {message} (a learning rate too large for these weights?)"
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return f"out of memory ({type(err).__name__}: {message}); try a smaller batch or model"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the disk{f' writing {err.filename}' if err.filename else ''}"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}{f': {err.filename}' if err.filename else ''}"
    return f"internal error: {type(err).__name__}: {message} (set {DEBUG_VARIABLE}=1 for the traceback)"


@contextmanager
def _quiet_libraries():
    """Library warnings and log messages (transformers' notices, hub retries) off while a command runs, so a
    failing command prints exactly its one error line; all on with PROMPTSTEP_DEBUG=1."""
    if _debug():
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `promptstep` alone: the list of commands, not an error
        _parser().print_help()
        return 0
    try:
        args, rest = _parser(_selected(argv)).parse_known_args(argv)
    except _UsageError as err:
        print(one_line(str(err)), file=sys.stderr)
        return 2
    command = COMMANDS[args.command]
    config_class, run = command.load()
    threads = _threads_now()
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    prefix = f"promptstep {args.command}:"
    try:
        with _quiet_libraries():
            _set_threads(args.threads)
            overrides = _parse_overrides(rest)
            if command.positional and getattr(args, command.positional):
                overrides[command.positional] = getattr(args, command.positional)
            config = build_config(config_class, args.config, overrides)
            keep_freed_memory()  # glibc: reuse freed tensor memory instead of faulting it in again (promptstep.malloc)
            run(config)
    except InputError as err:
        print(one_line(f"{prefix} error: {err}"), file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(one_line(f"{prefix} {err}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"{prefix} {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as err:  # the last resort: one line, never a traceback unless asked for
        if _debug():
            traceback.print_exc()
        print(one_line(f"{prefix} error: {describe_failure(err)}"), file=sys.stderr)
        return 1
    finally:
        _restore_threads(threads)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
