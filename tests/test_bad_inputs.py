"""Malformed input at every CLI entry point: exactly one stderr line `promptstep CMD: error: ...`, exit code 2,
and nothing written or overwritten.

One row per case. A row is a command line with placeholders, files to write under the test's directory first,
an optional setup step, and a regular expression the error line must contain. To add a case (say, a SQuAD or
WikiText file), append a row; placeholders:

  {tmp}    the test's own directory (files are written relative to it; the CLI runs with it as cwd)
  {runs}   {tmp}/runs, the runs directory
  {data}   a good Character Description dataset directory (12 train / 4 test triplets)
  {model}  a random GPT-2 saved with its tokenizer (256-token window); {model64}: the same with 64 tokens
  {done}   name of a finished meta-train run under {runs} (created by the `finished_run` setup), made with
           DONE_ARGS
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import character_dataset, make_gpt2, make_llama
from promptstep import model_specs, runs
from promptstep.checkpoints import save_checkpoint
from promptstep.cli import MAX_ERROR_CHARS, main

INJECT = "inject --model {model} --out inj --docs"
ASK = "ask --model {model} --questions"
GOOD = {"id": "x1", "context": "Evan Armstrong is the first person on Mars.", "query": "The first person on Mars was",
        "answer": "Evan Armstrong"}
META = "meta-train --data {data} --model {model} --runs-dir runs --eval-n 2 --max-new-tokens 2 --batch-size 2"
DONE_ARGS = " --name done --train-limit 4 --checkpoint-every 1"
EVAL = "eval --model {model} --runs-dir {runs} --data"


def _line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}) + "\n"


def _squad_files(qa: dict, context: str = "Ann Smith") -> dict[str, str]:
    """An official-format SQuAD directory `sq/` whose one question is `qa`."""
    doc = json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]})
    return {"sq/train-v1.1.json": doc, "sq/dev-v1.1.json": doc}


@dataclass(frozen=True)
class Env:
    tmp: Path
    data: str
    model: str
    model64: str
    finished: Path
    monkeypatch: pytest.MonkeyPatch | None

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, runs=self.tmp / "runs", data=self.data, model=self.model,
                           model64=self.model64, done="done")


@dataclass(frozen=True)
class Bad:
    id: str
    argv: str
    message: str  # a regular expression searched in the error line
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Env], None] | None = None


# ---------------------------------------------------------------- setups


def finished_run(env: Env) -> None:
    shutil.copytree(env.finished, env.tmp / "runs" / "done")


def different_model_checkpoint(env: Env) -> None:
    finished_run(env)
    other = make_llama(300)
    params = dict(other.named_parameters())
    save_checkpoint(env.tmp / "runs" / "done" / "checkpoint", params, torch.optim.Adam(params.values()), {"step": 1})


def pickled_checkpoint(env: Env) -> None:
    finished_run(env)
    checkpoint = env.tmp / "runs" / "done" / "checkpoint"
    shutil.rmtree(checkpoint)
    checkpoint.mkdir()
    torch.save({"weights": torch.zeros(2)}, checkpoint / "checkpoint.pt")


def truncated_checkpoint(env: Env) -> None:
    finished_run(env)
    weights = env.tmp / "runs" / "done" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def pickled_model(env: Env) -> None:
    model = make_gpt2(300)
    model.config.save_pretrained(env.tmp / "pickled")
    torch.save(model.state_dict(), env.tmp / "pickled" / "pytorch_model.bin")


def model_without_pad_or_eos(env: Env) -> None:
    shutil.copytree(env.model, env.tmp / "nopad")
    fast = PreTrainedTokenizerFast.from_pretrained(env.model)
    PreTrainedTokenizerFast(tokenizer_object=fast.backend_tokenizer).save_pretrained(env.tmp / "nopad")


def custom_code_model(env: Env) -> None:
    shutil.copytree(env.model, env.tmp / "custom")
    config = json.loads((env.tmp / "custom" / "config.json").read_text())
    config.update(model_type="custom-lm", auto_map={"AutoConfig": "modeling.Config",
                                                     "AutoModelForCausalLM": "modeling.Model"})
    (env.tmp / "custom" / "config.json").write_text(json.dumps(config))
    (env.tmp / "custom" / "modeling.py").write_text("raise SystemExit('remote code ran')\n")


def full_disk(env: Env) -> None:
    env.monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=0))


def read_only_runs_dir(env: Env) -> None:
    (env.tmp / "runs").mkdir()
    real = os.access
    env.monkeypatch.setattr(runs.os, "access",
                            lambda path, mode: False if Path(path).resolve() == env.tmp / "runs" else real(path, mode))


HELD_LOCKS: list = []  # lock files held open by a setup for the duration of a row


def locked_run(name: str) -> Callable[[Env], None]:
    """Another process writing run `name`: its lock is held (flock is per open file, so this conflicts too)."""
    def setup(env: Env) -> None:
        import fcntl

        (env.tmp / "runs").mkdir(exist_ok=True)
        handle = open(env.tmp / "runs" / f".{name}.lock", "a+b")  # noqa: SIM115 - closed by the fixture
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        HELD_LOCKS.append(handle)

    return setup


def interrupted_run(env: Env) -> None:
    """A meta-train run 'done' killed after its first checkpoint: its in-progress directory."""
    shutil.copytree(env.finished, env.tmp / "runs" / ".done.inprogress")


def user_dir(name: str) -> Callable[[Env], None]:
    """A directory of the user's (not made by promptstep) holding a precious file."""
    def setup(env: Env) -> None:
        (env.tmp / name).mkdir(parents=True, exist_ok=True)
        (env.tmp / name / "thesis.tex").write_text("precious")
        (env.tmp / name / "config.yaml").write_text("mine: true\n")

    return setup


def symlinked_out(env: Env) -> None:
    (env.tmp / "target").mkdir()
    (env.tmp / "target" / "keep.txt").write_text("precious")
    (env.tmp / "out").symlink_to(env.tmp / "target")


def existing_dir(name: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        (env.tmp / name).mkdir(parents=True)
        (env.tmp / name / "keep.txt").write_text("precious")

    return setup


def model_copy(name: str, change: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    """A copy of the test model (256-token window) as {tmp}/NAME, then changed by `change(directory)`."""
    def setup(env: Env) -> None:
        shutil.copytree(env.model, env.tmp / name)
        if change is not None:
            change(env.tmp / name)

    return setup


def edited_config(**changes) -> Callable[[Path], None]:
    """Set (or, with a value of ..., remove) keys of a model's config.json."""
    def change(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        config.update({k: v for k, v in changes.items() if v is not ...})
        for key in (k for k, v in changes.items() if v is ...):
            config.pop(key)
        (path / "config.json").write_text(json.dumps(config))

    return change


def cut_weights(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def removed(*names: str) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        for name in names:
            (path / name).unlink(missing_ok=True)

    return change


def written(name: str, content: str | bytes) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return change


def nan_weight(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})


def fifo(name: str) -> Callable[[Env], None]:
    """A named pipe nobody writes to: reading it would block forever."""
    def setup(env: Env) -> None:
        (env.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(env.tmp / name)

    return setup


def damaged_run(change: Callable[[dict], object]) -> Callable[[Env], None]:
    """The finished meta-train run as {tmp}/runs/done, its summary.json replaced by `change(summary)` (JSON text
    when it returns a string)."""
    def setup(env: Env) -> None:
        finished_run(env)
        file = env.tmp / "runs" / "done" / "summary.json"
        new = change(json.loads(file.read_text()))
        file.write_text(new if isinstance(new, str) else json.dumps(new))

    return setup


def run_file(name: str, content: str) -> Callable[[Env], None]:
    """The finished meta-train run as {tmp}/runs/done with file `name` replaced by `content`."""
    def setup(env: Env) -> None:
        finished_run(env)
        (env.tmp / "runs" / "done" / name).write_text(content)

    return setup


def _edit_state(env: Env, change: Callable[[dict], object]) -> None:
    """Change the finished run's checkpoint state.json (it is not under the weights' checksums)."""
    file = env.tmp / "runs" / "done" / "checkpoint" / "state.json"
    state = json.loads(file.read_text())
    change(state)
    file.write_text(json.dumps(state))


def symlink_loop(env: Env) -> None:
    """runs/loop -> runs: a walk that follows directory links never ends."""
    (env.tmp / "runs").mkdir(exist_ok=True)
    (env.tmp / "runs" / "loop").symlink_to(".")


def _summary(kind: str, **parts) -> str:
    entry = {"n": 2, "tok_acc": 0.5, "tok_acc_se": 0.1}
    return json.dumps({"kind": kind, "eval": {"nc": entry, "irrelevant": entry}, **parts})


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi")) + "name: *i\n"
SUITE = "reproduce --suite {tmp}/s.yaml"
SUITE_BLOCK = "name: s\nblocks: [{name: b, model: tiny, tasks: {c: {generate: character}}, experiments: {%s}}]\n"


def injected_dir(env: Env) -> None:
    """An injected directory `inj` made from {model} (the 256-token GPT-2)."""
    (env.tmp / "doc.txt").write_text("Evan Armstrong is the first person on Mars.")
    assert main(["inject", "--model", env.model, "--docs", str(env.tmp / "doc.txt"), "--out", str(env.tmp / "inj"),
                 "--lr", "0.1"]) == 0


def without_gradio(env: Env) -> None:
    env.monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError


# ---------------------------------------------------------------- the table

BAD = [
    # triplet JSONL files
    Bad("jsonl-not-json", EVAL + " bad.jsonl", r"bad.jsonl:1: not valid JSON", {"bad.jsonl": "{this is not json}\n"}),
    Bad("jsonl-array", EVAL + " bad.jsonl", r"bad.jsonl:1: expected a JSON object, got list",
        {"bad.jsonl": "[1, 2, 3]\n"}),
    Bad("jsonl-missing-query", EVAL + " bad.jsonl", r"bad.jsonl:1: missing field 'query'",
        {"bad.jsonl": _line(query=...)}),
    Bad("jsonl-missing-id", EVAL + " bad.jsonl", r"bad.jsonl:1: missing field 'id'", {"bad.jsonl": _line(id=...)}),
    Bad("jsonl-number-answer", EVAL + " bad.jsonl", r"bad.jsonl:1: field 'answer' must be a string, got int",
        {"bad.jsonl": _line(answer=42)}),
    Bad("jsonl-empty-context", EVAL + " bad.jsonl", r"bad.jsonl:1: field 'context' is empty",
        {"bad.jsonl": _line(context="  ")}),
    Bad("jsonl-empty-answer", EVAL + " bad.jsonl", r"bad.jsonl:1: field 'answer' is empty",
        {"bad.jsonl": _line(answer="")}),
    Bad("jsonl-duplicate-id", EVAL + " bad.jsonl", r"bad.jsonl:2: duplicate id 'x1' \(first on line 1\)",
        {"bad.jsonl": _line() + _line()}),
    Bad("jsonl-answers-not-list", EVAL + " bad.jsonl", r"bad.jsonl:1: field 'answers' must be a non-empty list",
        {"bad.jsonl": _line(answers="Evan")}),
    Bad("jsonl-empty-file", EVAL + " bad.jsonl", r"bad.jsonl: holds no triplets", {"bad.jsonl": "\n\n"}),
    Bad("jsonl-bad-second-line", EVAL + " bad.jsonl", r"bad.jsonl:2: not valid JSON",
        {"bad.jsonl": _line() + "{oops\n"}),
    Bad("jsonl-not-utf8", EVAL + " bad.jsonl", r"bad.jsonl:2: not UTF-8 text",
        {"bad.jsonl": _line().encode() + b'{"id": "\xff\xfe"}\n'}),
    Bad("jsonl-missing-file", EVAL + " nothing.jsonl", r"nothing.jsonl: no such file"),
    Bad("dataset-dir-without-split", EVAL + " {tmp}", r"test.jsonl: no such file"),
    Bad("context-longer-than-window", "eval --model {model64} --runs-dir {runs} --data long.jsonl",
        r"triplet 'long' is \d+ tokens in the Prompt format \(with 16 tokens generated after the prompt\), over the "
        r"model's limit of 64",
        {"long.jsonl": _line(id="long", context="word " * 300)}),
    Bad("meta-train-context-longer-than-window",
        "meta-train --data long --model {model64} --runs-dir {runs} --batch-size 1", r"triplet 'long' is \d+ tokens",
        {"long/train.jsonl": _line(id="long", context="word " * 300), "long/test.jsonl": _line()}),
    # YAML configs and options
    Bad("yaml-invalid", "eval --config c.yaml", r"c.yaml:2: not valid YAML", {"c.yaml": "lrs: [0.1\n"}),
    Bad("yaml-not-a-mapping", "eval --config c.yaml", r"c.yaml: expected a mapping", {"c.yaml": "- a list\n"}),
    Bad("yaml-unknown-key", "eval --config c.yaml --data {data}", r"c.yaml: unknown config key 'learning_rate'",
        {"c.yaml": "learning_rate: 0.1\n"}),
    Bad("yaml-wrong-type", "eval --config c.yaml", r"'batch_size': expected an integer, got 'many'",
        {"c.yaml": "batch_size: many\n"}),
    Bad("yaml-list-for-int", META + " --config c.yaml", r"'epochs': expected an integer, got \['1', '2'\]",
        {"c.yaml": "epochs: [1, 2]\n"}),
    Bad("yaml-bad-bool", "eval --config c.yaml", r"'truncate': expected true/false, got 'maybe'",
        {"c.yaml": "truncate: maybe\n"}),
    Bad("yaml-missing-file", "eval --config nothing.yaml", r"config nothing.yaml: no such file"),
    Bad("option-unknown", EVAL + " {data} --no-such-key 1", r"unknown config key 'no-such-key'"),
    Bad("option-without-value", EVAL + " {data} --limit", r"option --limit needs a value"),
    Bad("option-stray-argument", EVAL + " {data} extra", r"unexpected argument 'extra'"),
    Bad("config-without-value", "eval --config", r"argument --config: expected one argument"),
    Bad("threads-zero", EVAL + " {data} --threads 0", r"--threads must be a positive integer"),
    Bad("lr-not-a-number", EVAL + " {data} --lrs abc", r"'lrs': expected a number, got 'abc'"),
    Bad("lr-negative", EVAL + " {data} --lrs -1e-3", r"'lrs' must be positive"),
    Bad("setting-unknown", EVAL + " {data} --settings nc,zero", r"unknown setting 'zero'"),
    Bad("batch-zero", EVAL + " {data} --batch-size 0", r"'batch_size' must be positive"),
    Bad("steps-fractional", EVAL + " {data} --steps 1.5", r"'steps': expected an integer"),
    # models
    Bad("model-missing", "eval --model /no/such/dir --data {data}", r"model '/no/such/dir': no such directory "
        r"\(/no does not exist\)"),
    Bad("model-dir-without-config", "eval --model {tmp} --data {data}", r"has no config.json"),
    Bad("model-pickled-weights", "eval --model pickled --data {data}",
        r"only pickled weights \(pytorch_model.bin\).*run arbitrary code", setup=pickled_model),
    Bad("tokenizer-without-pad-or-eos", "eval --model nopad --data {data} --runs-dir {runs}",
        r"tokenizer of 'nopad' has neither a pad nor an eos token", setup=model_without_pad_or_eos),
    Bad("model-custom-code-untrusted", "eval --model custom --data {data} --runs-dir {runs}",
        r"ships its own Python code.*--trust-remote-code true", setup=custom_code_model),
    Bad("device-unknown", EVAL + " {data} --device gpu0", r"unknown device 'gpu0'"),
    Bad("device-absent-gpu", EVAL + " {data} --device cuda:99", r"device '?cuda:99'? requested but"),
    # run directories
    Bad("eval-run-exists", EVAL + " {data} --name taken", r"runs/taken already exists",
        setup=existing_dir("runs/taken")),
    Bad("runs-dir-under-a-file", EVAL + " {data} --runs-dir afile/runs", r"afile is not a directory",
        {"afile": "x"}),
    Bad("runs-dir-read-only", META + " --name r", r"cannot write to .*runs \(read-only", setup=read_only_runs_dir),
    Bad("disk-full", META + " --name r", r"not enough free space for runs/r: 0 MiB free on its disk, about \d+ MiB",
        setup=full_disk),
    # data
    Bad("data-unknown-task", "data nosuch --out out", r"unknown data task 'nosuch'"),
    Bad("data-no-out", "data character", r"data needs --out DIR"),
    Bad("data-out-exists", "data character --out out", r"out already exists", setup=existing_dir("out")),
    Bad("data-zero-train", "data character --out out --n-train 0", r"'n_train' must be positive"),
    # prepare
    Bad("prepare-zero-lr", "prepare --model {model} --data {data} --runs-dir {runs} --lr 0", r"'lr' must be positive"),
    Bad("prepare-negative-nc-weight", "prepare --model {model} --data {data} --nc-weight -1",
        r"'nc_weight' must be >= 0"),
    Bad("prepare-missing-data", "prepare --model {model} --data nothing", r"error: nothing: no such file"),
    # data: SQuAD and WikiText files
    Bad("squad-missing-answers", "data squad --source sq --out out", r"qas\[0\]: missing field 'answers'",
        _squad_files({"id": "q", "question": "Who?"})),
    Bad("squad-answer-start-outside", "data squad --source sq --out out",
        r"answer_start 99 is outside the passage \(9 characters\)",
        _squad_files({"id": "q", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 99}]})),
    Bad("squad-empty-paragraph", "data squad --source sq --out out", r"paragraphs\[0\]: empty paragraph context",
        _squad_files({"id": "q", "question": "Who?", "answers": []}, context="  ")),
    Bad("squad-not-json", "data squad --source sq --out out", r"train-v1.1.json: not valid JSON",
        {"sq/train-v1.1.json": "{", "sq/dev-v1.1.json": "{"}),
    Bad("squad-dir-without-files", "data squad --source {tmp} --out out", r"train-v1.1.json: no such file"),
    Bad("wikitext-missing-file", "data wikitext --source wt --out out", r"wiki.train.raw: no such file",
        {"wt/wiki.test.raw": " Prose .\n"}),
    Bad("wikitext-only-headings", "data wikitext --source wt --out out", r"wiki.train.raw: holds no paragraphs",
        {"wt/wiki.train.raw": " = Title = \n\n = = Section = = \n", "wt/wiki.test.raw": " = T = \n"}),
    Bad("wikitext-not-utf8", "data wikitext --source wt --out out", r"wiki.train.raw:1: not UTF-8 text",
        {"wt/wiki.train.raw": b"caf\xe9 au lait\n", "wt/wiki.test.raw": b"x\n"}),
    Bad("data-spans-inverted", "data wiki-offline --out out --min-context-words 50 --max-context-words 10",
        r"max_context_words \(10\) is below min_context_words \(50\)"),
    # meta-train
    Bad("meta-no-data", "meta-train --model {model}", r"meta-train needs --data"),
    Bad("meta-unknown-objective", META + " --objective kl", r"unknown objective 'kl'"),
    Bad("meta-outer-lr-zero", META + " --outer-lr 0", r"'outer_lr' must be positive"),
    Bad("meta-inner-lr-negative", META + " --inner-lr -1", r"'inner_lr' must be >= 0"),
    Bad("meta-lm-source-unknown", META + " --lm-source web", r"unknown lm_source 'web'"),
    Bad("meta-lm-source-twice", META + " --lm-source prompt+prompt", r"lm_source 'prompt\+prompt' names a source "
        r"twice"),
    Bad("meta-lm-texts-missing", META + " --lm-source text --lm-texts {tmp}/none.txt", r"none.txt: no such file"),
    Bad("meta-lm-texts-without-text-source", META + " --lm-texts {tmp}/g.txt", r"lm_texts is read only with "
        r"--lm-source text", {"g.txt": "Some text.\n"}),
    Bad("meta-lm-texts-empty", META + " --lm-source text --lm-texts {tmp}/g.jsonl", r"g.jsonl",
        {"g.jsonl": "\n"}),
    Bad("meta-lm-text-tokens-one", META + " --lm-source text --lm-text-tokens 1", r"'lm_text_tokens' must be >= 2"),
    Bad("meta-lcgd-with-lora", META + " --inner-rule lcgd --lora inner", r"inner_rule 'lcgd' does not work with "
        r"lora 'inner'"),
    Bad("meta-max-steps-zero", META + " --max-steps 0", r"'max_steps' must be positive"),
    Bad("meta-precision-unknown", META + " --precision fp16", r"unknown precision 'fp16'"),
    Bad("meta-processes-zero", META + " --num-processes 0", r"'num_processes' must be positive"),
    Bad("meta-batch-below-processes", META + " --num-processes 4", r"batch_size 2 is smaller than num_processes 4"),
    Bad("meta-batch-larger-than-dataset", META + " --batch-size 100 --train-limit 8",
        r"batch_size 100 is larger than the 8 training triplets"),
    Bad("meta-resume-and-overwrite", META + " --resume true --overwrite true",
        r"choose one of --resume and --overwrite"),
    Bad("meta-before-from-missing", META + " --before-from nowhere", r"--before-from nowhere: not a meta-train run"),
    Bad("meta-run-exists", META + DONE_ARGS, r"runs/done already exists", setup=finished_run),
    Bad("meta-resume-nothing", META + " --name fresh --resume true", r"nothing to resume: .*fresh has no checkpoint"),
    Bad("meta-resume-changed-config", META + DONE_ARGS + " --outer-lr 1 --resume true", r"'outer_lr' was",
        setup=finished_run),
    Bad("meta-resume-other-model-checkpoint", META + DONE_ARGS + " --resume true",
        r"checkpoint parameters do not match the model \(different model\?\)", setup=different_model_checkpoint),
    Bad("meta-resume-pickled-checkpoint", META + DONE_ARGS + " --resume true",
        r"refusing pickled checkpoint checkpoint.pt \(it can run code on load\)", setup=pickled_checkpoint),
    Bad("meta-resume-truncated-checkpoint", META + DONE_ARGS + " --resume true",
        r"model.safetensors: checksum mismatch, the checkpoint is corrupt", setup=truncated_checkpoint),
    # analyze
    Bad("analyze-unknown-rule", "analyze --models tiny --runs-dir {runs} --rules sgd,adam",
        r"config key 'rules': unknown value 'adam'"),
    Bad("analyze-permutations-beyond-orders", "analyze --models tiny --runs-dir {runs} --n-demos 3 --permutations 7",
        r"permutations 7 is more than the 6 orders of 3 demonstrations"),
    Bad("analyze-negative-lr", "analyze --models tiny --runs-dir {runs} --lr -1", r"'lr' must be positive"),
    # pretrain-tiny and demo
    Bad("pretrain-tiny-zero-steps", "pretrain-tiny --out t --steps 0", r"'steps' must be positive"),
    Bad("pretrain-tiny-over-shipped-model", "pretrain-tiny", r"assets/tiny already exists"),
    Bad("demo-zero-batch", "demo --batch-size 0", r"'batch_size' must be positive"),
    Bad("demo-run-exists", "demo --runs-dir {runs} --name taken", r"runs/taken already exists",
        setup=existing_dir("runs/taken")),
    Bad("multi-context-bad-mode", "multi-context --data {data} --model {model} --runs-dir {runs} --modes parallel",
        "unknown mode 'parallel'"),
    Bad("multi-context-group-too-big", "multi-context --data {data} --model {model} --runs-dir {runs} --sizes 16",
        "a group of 16 contexts needs at least 16 triplets"),
    Bad("controls-without-ft", "controls --data {data} --model {model} --runs-dir {runs} --settings nc,prompt",
        "needs 'nc' and 'ft'"),
    Bad("distract-too-many", "distract --data {data} --out {tmp}/d2 --distractors 20", "found only"),
    Bad("transfer-no-target", "transfer --source {data} --model {model} --runs-dir {runs}",
        "needs --source and --target"),
    Bad("report-no-runs", "report {tmp}", "no meta-train, multi-context"),
    Bad("reproduce-unknown-key", "reproduce --suite {tmp}/s.yaml", "unknown key 'colour'",
        files={"s.yaml": "name: s\ncolour: red\nblocks: []\n"}),
    Bad("reproduce-no-file", "reproduce --suite {tmp}/nope.yaml", "no such file"),
    # run and split names: one safe path component; nothing replaced that promptstep did not write
    Bad("name-dot-overwrite", EVAL + " {data} --name . --overwrite true", r"run name '\.' starts with '\.'",
        setup=existing_dir("runs/other")),
    Bad("name-dotdot-overwrite", EVAL + " {data} --name .. --overwrite true", r"run name '\.\.' starts with"),
    Bad("name-empty-overwrite", META + " --name '' --overwrite true", r"run name '' is empty", setup=finished_run),
    Bad("name-parent-path", EVAL + " {data} --name ../escaped", r"run name '\.\./escaped' is a path"),
    Bad("name-absolute-path", EVAL + " {data} --name {tmp}/abs", r"is a path"),
    Bad("name-hidden", EVAL + " {data} --name .hidden", r"starts with '\.'"),
    Bad("name-newline", EVAL + " {data} --name 'a\nb'", r"contains unprintable characters"),
    Bad("name-trailing-space", EVAL + " {data} --name 'run '", r"starts or ends with whitespace"),
    Bad("name-too-long", EVAL + " {data} --name " + "x" * 250, r"is longer than 200 bytes"),
    Bad("prepare-name-path", "prepare --model {model} --data {data} --runs-dir {runs} --name ../p", r"is a path"),
    Bad("meta-name-dotdot", META + " --name .. --overwrite true", r"run name '\.\.' starts with"),
    Bad("multi-context-name-path", "multi-context --data {data} --model {model} --runs-dir {runs} --name ../m",
        r"is a path"),
    Bad("controls-name-dotdot", "controls --data {data} --model {model} --runs-dir {runs} --name ..",
        r"starts with '\.'"),
    Bad("transfer-name-path", "transfer --source {data} --target {data} --model {model} --runs-dir {runs} "
        "--name a/b", r"is a path"),
    Bad("analyze-name-path", "analyze --models tiny --runs-dir {runs} --name ../a", r"is a path"),
    Bad("demo-name-dotdot", "demo --runs-dir {runs} --name .. --overwrite true", r"starts with '\.'"),
    Bad("distract-split-parent", "distract --data {data} --out {tmp}/d --splits ../x", r"split name '\.\./x' is a path",
        {"x.jsonl": _line()}),
    Bad("distract-split-absolute", "distract --data {data} --out {tmp}/d --splits {tmp}/x", r"is a path",
        {"x.jsonl": _line()}),
    Bad("reproduce-suite-name-path", "reproduce --suite {tmp}/s.yaml", r"suite name '\.\./up' is a path",
        {"s.yaml": "name: ../up\nblocks: [{name: b, model: tiny, tasks: {c: {generate: character}}}]\n"}),
    Bad("reproduce-block-name-path", "reproduce --suite {tmp}/s.yaml", r"block name '\.\./b' is a path",
        {"s.yaml": "name: s\nblocks: [{name: ../b, model: tiny, tasks: {c: {generate: character}}}]\n"}),
    Bad("reproduce-task-name-path", "reproduce --suite {tmp}/s.yaml", r"task name '\.\./t' is a path",
        {"s.yaml": "name: s\nblocks: [{name: b, model: tiny, tasks: {../t: {generate: character}}}]\n"}),
    Bad("data-overwrite-user-dir", "data character --out mine --overwrite true",
        r"mine exists and is not a promptstep run or dataset directory; refusing", setup=user_dir("mine")),
    Bad("eval-overwrite-user-dir", EVAL + " {data} --name mine --overwrite true",
        r"runs/mine exists and is not a promptstep run", setup=user_dir("runs/mine")),
    Bad("meta-overwrite-user-dir", META + " --name mine --overwrite true", r"is not a promptstep run",
        setup=user_dir("runs/mine")),
    Bad("report-overwrite-user-dir", "report {runs} --out mine --overwrite true", r"is not a promptstep run",
        setup=lambda env: (finished_run(env), user_dir("mine")(env))),
    Bad("pretrain-tiny-overwrite-user-dir", "pretrain-tiny --out mine --overwrite true --steps 1",
        r"is not a promptstep run", setup=user_dir("mine")),
    Bad("reproduce-overwrite-user-dir", "reproduce --suite {tmp}/s.yaml --overwrite true", r"is not a promptstep run",
        {"s.yaml": "name: mine\nruns_dir: .\nblocks: [{name: b, model: tiny, tasks: {c: {generate: character}}}]\n"},
        setup=user_dir("mine")),
    Bad("data-out-cwd-overwrite", "data character --out . --overwrite true",
        r"(holds the current working directory|is not a promptstep)"),
    Bad("data-out-symlink", "data character --out out --overwrite true", r"out is a symbolic link",
        setup=symlinked_out),
    # replace only on success, one writer per run
    Bad("meta-overwrite-then-bad-inner-params", META + DONE_ARGS + " --overwrite true --inner-params nomatch",
        r"inner_params|param_filter 'nomatch' matches no parameter", setup=finished_run),
    Bad("meta-interrupted-run-exists", META + DONE_ARGS, r"has an interrupted run in .*\.done\.inprogress; pass "
        r"--resume true", setup=interrupted_run),
    Bad("eval-run-locked", EVAL + " {data} --name busy", r"runs/busy is being written by another promptstep process",
        setup=locked_run("busy")),
    Bad("meta-run-locked", META + " --name busy --overwrite true", r"is being written by another promptstep",
        setup=lambda env: (finished_run(env), locked_run("busy")(env))),
    # knowledge injection: documents, questions, injected directories
    Bad("inject-no-docs", "inject --model {model} --out inj", r"inject needs --docs"),
    Bad("inject-empty-document", INJECT + " e.txt", r"e\.txt: empty document", {"e.txt": "  \n\n "}),
    Bad("inject-binary-file", INJECT + " b.txt", r"b\.txt: binary file", {"b.txt": b"abc\x00\x01def"}),
    Bad("inject-not-utf8", INJECT + " u.md", r"u\.md:1: not UTF-8 text", {"u.md": b"caf\xe9"}),
    Bad("inject-unknown-suffix", INJECT + " d.pdf", r"d\.pdf: unknown suffix '\.pdf'", {"d.pdf": "text"}),
    Bad("inject-empty-directory", INJECT + " docs", r"docs: empty directory", {"docs/.keep": ""}),
    Bad("inject-jsonl-duplicate-id", INJECT + " d.jsonl", r"d\.jsonl:2: duplicate id 'a'",
        {"d.jsonl": '{"id": "a", "text": "x y"}\n{"id": "a", "text": "z w"}\n'}),
    Bad("inject-longer-than-window-without-chunking",
        "inject --model {model64} --out inj --chunking false --docs long.txt",
        r"document 'long\.txt' .* is \d+ tokens, longer than one chunk of 64 tokens", {"long.txt": "word " * 300}),
    Bad("inject-chunk-over-window", "inject --model {model64} --out inj --chunk-tokens 100 --docs d.txt",
        r"chunk size 100 is over the model's window of 64 tokens", {"d.txt": "Evan Armstrong walked on Mars."}),
    Bad("inject-unknown-mode", INJECT + " d.txt --mode mean", r"unknown injection mode 'mean'", {"d.txt": "x y"}),
    Bad("inject-out-exists", INJECT + " d.txt", r"inj already exists", {"d.txt": "x y"}, setup=existing_dir("inj")),
    Bad("inject-negative-lr", INJECT + " d.txt --lr -1", r"'lr' must be >= 0", {"d.txt": "x y"}),
    Bad("ask-other-base-model", "ask --model {model64} --injected inj --question Who",
        r"inj/update: injected into another base model", setup=injected_dir),
    Bad("ask-injected-missing", "ask --injected nowhere --question Who", r"nowhere: no such injected directory"),
    Bad("ask-not-an-injected-dir", "ask --injected {tmp} --question Who", r"not an injected directory"),
    Bad("ask-no-question", "ask --model {model}", r"ask needs one of --question TEXT or --questions"),
    Bad("ask-question-and-questions", ASK + " q.jsonl --question Who", r"one of --question TEXT or --questions",
        {"q.jsonl": '{"id": "a", "question": "Who"}\n'}),
    Bad("ask-no-model", "ask --question Who", r"ask needs --model or --injected"),
    Bad("ask-question-over-window", "ask --model {model64} --question '" + "word " * 40 + "'",
        r"question 'q1' is \d+ tokens with its context; with a 32-token answer that is over the model's window of 64"),
    Bad("ask-questions-not-json", ASK + " q.jsonl", r"q\.jsonl:2: not valid JSON",
        {"q.jsonl": '{"id": "a", "question": "Who"}\n{oops\n'}),
    Bad("ask-questions-missing-question", ASK + " q.jsonl", r"q\.jsonl:1: missing field 'question'",
        {"q.jsonl": '{"id": "a"}\n'}),
    Bad("ask-questions-empty-answer", ASK + " q.jsonl", r"q\.jsonl:1: field 'answer' must be a non-empty string",
        {"q.jsonl": '{"id": "a", "question": "Who", "answer": ""}\n'}),
    Bad("ask-questions-unknown-document", ASK + " q.jsonl --docs d.jsonl",
        r"q\.jsonl:1: document 'nope' is not among the documents given",
        {"q.jsonl": '{"id": "a", "question": "Who", "document": "nope"}\n', "d.jsonl": '{"id": "d", "text": "t"}\n'}),
    Bad("ask-questions-not-jsonl", ASK + " q.txt", r"q\.txt: questions are a \.jsonl file", {"q.txt": "Who?"}),
    Bad("ask-questions-empty-file", ASK + " q.jsonl", r"q\.jsonl: holds no questions", {"q.jsonl": "\n"}),
    Bad("ask-out-exists", ASK + " q.jsonl --out answers", r"answers already exists",
        {"q.jsonl": '{"id": "a", "question": "Who"}\n'}, setup=existing_dir("answers")),
    Bad("inject-eval-no-data", "inject-eval --model {model}", r"inject-eval needs --data"),
    Bad("inject-eval-sizes-over-documents", "inject-eval --model {model} --data {data} --runs-dir {runs} --sizes 1,9",
        r"sizes up to 9 need at least 9 documents; it holds 4"),
    Bad("inject-eval-unknown-method", "inject-eval --model {model} --data {data} --methods nc,rag",
        r"unknown method 'rag'"),
    Bad("inject-eval-unknown-mode", "inject-eval --model {model} --data {data} --modes sequential,mean",
        r"unknown mode 'mean'"),
    Bad("inject-eval-zero-adamw-steps", "inject-eval --model {model} --data {data} --adamw-steps 0",
        r"'adamw_steps' must be positive"),
    Bad("playground-port-out-of-range", "playground --model {model} --port 70000", r"'port' must be in 1\.\.65535"),
    Bad("playground-unknown-rule", "playground --model {model} --rule adam", r"unknown rule 'adam'"),
    Bad("playground-without-its-extra", "playground --model {model}",
        r"the playground needs its optional extra .*pip install 'promptstep\[playground\]'", setup=without_gradio),
    # non-finite numbers are refused where they are parsed
    Bad("lr-nan", EVAL + " {data} --lrs nan", r"'lrs': expected a finite number, got 'nan'"),
    Bad("meta-inner-lr-inf", META + " --inner-lr inf", r"'inner-lr': expected a finite number"),
    Bad("meta-lm-weight-nan", META + " --lm-weight nan", r"'lm-weight': expected a finite number"),
    Bad("meta-clip-nan-yaml", META + " --config c.yaml", r"'clip': expected a finite number",
        {"c.yaml": "clip: .nan\n"}),
    # --- non-finite numbers, everywhere a number is read (options, YAML, JSONL, JSON, weights)
    Bad("yaml-lr-inf", "eval --config c.yaml --data {data}", r"'lrs': expected a finite number, got '\.inf'",
        {"c.yaml": "lrs: [.inf]\n"}),
    Bad("outer-lr-minus-inf", META + " --outer-lr -inf", r"'outer-lr': expected a finite number"),
    Bad("outer-lr-beyond-float32", META + " --outer-lr 1e39", r"'outer-lr': 1e\+39 is beyond the range of float32"),
    Bad("eval-lr-beyond-float32", EVAL + " {data} --lrs 1e-3,5e38", r"'lrs': 5e\+38 is beyond the range of float32"),
    Bad("clip-overflows-to-inf", META + " --clip 1e999", r"'clip': expected a finite number, got '1e999'"),
    Bad("transfer-joint-weight-nan", "transfer --source {data} --target {data} --joint-weight nan",
        r"'joint-weight': expected a finite number"),
    Bad("data-same-family-nan", "data character --out out --same-family NaN", r"'same-family': expected a finite"),
    Bad("jsonl-nan-tag", EVAL + " bad.jsonl", r"bad.jsonl:1: not valid JSON \(NaN is not a JSON number\)",
        {"bad.jsonl": _line()[:-2] + ', "tags": {"score": NaN}}\n'}),
    Bad("jsonl-infinity-field", EVAL + " bad.jsonl", r"bad.jsonl:1: not valid JSON \(Infinity is not a JSON number\)",
        {"bad.jsonl": '{"id": Infinity}\n'}),
    Bad("squad-nan-answer-start", "data squad --source sq --out out", r"train-v1.1.json: not valid JSON \(NaN is not",
        {name: text.replace('"answer_start": 0', '"answer_start": NaN') for name, text in _squad_files(
            {"id": "q", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}]}).items()}),
    Bad("model-nan-weights", EVAL + " {data} --model nanmodel", r"model 'nanmodel' has 1 non-finite weight values",
        setup=model_copy("nanmodel", nan_weight)),
    Bad("meta-resume-nan-state", META + DONE_ARGS + " --resume true", r"state.json: unreadable checkpoint state",
        setup=lambda env: (finished_run(env), (env.tmp / "runs/done/checkpoint/state.json").write_text(
            '{"progress": {"step": NaN}, "sha256": {}, "optimizer": {}}'))),
    Bad("meta-resume-optimizer-state-of-another-run", META + DONE_ARGS + " --resume true", r"checkpoint: its "
        r"optimizer state does not fit this run", setup=lambda env: (finished_run(env), _edit_state(
            env, lambda state: state["optimizer"].update(param_groups=[{"params": [0]}])))),
    Bad("meta-resume-step-not-a-number", META + DONE_ARGS + " --resume true", r"unreadable checkpoint state "
        r"\(TypeError: progress step 'two' is not a step number\)",
        setup=lambda env: (finished_run(env), _edit_state(env, lambda state: state["progress"].update(step="two")))),
    Bad("meta-before-from-nan", META + " --before-from runs/done", r"before.json: not valid JSON \(NaN is not",
        setup=run_file("before.json", '{"nc": {"n": NaN}}')),
    Bad("report-summary-nan", "report {runs}", r"summary.json: not valid JSON \(NaN is not a JSON number\)",
        setup=run_file("summary.json", '{"before": {}, "after": {"ft": {"em": NaN}}}')),
    # --- generation past the window: every sequence a command builds (answer or max_new_tokens) must fit
    Bad("eval-generation-past-window", "eval --model {model64} --runs-dir {runs} --data edge.jsonl "
        "--max-new-tokens 50", r"triplet 'edge' is \d+ tokens in the Prompt format \(with 50 tokens generated",
        {"edge.jsonl": _line(id="edge", context=GOOD["context"])}),
    Bad("meta-lc-teacher-past-window", "meta-train --data edge --model {model64} --runs-dir {runs} --batch-size 1 "
        "--max-new-tokens 50", r"with 50 tokens generated after the prompt\), over the model's limit of 64 \(shorten "
        r"its context, or lower --max-new-tokens\)",
        {"edge/train.jsonl": _line(id="edge", context=GOOD["context"]), "edge/test.jsonl": _line()}),
    Bad("controls-generation-past-window", "controls --data edge --model {model64} --runs-dir {runs} --train-n 0 "
        "--max-new-tokens 50", r"triplet 'edge' is \d+ tokens .*pass --truncate true",
        {"edge/test.jsonl": _line(id="edge", context=GOOD["context"])}),
    Bad("multi-context-generation-past-window", "multi-context --data edge --model {model64} --runs-dir {runs} "
        "--sizes 1 --max-new-tokens 50", r"with 50 tokens generated after the prompt\), over the model's limit",
        {"edge/test.jsonl": _line(id="edge", context=GOOD["context"])}),
    Bad("transfer-generation-past-window", "transfer --source edge --target {data} --model {model64} "
        "--runs-dir {runs} --max-new-tokens 50", r"triplet 'edge' is \d+ tokens",
        {"edge/test.jsonl": _line(id="edge", context=GOOD["context"]), "edge/train.jsonl": _line()}),
    Bad("eval-truncate-query-alone-too-long", "eval --model {model64} --runs-dir {runs} --data q.jsonl "
        "--truncate true --max-new-tokens 60", r"triplet 'q' does not fit in 64 tokens \(with 60 tokens generated "
        r"after the prompt\) even without context", {"q.jsonl": _line(id="q")}),
    Bad("prepare-context-longer-than-window", "prepare --model {model64} --data long.jsonl --runs-dir {runs}",
        r"triplet 'long' is \d+ tokens in the Prompt format, over the model's limit of 64 \(shorten its context\)",
        {"long.jsonl": _line(id="long", context="word " * 300)}),
    # --- damaged models: one line naming the problem, found before torch loads where possible
    Bad("model-weights-cut-short", EVAL + " {data} --model cut", r"cut/model.safetensors: cut short \(\d+ bytes, its "
        r"header describes \d+\)", setup=model_copy("cut", cut_weights)),
    Bad("model-weights-not-safetensors", EVAL + " {data} --model junk", r"junk/model.safetensors: not a safetensors "
        "file", setup=model_copy("junk", written("model.safetensors", b"<html>404 Not Found</html>"))),
    Bad("model-weights-header-damaged", EVAL + " {data} --model hdr", r"not a safetensors file \(its header is "
        r"damaged\)", setup=model_copy("hdr", written("model.safetensors", (8).to_bytes(8, "little") + b"{not json"))),
    Bad("model-config-wider-than-weights", EVAL + " {data} --model wide", r"model 'wide': its config.json does not "
        r"match its weights", setup=model_copy("wide", edited_config(n_embd=64))),
    Bad("model-config-more-layers-than-weights", EVAL + " {data} --model deep", r"its config.json does not match its "
        r"weights \(the weights lack \d+ parameter", setup=model_copy("deep", edited_config(n_layer=3))),
    Bad("model-config-fewer-layers-than-weights", EVAL + " {data} --model shallow", r"its config.json does not "
        r"match its weights \(the weights hold unknown", setup=model_copy("shallow", edited_config(n_layer=1))),
    Bad("model-config-not-json", EVAL + " {data} --model badcfg", r"badcfg/config.json: not valid JSON",
        setup=model_copy("badcfg", written("config.json", "{\"model_type\": "))),
    Bad("model-config-without-model-type", EVAL + " {data} --model notype", r"config.json: no 'model_type'",
        setup=model_copy("notype", edited_config(model_type=...))),
    Bad("model-config-a-list", EVAL + " {data} --model listcfg", r"listcfg/config.json: expected a JSON object",
        setup=model_copy("listcfg", written("config.json", "[]"))),
    Bad("model-without-tokenizer", EVAL + " {data} --model notok", r"model directory notok has no tokenizer",
        setup=model_copy("notok", removed("tokenizer.json", "tokenizer_config.json"))),
    Bad("model-without-weights", EVAL + " {data} --model noweights", r"has no weights \(model.safetensors\)",
        setup=model_copy("noweights", removed("model.safetensors"))),
    Bad("model-is-a-file", EVAL + " {data} --model weights.bin", r"model 'weights.bin' is a file, not a model "
        "directory", {"weights.bin": "x"}),
    Bad("adapter-base-missing", EVAL + " {data} --model adapter", r"model 'nowhere/base/model': no such directory",
        {"adapter/adapter_config.json": '{"base_model_name_or_path": "nowhere/base/model"}'}),
    Bad("adapter-without-base", EVAL + " {data} --model adapter", r"adapter_config.json: no 'base_model_name_or_path'",
        {"adapter/adapter_config.json": '{"r": 8}'}),
    Bad("attn-flash-without-package", EVAL + " {data} --attn flash_attention_2", r"attn 'flash_attention_2' needs "
        "the flash_attn package"),
    Bad("attn-unknown", META + " --attn fast", r"unknown attn 'fast' \(choose from eager, sdpa"),
    # --- files that are not what they should be: said for what they are, never opened if they could block
    Bad("data-is-dev-null", EVAL + " /dev/null", r"/dev/null: is a character device, not a regular file"),
    Bad("data-is-a-fifo", EVAL + " pipe.jsonl", r"pipe.jsonl: is a named pipe \(FIFO\), not a regular file",
        setup=fifo("pipe.jsonl")),
    Bad("data-split-is-a-directory", EVAL + " ds", r"ds/test.jsonl: is a directory, not a regular file",
        setup=existing_dir("ds/test.jsonl")),
    Bad("data-unreadable", EVAL + " /proc/self/mem", r"/proc/self/mem: cannot be read \(Input/output error\)"),
    Bad("config-is-a-fifo", "eval --config c.yaml", r"config c.yaml: is a named pipe \(FIFO\)", setup=fifo("c.yaml")),
    Bad("config-is-dev-null", "eval --config /dev/null", r"config /dev/null: is a character device"),
    Bad("config-is-a-directory", "eval --config cdir", r"config cdir: is a directory", setup=existing_dir("cdir")),
    Bad("squad-source-is-a-fifo", "data squad --source sq.json --out out", r"sq.json: is a named pipe",
        setup=fifo("sq.json")),
    Bad("squad-source-mistyped-path", "data squad --source ./sq2 --out out", r"sq2: no such file"),
    Bad("wikitext-source-mistyped-path", "data wikitext --source ./wt2 --out out", r"wt2: no such directory"),
    Bad("wikitext-source-a-file", "data wikitext --source wt.txt --out out", r"wt.txt: is a file, not a directory",
        {"wt.txt": "x"}),
    Bad("wiki-offline-source-not-bz2", "data wiki-offline --source dump.bz2 --out out", r"dump.bz2: not a whole "
        r"bzip2-compressed Wikipedia XML dump", {"dump.bz2": "plain text, not bzip2"}),
    Bad("wiki-offline-source-missing", "data wiki-offline --source nodump.bz2 --out out", r"nodump.bz2: no such file"),
    # --- YAML: what makes a small file dangerous or ambiguous
    Bad("yaml-not-utf8", "eval --config c.yaml", r"config c.yaml:1: not UTF-8 text \(byte 6\)",
        {"c.yaml": b"name: \xff\xfe\n"}),
    Bad("yaml-key-not-a-string", "eval --config c.yaml", r"config c.yaml:1: not valid YAML \(a key that is not a "
        r"string\)", {"c.yaml": "[a, b]: 1\n"}),
    Bad("yaml-key-given-twice", "eval --config c.yaml", r"config c.yaml:2: not valid YAML \(key 'limit' given twice\)",
        {"c.yaml": "limit: 1\nlimit: 2\n"}),
    Bad("yaml-key-spelled-twice", "eval --config c.yaml --data {data}", r"config key 'max_new_tokens' given twice",
        {"c.yaml": "max-new-tokens: 1\nmax_new_tokens: 2\n"}),
    Bad("yaml-alias-bomb", "eval --config c.yaml", r"config c.yaml:\d+: not valid YAML \(alias \*\w \(promptstep "
        r"configs do not take YAML aliases\)\)", {"c.yaml": ALIAS_BOMB}),
    Bad("yaml-nested-too-deeply", "eval --config c.yaml", r"config c.yaml: not valid YAML \(nested too deeply\)",
        {"c.yaml": "name: " + _deep(20000) + "\n"}),
    Bad("yaml-null-for-a-string", META + " --config c.yaml", r"config key 'name': expected str, got null",
        {"c.yaml": "name: ~\n"}),
    Bad("option-huge-value", EVAL + " {data} --batch-size " + "9" * 5000,
        r"'batch-size': expected an integer, got '9{20,}\.\.\. \(5,002 characters\)"),
    # --- JSON: nesting and numbers the parser cannot take
    Bad("jsonl-nested-too-deeply", EVAL + " bad.jsonl", r"bad.jsonl:1: not valid JSON \(nested too deeply\)",
        {"bad.jsonl": _deep(100000) + "\n"}),
    Bad("jsonl-integer-too-long", EVAL + " bad.jsonl", r"bad.jsonl:1: not valid JSON \(Exceeds the limit",
        {"bad.jsonl": '{"id": ' + "7" * 5000 + "}\n"}),
    Bad("report-summary-nested-too-deeply", "report {runs}", r"summary.json: not valid JSON \(nested too deeply\)",
        setup=run_file("summary.json", _deep(100000))),
    # --- report: damaged runs are one line naming the file; directory links are not followed
    Bad("report-summary-not-json", "report {runs}", r"done/summary.json: not valid JSON",
        setup=run_file("summary.json", '{"before": ')),
    Bad("report-summary-a-list", "report {runs}", r"done/summary.json: damaged \(expected a JSON object\)",
        setup=run_file("summary.json", "[1, 2]")),
    Bad("report-summary-after-not-settings", "report {runs}", r"summary.json: after: expected settings, got 'oops'",
        setup=damaged_run(lambda s: {**s, "after": "oops"})),
    Bad("report-summary-metric-not-a-number", "report {runs}", r"summary.json: before.nc: expected metrics",
        setup=damaged_run(lambda s: {**s, "before": {**s["before"], "nc": {"em": "high"}}})),
    Bad("report-controls-breakdown-incomplete", "report {runs}", r"breakdown.test: expected n and always_incorrect",
        {"runs/c/config.yaml": "model: m\ndata: d\n",
         "runs/c/summary.json": _summary("controls", breakdown={"test": {"n": 2}})}),
    Bad("report-controls-without-irrelevant", "report {runs}", r"summary.json: eval: no 'irrelevant' setting",
        {"runs/c/config.yaml": "model: m\ndata: d\n",
         "runs/c/summary.json": json.dumps({"kind": "controls", "eval": {}, "breakdown": {}})}),
    Bad("report-transfer-without-meta", "report {runs}", r"results: expected the base and meta models' results",
        {"runs/t/config.yaml": "model: m\n", "runs/t/summary.json": json.dumps({"kind": "transfer", "results": {}})}),
    Bad("report-multi-context-odd-setting", "report {runs}", r"'sequential@x' is not a multi-context setting",
        {"runs/m/config.yaml": "model: m\ndata: d\n", "runs/m/summary.json": json.dumps(
            {"kind": "multi-context", "settings": {"sequential@x": {"n": 1, "tok_acc": 0.5}}})}),
    Bad("report-config-objective-not-a-string", "report {runs}", r"config.yaml: damaged \('objective' should be str",
        setup=run_file("config.yaml", "objective: [lc]\ndata: d\nmodel: m\n")),
    Bad("report-config-not-yaml", "report {runs}", r"done/config.yaml:\d+: not valid YAML",
        setup=run_file("config.yaml", "objective: [lc\n")),
    Bad("report-symlink-loop", "report {runs}", r"no meta-train, multi-context, controls, transfer",
        setup=symlink_loop),
    # --- reproduce suites: each section of the wrong type is one line naming it
    Bad("suite-blocks-not-a-list", SUITE, r"s.yaml: blocks: expected a list of blocks, "
        r"got '5'", {"s.yaml": "name: s\nblocks: 5\n"}),
    Bad("suite-experiment-tasks-not-a-list", SUITE, r"experiments.figure2.tasks: expected "
        r"a list of names, got 'c'", {"s.yaml": SUITE_BLOCK % "figure2: {tasks: c}"}),
    Bad("suite-inner-ks-not-integers", SUITE, r"experiments.multi.inner_ks.*expected an "
        r"integer, got 'many'", {"s.yaml": SUITE_BLOCK % "multi: {tasks: [c], inner_ks: [many]}"}),
    Bad("suite-pairs-not-pairs", SUITE, r"experiments.cross.pairs: expected a list of "
        r"\[train task, eval task\] pairs", {"s.yaml": SUITE_BLOCK % "cross: {pairs: [c]}"}),
    Bad("suite-cross-pair-repeated", SUITE, r"pairs: lists \['c', 'c'\] twice",
        {"s.yaml": SUITE_BLOCK % "cross: {pairs: [[c, c], [c, c]]}"}),
    Bad("suite-experiment-meta-not-a-mapping", SUITE, r"experiments.figure2.meta: "
        r"expected a mapping, got \['1'\]", {"s.yaml": SUITE_BLOCK % "figure2: {tasks: [c], meta: [1]}"}),
    Bad("suite-lora-modes-not-names", SUITE, r"experiments.lora.modes: expected a list "
        r"of names, got '5'", {"s.yaml": SUITE_BLOCK % "lora: {tasks: [c], modes: 5}"}),
    Bad("suite-base-model-not-a-flag", SUITE, r"base_model': expected true/false, got "
        r"'maybe'", {"s.yaml": SUITE_BLOCK % "controls: {tasks: [c], base_model: maybe}"}),
    Bad("suite-block-name-a-mapping", SUITE, r"blocks\[0\]: block name: expected a name",
        {"s.yaml": "name: s\nblocks: [{name: {a: 1}, model: tiny, tasks: {c: {generate: character}}}]\n"}),
    Bad("suite-alias-bomb", SUITE, r"suite .*s.yaml:\d+: not valid YAML \(alias",
        {"s.yaml": ALIAS_BOMB}),
    Bad("suite-inner-ks-repeated", SUITE, r"inner_ks: expected distinct positive",
        {"s.yaml": SUITE_BLOCK % "multi: {tasks: [c], inner_ks: [4, 4]}"}),
    Bad("suite-tasks-repeated", SUITE, r"experiments.figure2.tasks: lists 'c' twice",
        {"s.yaml": SUITE_BLOCK % "figure2: {tasks: [c, c]}"}),
    # --- a spec that looks like a path never goes to the hub; mistakes are named with a suggestion
    Bad("model-run-dir-not-model-dir", EVAL + " {data} --model runs/done", r"model directory runs/done has no "
        r"config.json; did you mean runs/done/model\?", setup=finished_run),
    Bad("model-path-typo", EVAL + " {data} --model runs/don/model", r"model 'runs/don/model': no such directory "
        r"\(runs/don does not exist\); did you mean runs/done\?", setup=finished_run),
    Bad("model-two-part-path-typo", EVAL + " {data} --model runs/doen", r"no such directory \(runs/doen does not "
        r"exist\); did you mean runs/done\?", setup=finished_run),
    Bad("model-dot-path-missing", EVAL + " {data} --model ./mymodel", r"model './mymodel': no such directory"),
    Bad("model-hub-unreachable", EVAL + " {data} --model someone/some-model", r"model 'someone/some-model' is not a "
        r"local directory, not in the local hub cache, and the hub \(huggingface.co\) cannot be reached"),
    Bad("model-not-a-hub-id", EVAL + " {data} --model 'not a model'", r"is neither an embedded model"),
    Bad("controls-base-mistyped", "controls --data {data} --model {model} --runs-dir {runs} --base runs/done",
        r"runs/done has no config.json; did you mean runs/done/model\?", setup=finished_run),
    Bad("analyze-second-model-missing", "analyze --models tiny,./missing --runs-dir {runs}",
        r"model './missing': no such directory"),
    Bad("multi-context-model-is-a-file", "multi-context --data {data} --model {data}/test.jsonl --runs-dir {runs} "
        "--sizes 1", r"is a file, not a model directory"),
    # --- silently odd values: repeats, negative periods, late checks moved before any work
    Bad("eval-settings-repeated", EVAL + " {data} --settings nc,nc", r"config key 'settings' lists 'nc' twice"),
    Bad("eval-lrs-repeated", EVAL + " {data} --lrs 1e-3,0.001", r"config key 'lrs' lists 0.001 twice"),
    Bad("eval-lrs-print-alike", EVAL + " {data} --lrs 0.001,0.0010000001", r"are both written ft@0.001"),
    Bad("multi-context-sizes-repeated", "multi-context --data {data} --model {model} --sizes 4,4",
        r"'sizes' lists 4 twice"),
    Bad("multi-context-modes-repeated", "multi-context --data {data} --model {model} --modes batched,batched",
        r"'modes' lists 'batched' twice"),
    Bad("analyze-rules-repeated", "analyze --models tiny --runs-dir {runs} --rules sgd,sgd", r"'rules' lists 'sgd'"),
    Bad("analyze-models-repeated", "analyze --models tiny,tiny --runs-dir {runs}", r"'models' lists 'tiny' twice"),
    Bad("distract-split-is-a-fifo", "distract --data pipes --out {tmp}/d --splits test", r"pipes/test.jsonl: is a "
        r"named pipe \(FIFO\)", setup=fifo("pipes/test.jsonl")),
    Bad("distract-split-missing", "distract --data {data} --out {tmp}/d --splits train,dev",
        r"dev.jsonl: no such file"),
    Bad("distract-splits-repeated", "distract --data {data} --out {tmp}/d --splits test,test", r"lists 'test' twice"),
    Bad("report-runs-repeated", "report {runs} {runs}", r"config key 'runs' lists", setup=finished_run),
    Bad("reproduce-only-repeated", "reproduce --suite {tmp}/s.yaml --only b,b", r"'only' lists 'b' twice"),
    Bad("transfer-modes-repeated", "transfer --source {data} --target {data} --modes joint,joint",
        r"'modes' lists 'joint' twice"),
    Bad("meta-checkpoint-every-negative", META + " --checkpoint-every -1", r"'checkpoint_every' must be >= 0"),
    Bad("meta-eval-every-negative", META + " --eval-every -5", r"'eval_every' must be >= 0"),
    Bad("eval-split-a-path", EVAL + " {data} --split ../x", r"split name '\.\./x' is a path"),
    Bad("controls-train-split-missing", "controls --data {data} --model {model} --runs-dir {runs} --train-split "
        "nosuch", r"nosuch.jsonl: no such file"),
    Bad("transfer-target-run-missing", "transfer --source {data} --target {data} --model {model} --runs-dir {runs} "
        "--target-run runs/none", r"runs/none: not a finished run \(no summary.json\)"),
    Bad("transfer-source-model-missing", "transfer --source {data} --target {data} --model {model} --runs-dir {runs} "
        "--source-model runs/none/model", r"model 'runs/none/model': no such directory"),
    Bad("meta-before-from-not-settings", META + " --before-from runs/done", r"before.json: not a summary of "
        "settings", setup=run_file("before.json", '{"nc": 1}')),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes, and every symbolic link with its target (empty
    directories are not content). Also covers the parent of `root`'s files written 'outside' (rows pass paths
    under the test directory, so an escape lands in the snapshot)."""
    return {str(p.relative_to(root)): (f"-> {os.readlink(p)}" if p.is_symlink()
                                       else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return character_dataset(tmp_path_factory, 12)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dataset, saved_gpt2_256) -> Path:
    base = tmp_path_factory.mktemp("finished")
    env = Env(base, dataset, saved_gpt2_256, "", base, None)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)  # the rows run in their own directory with the same relative --runs-dir
        assert main(shlex.split(env.fill(META + DONE_ARGS))) == 0
    return base / "runs" / "done"


def test_the_table_covers_every_command():
    from promptstep.cli import COMMANDS

    assert len(BAD) >= 25
    assert {row.argv.split()[0] for row in BAD} == set(COMMANDS)
    assert len({row.id for row in BAD}) == len(BAD)


@pytest.mark.parametrize("row", BAD, ids=[row.id for row in BAD])
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(row, tmp_path, monkeypatch, capsys, dataset, finished,
                                                            saved_gpt2_256, saved_gpt2):
    env = Env(tmp_path, dataset, saved_gpt2_256, saved_gpt2, finished, monkeypatch)
    monkeypatch.setattr(model_specs, "hub_reachable", lambda timeout=0: False)  # tests never use the network
    outside = [Path(p) for p in (dataset, saved_gpt2_256, saved_gpt2, finished)]  # the fixtures rows read
    for name, content in row.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    if row.setup:
        row.setup(env)
    monkeypatch.chdir(tmp_path)
    before = [_snapshot(root) for root in (tmp_path, *outside)]
    capsys.readouterr()
    try:
        code = main(shlex.split(env.fill(row.argv)))
    finally:
        while HELD_LOCKS:
            HELD_LOCKS.pop().close()
    err = capsys.readouterr().err
    command = row.argv.split()[0]
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"promptstep {command}: error: "), err
    assert re.search(row.message, lines[0]), lines[0]
    assert len(lines[0]) <= MAX_ERROR_CHARS + 40, f"{len(lines[0])} characters"
    assert [_snapshot(root) for root in (tmp_path, *outside)] == before
