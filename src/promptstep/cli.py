"""The `promptstep` command: `promptstep <command> [TASK] [--config FILE] [--key value ...]`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

from promptstep.config import build_config
from promptstep.errors import InputError, TrainingStopped


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
        overrides[key] = value
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


def _parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` command's module is imported (for its options)."""
    parser = _Parser(prog="promptstep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=command.help)
            continue
        keys = ", ".join(f.name.replace("_", "-") for f in fields(command.config))
        p = sub.add_parser(name, help=command.help, description=f"{command.help}. Options: {keys}.")
        if command.positional:
            p.add_argument(command.positional, nargs="*" if command.many else "?")
        p.add_argument("--config", help="YAML preset; --key value options override it")
        p.add_argument("--threads", help="CPU threads for torch (default: all cores; split among --num-processes)")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, rest = _parser(_selected(argv)).parse_known_args(argv)
    except _UsageError as err:
        print(err, file=sys.stderr)
        return 2
    command = COMMANDS[args.command]
    config_class, run = command.load()
    threads = _threads_now()
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        _set_threads(args.threads)
        overrides = _parse_overrides(rest)
        if command.positional and getattr(args, command.positional):
            overrides[command.positional] = getattr(args, command.positional)
        config = build_config(config_class, args.config, overrides)
        run(config)
    except InputError as err:
        print(f"promptstep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"promptstep {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"promptstep {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        _restore_threads(threads)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
