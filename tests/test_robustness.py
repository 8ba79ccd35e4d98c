"""Robustness beyond one-line refusals (those are rows of test_bad_inputs.py): non-finite outer steps are undone,
generation never runs past the model's window, every JSON written is strict JSON, resumed runs count all their
time, published outputs get ordinary permissions, YAML values mean what they say, report walks do not follow
links, and the CLI's last-resort handler keeps failures to one line."""

import json
import math
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import character_dataset, make_gpt2
from promptstep import cli
from promptstep.checkpoints import load_checkpoint
from promptstep.cli import main
from promptstep.data.triplets import Triplet, write_triplets
from promptstep.errors import InputError
from promptstep.formats import Format, encode_text, fit_lengths, needed_length
from promptstep.meta import MetaOptions, MetaTrainer, batches_for, loop, run_training
from test_meta import _examples

GOOD = Triplet("edge", "Evan Armstrong is the first person on Mars.", "The first person on Mars was", "Evan Armstrong")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return character_dataset(tmp_path_factory, 12)


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"{name} written to a JSON file")

    return json.loads(text, parse_constant=refuse)


def _parse_every_json(root: Path) -> int:
    """Parse every .json and every line of every .jsonl under `root` strictly; return how many files."""
    files = [p for p in root.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for line in (text.splitlines() if path.suffix == ".jsonl" else [text]):
            if line.strip():
                _strict(line)
    return len(files)


# ---------------------------------------------------------------- non-finite outer steps


def _trainer(tokenizer, **kw):
    options = MetaOptions(objective="lg", inner_lr=0.5, outer_lr=1e-2, clip=1.0, **kw)
    return MetaTrainer(make_gpt2(len(tokenizer), seed=3), tokenizer, options)


def _state(trainer):
    weights = {n: p.detach().clone() for n, p in trainer.params.items()}
    adam = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in trainer.optimizer.state.items()}
    return weights, adam


def _same_state(trainer, saved) -> bool:
    weights, adam = saved
    if any(not torch.equal(weights[n], p) for n, p in trainer.params.items()):
        return False
    now = {id(p): s for p, s in trainer.optimizer.state.items()}
    return now.keys() == adam.keys() and all(
        now[k].keys() == adam[k].keys() and all(torch.equal(now[k][name], value) if torch.is_tensor(value)
                                                else now[k][name] == value for name, value in adam[k].items())
        for k in adam)


def _corrupting(trainer, monkeypatch, corrupt) -> None:
    """Make the optimizer's step leave `corrupt(trainer)` behind after a real Adam step (as an overflow would)."""
    real = trainer.optimizer.step

    def step(*args, **kwargs):
        real(*args, **kwargs)
        with torch.no_grad():
            corrupt(trainer)

    monkeypatch.setattr(trainer.optimizer, "step", step)


def _inf_weight(trainer):
    next(iter(trainer.params.values())).view(-1)[0] = float("inf")


def _inf_second_moment(trainer):
    """Adam's g^2 average overflowing fp32 (its update is then 0, but every later one is poisoned)."""
    next(iter(trainer.optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = float("inf")


@pytest.mark.parametrize("corrupt", [_inf_weight, _inf_second_moment], ids=["weights", "adam-state"])
@pytest.mark.parametrize("first", [True, False], ids=["first-step", "after-a-good-step"])
def test_an_outer_step_that_overflows_is_undone_and_counted(tokenizer, monkeypatch, first, corrupt):
    """A step that leaves a weight or a number of Adam's state non-finite is skipped with the weights and Adam's
    state bit-identical to before it, and counts toward nan_patience; training then goes on."""
    trainer = _trainer(tokenizer, nan_patience=2)
    batch = _examples(tokenizer)[:2]
    if not first:
        assert not trainer.outer_step(batch).get("skipped")
    saved = _state(trainer)
    with monkeypatch.context() as patch:
        _corrupting(trainer, patch, corrupt)
        log = trainer.outer_step(batch)
    assert log["skipped"] and log["non_finite_weights"] and trainer.bad_steps == 1
    assert math.isfinite(log["grad_norm"]) and math.isfinite(log["loss"])
    assert _same_state(trainer, saved)
    assert trainer.state_finite()
    assert not trainer.outer_step(batch).get("skipped") and trainer.bad_steps == 0


def test_overflowing_steps_stop_the_run_with_a_finite_last_checkpoint(tokenizer, tmp_path, monkeypatch):
    trainer = _trainer(tokenizer, nan_patience=2)
    batches = batches_for(_examples(tokenizer), batch_size=2, epochs=4, seed=0)

    def from_step_3(trainer):
        if trainer.step_count >= 3:
            _inf_weight(trainer)

    _corrupting(trainer, monkeypatch, from_step_3)
    result = run_training(trainer, batches, out=tmp_path, eval_set=[], eval_every=0, checkpoint_every=1,
                          progress=False)
    assert result["stopped"] == "2 non-finite steps in a row at step 4"
    weights, progress = load_checkpoint(tmp_path / "checkpoint")
    assert progress["step"] == 2
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(torch.equal(weights[n], p) for n, p in trainer.params.items())
    assert _parse_every_json(tmp_path) >= 1


def test_gradients_too_large_for_adam_are_a_skipped_step(tokenizer):
    """Gradients whose squares overflow fp32 have a non-finite norm: the step is skipped before Adam sees them."""
    trainer = _trainer(tokenizer, nan_patience=2)
    trainer.options.clip = 1e38
    saved = _state(trainer)
    log = trainer.outer_step(_examples(tokenizer)[:2], lambda loss: loss * 1e25)
    assert log["skipped"] and not math.isfinite(log["grad_norm"]) and _same_state(trainer, saved)


def test_non_finite_weights_are_never_checkpointed(tokenizer, tmp_path):
    trainer = _trainer(tokenizer)
    with torch.no_grad():
        next(iter(trainer.params.values())).view(-1)[0] = float("inf")
    assert loop._save(trainer, tmp_path, 1.0) == "the weights after step 0 are not finite; they were not checkpointed"
    assert not (tmp_path / "checkpoint").exists()


def test_a_huge_outer_lr_ends_in_one_line_not_a_traceback(dataset, saved_gpt2_256, tmp_path, capsys):
    """--outer-lr 1e30 keeps the weights finite but useless: the next losses are NaN, the periodic evaluation's inner
    loss is NaN. The run stops with exit 1 and one line, and its logs hold no NaN."""
    capsys.readouterr()
    code = main(["meta-train", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path),
                 "--name", "huge", "--objective", "lg", "--outer-lr", "1e30", "--batch-size", "2", "--eval-n", "2",
                 "--max-new-tokens", "2", "--eval-every", "1", "--checkpoint-every", "1", "--epochs", "2",
                 "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("promptstep meta-train: stopped: ")
    assert _parse_every_json(tmp_path / ".huge.inprogress") >= 2


def test_an_ft_step_that_diverges_is_one_line_and_exit_1(dataset, saved_gpt2_256, tmp_path, capsys):
    capsys.readouterr()
    code = main(["eval", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path), "--name", "e",
                 "--settings", "ft", "--lrs", "1e30", "--steps", "2", "--max-new-tokens", "2", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("promptstep eval: error: non-finite numbers: inner loss is nan"), err[-1]
    assert not (tmp_path / "e").exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- generation at the window's edge


OTHERS = [Triplet(f"t{i}", "Mira Tolland is the inventor.", "The inventor is", "Mira Tolland") for i in range(3)]


def _edge(tokenizer, triplets, limit: int = 64) -> int:
    """The max_new_tokens that puts the longest prompt of `triplets` plus its generation exactly at `limit`."""
    return limit - max(len(encode_text(tokenizer, Format().prefix(t, "prompt"))) for t in triplets)


def test_needed_length_counts_generation_and_the_answer_suffix(tokenizer):
    fmt = Format()
    prompt = len(encode_text(tokenizer, fmt.prefix(GOOD, "prompt")))  # the answer and its newline follow
    assert needed_length(tokenizer, GOOD, fmt, 0) > prompt
    assert needed_length(tokenizer, GOOD, fmt, 40) == prompt + 40


def test_truncation_leaves_room_for_generation(tokenizer):
    """--truncate cuts the context until prompt + max_new_tokens fits, keeping the end of the context."""
    long = Triplet("long", "Mira Tolland played. " * 40 + GOOD.context, GOOD.query, GOOD.answer)
    (cut,) = fit_lengths([long], tokenizer, 64, Format(), True, "x", new_tokens=20)
    assert needed_length(tokenizer, cut, Format(), 20) <= 64 < needed_length(tokenizer, long, Format(), 20)
    assert cut.context.endswith(GOOD.context) and cut.answer == long.answer
    with pytest.raises(InputError, match="does not fit in 64 tokens"):
        fit_lengths([long], tokenizer, 64, Format(), True, "x", new_tokens=60)


def _edge_data(root: Path, tokenizer, long: bool = True) -> tuple[str, int]:
    """A dataset at the window's edge: one triplet whose prompt plus max_new_tokens is exactly the window, others
    shorter, and (if `long`) one whose context only --truncate can make fit."""
    triplets = [GOOD, *OTHERS]
    new = _edge(tokenizer, triplets)
    if long:
        triplets.append(Triplet("long", "Mira Tolland played the glass violin. " * 30 + GOOD.context, GOOD.query,
                                GOOD.answer))
    for split in ("train", "test"):
        write_triplets(root / f"{split}.jsonl", triplets)
    return str(root), new


@pytest.mark.parametrize("command", ["eval", "controls"])
def test_truncated_contexts_with_generation_at_the_window_edge_run(command, tokenizer, saved_gpt2, tmp_path, capsys):
    """Contexts cut so that prompt + max_new_tokens fits, and a triplet exactly at the edge: no IndexError (before,
    --truncate left no room for the generated tokens)."""
    data, new = _edge_data(tmp_path / "d", tokenizer)
    args = [command, "--data", data, "--model", saved_gpt2, "--runs-dir", str(tmp_path / "runs"), "--name", "r",
            "--truncate", "true", "--max-new-tokens", str(new), "--threads", "1"]
    if command == "controls":
        args += ["--train-n", "2"]
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "runs" / "r" / "records.jsonl").read_text().splitlines()]
    assert {"edge", "long"} <= {r["id"] for r in records}


def test_multi_context_at_the_window_edge_runs(tokenizer, saved_gpt2, tmp_path, capsys):
    data, new = _edge_data(tmp_path / "d", tokenizer, long=False)
    args = ["multi-context", "--data", data, "--model", saved_gpt2, "--runs-dir", str(tmp_path / "runs"), "--name",
            "m", "--sizes", "1,2", "--n-groups", "2", "--max-new-tokens", str(new), "--threads", "1"]
    assert main(args) == 0, capsys.readouterr().err
    assert main([*args[:-4], "--max-new-tokens", str(new + 1), "--overwrite", "true", "--threads", "1"]) == 2


def test_the_lc_teacher_generates_up_to_the_window_edge(tokenizer, saved_gpt2, tmp_path, capsys):
    """LC meta-training generates the teacher's answers after context + query: a dataset fitted with max_new_tokens
    trains (the teacher generates exactly up to the window), one token more is refused before any work."""
    data, new = _edge_data(tmp_path / "d", tokenizer, long=False)  # meta-train does not truncate
    args = ["meta-train", "--data", data, "--model", saved_gpt2, "--runs-dir", str(tmp_path / "runs"), "--name",
            "lc", "--objective", "lc", "--batch-size", "2", "--eval-n", "2", "--checkpoint-every", "0",
            "--max-new-tokens", str(new), "--threads", "1"]
    assert main(args) == 0, capsys.readouterr().err
    assert main([*args[:-4], "--max-new-tokens", str(new + 1), "--overwrite", "true", "--threads", "1"]) == 2


def test_generating_past_the_window_is_refused_not_an_index_error(tokenizer):
    from promptstep.evaluate import greedy_continuations

    model = make_gpt2(len(tokenizer), n_positions=32)
    ids = encode_text(tokenizer, GOOD.context)
    with pytest.raises(InputError, match=r"would pass the model's 32-token window"):
        greedy_continuations(model, tokenizer, [ids], 33 - len(ids))
    assert len(greedy_continuations(model, tokenizer, [ids], 32 - len(ids))[0]) <= 32 - len(ids)


# ---------------------------------------------------------------- what is written


def test_every_json_file_written_by_the_commands_is_strict_json(dataset, saved_gpt2_256, tmp_path):
    runs = tmp_path / "runs"
    common = ["--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(runs), "--max-new-tokens", "2",
              "--threads", "1"]
    assert main(["eval", *common, "--name", "e", "--limit", "2"]) == 0
    assert main(["controls", *common, "--name", "c", "--train-n", "2"]) == 0
    assert main(["multi-context", *common, "--name", "m", "--sizes", "1,2", "--n-groups", "2"]) == 0
    assert main(["meta-train", *common, "--name", "mt", "--batch-size", "2", "--eval-n", "2", "--epochs", "1",
                 "--checkpoint-every", "2", "--eval-every", "2", "--objective", "lg"]) == 0
    assert main(["meta-train", *common, "--name", "nan", "--batch-size", "2", "--eval-n", "2", "--inner-lr", "1e30",
                 "--nan-patience", "2"]) == 1  # NaN losses in its log
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert _parse_every_json(tmp_path) >= 12


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_published_outputs_get_the_users_umask_permissions(mask, dataset, saved_gpt2_256, tmp_path):
    """tempfile makes staging directories 0700 and files 0600; what is published follows the umask instead."""
    old = os.umask(mask)
    try:
        assert main(["data", "character", "--out", str(tmp_path / "data"), "--n-train", "8", "--n-test", "2"]) == 0
        assert main(["meta-train", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(tmp_path / "runs"),
                     "--name", "m", "--batch-size", "2", "--eval-n", "2", "--max-new-tokens", "2", "--epochs", "1",
                     "--train-limit", "4", "--checkpoint-every", "1", "--objective", "lg", "--threads", "1"]) == 0
    finally:
        os.umask(old)
    expected = {("d", 0o777 & ~mask), ("f", 0o666 & ~mask)}
    assert _modes(tmp_path / "data") == expected
    assert _modes(tmp_path / "runs" / "m") == expected  # checkpoint/ included


def test_a_resumed_run_counts_the_time_of_every_segment(tokenizer, tmp_path, monkeypatch):
    """With a clock that advances one second per reading, a run interrupted after step 2 and resumed from its
    checkpoint reports the same wall_s (and per-step elapsed_s) as the same run uninterrupted."""
    clock = iter(range(10**6))
    monkeypatch.setattr(loop, "time", SimpleNamespace(time=lambda: float(next(clock))))
    batches = batches_for(_examples(tokenizer), batch_size=2, epochs=2, seed=0)

    def run(trainer, todo, out):
        return run_training(trainer, todo, out=out, eval_set=[], eval_every=0, checkpoint_every=1, progress=False)

    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = run(_trainer(tokenizer), batches, tmp_path / "straight")
    first = run(_trainer(tokenizer), batches[:2], tmp_path / "resumed")
    resumed_trainer = _trainer(tokenizer)
    resumed_trainer.restore(tmp_path / "resumed" / "checkpoint")
    resumed = run(resumed_trainer, batches, tmp_path / "resumed")
    assert first["steps"] == 2 and resumed["steps"] == straight["steps"] == len(batches)
    assert resumed["wall_s"] == straight["wall_s"] > first["wall_s"]

    def elapsed(name):
        rows = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        return [json.loads(row)["elapsed_s"] for row in rows]

    assert elapsed("resumed") == elapsed("straight")


# ---------------------------------------------------------------- YAML values mean what they say


def test_yaml_values_are_read_as_on_the_command_line(dataset, saved_gpt2_256, tmp_path):
    """`name: off` is the run 'off' (not runs/False), `name: 007` is '007', `truncate: on` is true, `lrs: 1e-3`
    is a number: a YAML option file reads values exactly as the command line does."""
    from promptstep.commands.eval import EvalConfig
    from promptstep.config import build_config

    (tmp_path / "c.yaml").write_text("name: off\ntruncate: on\nlrs: [1e-3, 2e-3]\nlimit: 0x10\n")
    with pytest.raises(InputError, match="'limit': expected an integer, got '0x10'"):
        build_config(EvalConfig, tmp_path / "c.yaml", {"data": "d"})
    (tmp_path / "c.yaml").write_text("name: off\ntruncate: on\nlrs: [1e-3, 2e-3]\nseparator: ' | '\n")
    config = build_config(EvalConfig, tmp_path / "c.yaml", {"data": "d"})
    assert (config.name, config.truncate, config.lrs, config.separator) == ("off", True, (1e-3, 2e-3), " | ")
    (tmp_path / "c.yaml").write_text("name: 007\n")
    assert build_config(EvalConfig, tmp_path / "c.yaml", {"data": "d"}).name == "007"
    (tmp_path / "c.yaml").write_text("name: off\nlimit: 1\nmax_new_tokens: 2\nsettings: nc\n")
    args = ["eval", "--config", str(tmp_path / "c.yaml"), "--data", dataset, "--model", saved_gpt2_256,
            "--runs-dir", str(tmp_path / "runs"), "--threads", "1"]
    assert main(args) == 0
    assert (tmp_path / "runs" / "off" / "summary.json").is_file() and not (tmp_path / "runs" / "False").exists()


def test_list_options_that_weight_by_repetition_keep_their_repeats(tmp_path):
    assert main(["data", "character", "--out", str(tmp_path / "d"), "--n-train", "6", "--n-test", "2", "--facts",
                 "1,2,2"]) == 0


# ---------------------------------------------------------------- report walks


def test_report_does_not_follow_directory_links_and_reads_each_run_once(dataset, saved_gpt2_256, tmp_path):
    runs = tmp_path / "runs"
    assert main(["meta-train", "--data", dataset, "--model", saved_gpt2_256, "--runs-dir", str(runs), "--name", "m",
                 "--batch-size", "2", "--eval-n", "2", "--max-new-tokens", "2", "--train-limit", "4",
                 "--checkpoint-every", "0", "--objective", "lg", "--threads", "1"]) == 0
    (runs / "loop").symlink_to(".")
    (runs / "m" / "up").symlink_to("..")
    assert main(["report", str(runs), str(runs / "m"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Runs: 1 (meta-train)" in text


# ---------------------------------------------------------------- the CLI's last resort


def test_an_unexpected_error_is_one_line_exit_1_with_the_traceback_only_on_request(monkeypatch, capsys):
    from promptstep.commands import data

    def broken(config):
        raise ValueError("something\nunforeseen")

    monkeypatch.setattr(data, "run_data", broken)
    capsys.readouterr()
    assert main(["data", "character", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert err == ("promptstep data: error: internal error: ValueError: something unforeseen (set PROMPTSTEP_DEBUG=1 "
                   "for the traceback)\n")
    monkeypatch.setenv("PROMPTSTEP_DEBUG", "1")
    assert main(["data", "character", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("promptstep data: error: internal error")


@pytest.mark.parametrize(("error", "line"), [
    (FloatingPointError("inner loss is nan"), "non-finite numbers: inner loss is nan"),
    (MemoryError(), "out of memory (MemoryError: (no message))"),
    (OSError(28, "No space left on device", "runs/x/model.safetensors"),
     "no space left on the disk writing runs/x/model.safetensors"),
    (PermissionError(13, "Permission denied", "runs/x"), "Permission denied: runs/x"),
])
def test_what_ran_out_is_said_in_words(error, line):
    assert cli.describe_failure(error).startswith(line)


def test_error_lines_are_capped(capsys):
    assert main(["eval", "--data", "d/" * 1500, "--model", "tiny"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert len(line) < cli.MAX_ERROR_CHARS + 40 and line.endswith("more characters)")


def test_library_warnings_do_not_reach_stderr(monkeypatch, capsys):
    import logging
    import warnings

    from promptstep.commands import data

    def noisy(config):
        logging.getLogger("transformers.modeling_utils").warning("`loss_type=None` was set in the config")
        warnings.warn("a library notice", UserWarning, stacklevel=1)
        raise InputError("the one line")

    monkeypatch.setattr(data, "run_data", noisy)
    capsys.readouterr()
    assert main(["data", "character", "--out", "x"]) == 2
    assert capsys.readouterr().err == "promptstep data: error: the one line\n"
    assert logging.root.manager.disable == logging.NOTSET  # restored for in-process callers


def test_no_command_prints_the_command_list(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
