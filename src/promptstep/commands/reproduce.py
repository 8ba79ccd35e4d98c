"""`promptstep reproduce --suite FILE`: the paper's experiments end to end, as described by a YAML suite.

A suite has blocks; a block is one model with its tasks, budgets and experiments:

    name: suite-cpu                   # everything goes to <runs_dir>/<name>/
    runs_dir: runs
    metric: tok_acc                   # the report's metric (tok_acc | em | starts)
    blocks:
      - name: tiny
        model: tiny
        tasks:                        # {generate: TASK, <`data` options>}, {distract: TASK, <`distract` options>}
          character: {generate: character, n_train: 600, n_test: 100}      # or {data: DIR}
          character-d2: {distract: character, distractors: 2}             # the fact + 2 other facts
        prepare: null                 # or `prepare` options (n_examples, steps, batch_size, lr, nc_weight)
        meta: {inner_lr: 0.1, ...}    # `meta-train` options shared by every meta-training run of the block
        experiments:                  # any of these; each may override `meta` with its own `meta:` mapping
          figure2:  {tasks: [character], objectives: [lc, lg]}
          lora:     {tasks: [character], modes: {outer: {}, inner: {inner_lr: 3.0}}, objective: lg}
          multi:    {tasks: [character], inner_ks: [1, 4, 16], meta: {batch_size: 16}, eval: {n_groups: 10}}
          controls: {tasks: [character], objective: lg, train_n: 50, base_model: true, limit: 100}
          transfer: {source: reversal, target: character, objective: lg}
          cross:    {pairs: [[character, character-d2], [mix, "mix:test_families"]], objectives: [lc, lg],
                     base_model: true, limit: 300}  # models trained on one task, tested on another task / split

`limit` (controls, cross) is the number of evaluation triplets (default: meta's eval_n).

Each step is an ordinary run directory (meta-train, multi-context, controls, transfer); a step whose run is
complete is reused with `--resume true` (an interrupted meta-train run resumes from its checkpoint), then
`report` writes the paper-style tables and Figure 2 of each block to <suite>/report/<block>/.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from promptstep.commands.controls import ControlsConfig, run_controls
from promptstep.commands.data import DataConfig, run_data
from promptstep.commands.distract import DistractConfig, run_distract
from promptstep.commands.eval import EvalConfig, run_eval
from promptstep.commands.meta_train import MetaTrainConfig, run_meta_train
from promptstep.commands.multi_context import MultiContextConfig, run_multi_context
from promptstep.commands.prepare import PrepareConfig, run_prepare
from promptstep.commands.report import ReportConfig, run_report
from promptstep.commands.transfer import TransferConfig, run_transfer
from promptstep.config import build_config, coerce, read_yaml, shown
from promptstep.errors import InputError
from promptstep.runs import (
    check_replaceable,
    in_progress_dir,
    is_promptstep_dir,
    json_line,
    name_from,
    run_lock,
    safe_name,
)

EXPERIMENT_KEYS = {
    "figure2": {"tasks", "objectives", "meta"},
    "lora": {"tasks", "modes", "objective", "meta"},
    "multi": {"tasks", "inner_ks", "objective", "meta", "eval"},
    "controls": {"tasks", "objective", "meta", "train_n", "breakdown_metric", "seed", "base_model", "limit"},
    "cross": {"pairs", "objective", "objectives", "meta", "base_model", "limit"},
    "transfer": {"source", "target", "objective", "meta", "modes", "joint_weight", "prep_examples", "prep_steps",
                 "prep_batch_size", "prep_lr", "prep_nc_weight"},
}
MULTI_KS = [1, 4, 16]
CONTROLS_KEYS = ("train_n", "breakdown_metric", "seed", "limit")
BLOCK_KEYS = {"name", "model", "tasks", "prepare", "meta", "experiments"}
SUITE_KEYS = {"name", "runs_dir", "metric", "blocks"}
TASK_SOURCES = ("generate", "data", "distract")


def _mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping, got {shown(value)}")
    unknown = set(value) - allowed if allowed is not None else set()
    if unknown:
        raise InputError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(allowed))})")
    return value


def _names(value: Any, where: str) -> list[str]:
    """A list of names (strings), each once."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where}: expected a list of names, got {shown(value)}")
    if len(set(value)) != len(value):
        raise InputError(f"{where}: lists '{next(v for v in value if value.count(v) > 1)}' twice")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a name, got {shown(value)}")
    return value


def _experiment(kind: str, spec: dict, where: str) -> dict:
    """An experiment's entry with the type of every structural value checked (names, lists, mappings) and its
    numbers and flags converted; option values inside `meta` and `eval` are checked when configs are built."""
    spec = dict(spec)
    for key in ("tasks", "objectives"):
        if key in spec:
            spec[key] = _names(spec[key], f"{where}.{key}")
    for key in ("objective", "source", "target"):
        if key in spec:
            spec[key] = _name(spec[key], f"{where}.{key}")
    for key in ("meta", "eval"):
        if key in spec:
            spec[key] = _mapping(spec[key], f"{where}.{key}")
    if "inner_ks" in spec:
        ks = coerce(spec["inner_ks"] if isinstance(spec["inner_ks"], list) else [spec["inner_ks"]], tuple[int, ...],
                     f"{where}.inner_ks")
        if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise InputError(f"{where}.inner_ks: expected distinct positive integers, got {shown(spec['inner_ks'])}")
        spec["inner_ks"] = list(ks)
    if "pairs" in spec:
        pairs = spec["pairs"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise InputError(f"{where}.pairs: expected a list of [train task, eval task] pairs, got {shown(pairs)}")
        # train and eval task may be the same (train on a task, evaluate on its own test split); a pair twice is refused
        spec["pairs"] = [[_name(task, f"{where}.pairs") for task in pair] for pair in pairs]
        repeated = next((p for i, p in enumerate(spec["pairs"]) if p in spec["pairs"][:i]), None)
        if repeated:
            raise InputError(f"{where}.pairs: lists {repeated} twice")
    if "modes" in spec and kind == "lora":
        modes = spec["modes"]
        if isinstance(modes, dict):
            spec["modes"] = {_name(m, f"{where}.modes"): _mapping(v, f"{where}.modes.{m}") for m, v in modes.items()}
        else:
            spec["modes"] = _names(modes, f"{where}.modes")
    if "base_model" in spec:
        spec["base_model"] = coerce(spec["base_model"], bool, f"{where}.base_model")
    return spec


@dataclass
class Block:
    """One model with its tasks, budgets and experiments (see the module docstring)."""

    name: str
    model: str
    tasks: dict[str, dict]
    prepare: dict | None
    meta: dict
    experiments: dict[str, dict] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    runs_dir: str
    metric: str
    blocks: list[Block]

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) / self.name


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file: structure, keys, task references (option values are checked per step)."""
    from promptstep.reporting.paper_tables import METRICS

    where = str(path)
    raw = _mapping(read_yaml(path, "suite", text=True), where, SUITE_KEYS)
    metric = raw.get("metric") or "tok_acc"
    if metric not in METRICS:
        raise InputError(f"{where}: unknown metric {shown(metric)} (choose from {', '.join(METRICS)})")
    if not isinstance(raw.get("blocks") or [], list):
        raise InputError(f"{where}: blocks: expected a list of blocks, got {shown(raw['blocks'])}")
    blocks = []
    for i, entry in enumerate(raw.get("blocks") or []):
        spot = f"{where}: blocks[{i}]"
        entry = _mapping(entry, spot, BLOCK_KEYS)
        for key in ("name", "model", "tasks"):
            if not entry.get(key):
                raise InputError(f"{spot}: missing '{key}'")
        safe_name(_name(entry["name"], f"{spot}: block name"), f"{spot}: block name")
        _name(entry["model"], f"{spot}: model")
        tasks = {safe_name(str(name), f"{spot}: task name"): _mapping(spec, f"{spot}.tasks.{name}")
                 for name, spec in _mapping(entry["tasks"], f"{spot}.tasks").items()}
        for name, spec in tasks.items():
            sources = [key for key in TASK_SOURCES if key in spec]
            if len(sources) != 1 or ("data" in spec and len(spec) > 1):
                raise InputError(f"{spot}.tasks.{name}: give one of 'generate' (with `data` command options), "
                                 "'distract' (another task, with `distract` options) or only 'data'")
            _name(spec[sources[0]], f"{spot}.tasks.{name}.{sources[0]}")
            if "distract" in spec and spec["distract"] not in entry["tasks"]:
                raise InputError(f"{spot}.tasks.{name}: distract names an unknown task '{spec['distract']}'")
        experiments = _mapping(entry.get("experiments"), f"{spot}.experiments", set(EXPERIMENT_KEYS))
        experiments = {k: _experiment(k, _mapping(v, f"{spot}.experiments.{k}", EXPERIMENT_KEYS[k]),
                                      f"{spot}.experiments.{k}") for k, v in experiments.items()}
        for kind, spec in experiments.items():
            named = list(spec.get("tasks", [])) + [spec[k] for k in ("source", "target") if k in spec]
            named += [task_and_split(task, f"{spot}.experiments.{kind}")[0]
                      for pair in spec.get("pairs", []) for task in pair]
            for task in named:
                if task not in tasks:
                    raise InputError(f"{spot}.experiments.{kind}: unknown task '{task}' (tasks: {', '.join(tasks)})")
        prepare = entry.get("prepare")
        blocks.append(Block(str(entry["name"]), str(entry["model"]), tasks,
                            None if prepare is None else _mapping(prepare, f"{spot}.prepare"),
                            _mapping(entry.get("meta"), f"{spot}.meta"), experiments))
    if not blocks:
        raise InputError(f"{where}: no blocks")
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: two blocks share the name '{next(n for n in names if names.count(n) > 1)}'")
    name = safe_name(_name(raw.get("name") or name_from(Path(path).stem), f"{where}: suite name"),
                     f"{where}: suite name")
    return Suite(name, _name(raw.get("runs_dir") or "runs", f"{where}: runs_dir"), metric, blocks)


def lora_modes(spec: dict) -> dict[str, dict]:
    """The lora experiment's modes with their own meta overrides: `modes: [outer, inner]` or a mapping
    `modes: {outer: {}, inner: {inner_lr: 3.0}}`."""
    modes = spec.get("modes", ["outer", "inner"])
    return {str(m): {} for m in modes} if isinstance(modes, list) else {str(m): dict(v or {}) for m, v in modes.items()}


def data_options(spec: dict) -> dict:
    """The `data` command options of a generated task: {generate: TASK, n_train: ...} -> {task: TASK, ...}."""
    return {"task": spec["generate"], **{k: v for k, v in spec.items() if k != "generate"}}


def distract_options(spec: dict) -> dict:
    """The `distract` command options of a multi-fact task: {distract: TASK, distractors: 2} -> {distractors: 2}."""
    return {k: v for k, v in spec.items() if k != "distract"}


def check_options(suite: Suite) -> None:
    """Build every step's config with placeholder paths, so a bad option fails before anything runs."""
    for block in suite.blocks:
        try:
            for spec in block.tasks.values():
                if "generate" in spec:
                    build_config(DataConfig, None, data_options(spec) | {"out": "-"})
                if "distract" in spec:
                    build_config(DistractConfig, None, distract_options(spec) | {"data": "-", "out": "-"})
            if block.prepare is not None:
                build_config(PrepareConfig, None, {**block.prepare, "data": "-"})
            for kind, spec in block.experiments.items():
                meta = {**block.meta, **(spec.get("meta") or {}), "data": "-"}
                build_config(MetaTrainConfig, None, meta)
                if kind == "lora":
                    for mode, mode_meta in lora_modes(spec).items():
                        build_config(MetaTrainConfig, None, {**meta, **mode_meta, "lora": mode})
                if kind == "multi":
                    for k in spec.get("inner_ks", MULTI_KS):
                        build_config(MetaTrainConfig, None, {**meta, "inner_k": k})
                    build_config(MultiContextConfig, None, {**(spec.get("eval") or {}), "data": "-"})
                if kind == "controls":
                    build_config(ControlsConfig, None, {k: v for k, v in spec.items() if k in CONTROLS_KEYS}
                                 | {"data": "-"})
                if kind == "transfer":
                    known = {f.name for f in fields(TransferConfig)}
                    build_config(TransferConfig, None, {k: v for k, v in {**meta, **spec}.items() if k in known}
                                 | {"source": "-", "target": "-"})
        except InputError as err:
            raise InputError(f"suite block '{block.name}': {err}") from None


def task_and_split(target: str, where: str) -> tuple[str, str]:
    """'TASK' -> (TASK, 'test'); 'TASK:SPLIT' -> (TASK, SPLIT), the split a safe file name."""
    task, _, split = str(target).partition(":")
    return task, safe_name(split, f"{where}: split name") if split else "test"


def _remove_stale_runs(block_dir: Path, kept: set[Path]) -> None:
    """Remove the promptstep run and dataset directories under `block_dir` that are not in `kept`."""
    keep = {p.resolve() for p in kept}
    for candidate in sorted(p for p in block_dir.rglob("*") if p.is_dir() and not p.is_symlink()):
        if candidate.exists() and candidate.resolve() not in keep and is_promptstep_dir(candidate) \
                and not any(k == candidate.resolve() or k in candidate.resolve().parents or
                            candidate.resolve() in k.parents for k in keep):
            shutil.rmtree(candidate)


def _done(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "meta.json").is_file()


class BlockRunner:
    """Runs a block's steps in dependency order, each once (reusing a finished run directory)."""

    def __init__(self, block: Block, root: Path, log: list[dict], fresh: bool = False) -> None:
        self.block, self.dir, self.log, self.fresh = block, root / block.name, log, fresh
        self.seen: set[Path] = set()  # runs of this invocation (finished or reused)

    def _step(self, path: Path, run) -> Path:
        """Run `run(rerun)` unless `path` holds a finished run (or, when `fresh`, one made by this invocation);
        rerun = 'resume' (an interrupted meta-train run) | 'overwrite' | None. A step's run directory is replaced
        only when the step succeeds (each command stages its output)."""
        if path in self.seen or (_done(path) and not self.fresh):
            if path not in self.seen:
                print(f"[reproduce] reusing {path}", flush=True)
                self.seen.add(path)
            return path
        rerun = None
        if (in_progress_dir(path) / "checkpoint").is_dir() and not self.fresh:
            rerun = "resume"
        elif path.exists() or in_progress_dir(path).exists():
            rerun = "overwrite"
        print(f"[reproduce] {path}" + (f" ({rerun})" if rerun else ""), flush=True)
        started = time.time()
        run(rerun)
        self.seen.add(path)
        self.log.append({"step": str(path), "wall_s": round(time.time() - started, 1)})
        return path

    def data(self, task: str) -> str:
        spec = self.block.tasks[task]
        if "data" in spec:
            return str(spec["data"])
        out = self.dir / "data" / task
        if "distract" in spec:
            values = distract_options(spec) | {"data": self.data(spec["distract"]), "out": str(out), "overwrite": True}
            config = build_config(DistractConfig, None, values)
            self._step(out, lambda _: run_distract(config))
            return str(out)
        config = build_config(DataConfig, None, data_options(spec) | {"out": str(out), "overwrite": True})
        self._step(out, lambda _: run_data(config))
        return str(out)

    def base(self, task: str) -> str:
        """The model every experiment on `task` starts from: the block's model, format-prepared if asked."""
        if self.block.prepare is None:
            return self.block.model
        name = f"prepare-{task}"
        values = {**self.block.prepare, "model": self.block.model, "data": self.data(task), "name": name,
                  "runs_dir": str(self.dir), "overwrite": True}
        config = build_config(PrepareConfig, None, values)
        self._step(self.dir / name, lambda _: run_prepare(config))
        return str(self.dir / name / "model")

    def meta(self, task: str, objective: str, lora: str = "none", inner_k: int = 1, overrides: dict | None = None,
             before_from: Path | None = None, name: str | None = None) -> Path:
        """A meta-train run (made if missing), by default meta-OBJECTIVE-TASK: the one figure2, controls and
        transfer share."""
        name = name or f"meta-{objective}-{task}"
        path = self.dir / name
        values = {"checkpoint_every": 0, **self.block.meta, **(overrides or {}), "model": self.base(task),
                  "data": self.data(task), "objective": objective, "lora": lora, "inner_k": inner_k, "name": name,
                  "runs_dir": str(self.dir)}
        if before_from is not None and _done(before_from):
            values["before_from"] = str(before_from)

        def run(rerun):
            config = build_config(MetaTrainConfig, None, {**values, "resume": rerun == "resume",
                                                          "overwrite": rerun == "overwrite"})
            run_meta_train(config)

        return self._step(path, run)

    def _meta_defaults(self, spec: dict) -> dict:
        """The FT step and evaluation settings of the models an experiment trains (block meta + its own meta),
        so its evaluations take the very step the models were meta-trained for."""
        meta = build_config(MetaTrainConfig, None, {**self.block.meta, **(spec.get("meta") or {}), "data": "-"})
        return {"lr": meta.inner_lr, "steps": meta.inner_steps, "param_filter": meta.inner_params,
                "rule": meta.inner_rule, "max_new_tokens": meta.max_new_tokens, "eval_n": meta.eval_n}

    def _eval_step(self, spec: dict) -> dict:
        """`eval` / `controls` options of that FT step (one learning rate)."""
        step = self._meta_defaults(spec)
        return {"lrs": [step["lr"]], "steps": step["steps"], "param_filter": step["param_filter"],
                "rule": step["rule"], "max_new_tokens": step["max_new_tokens"],
                "limit": spec.get("limit", step["eval_n"])}  # an experiment's own `limit`, else meta's eval_n

    def figure2(self, spec: dict) -> None:
        for task in spec.get("tasks", list(self.block.tasks)):
            first = None
            for objective in spec.get("objectives", ["lc", "lg"]):
                run = self.meta(task, objective, overrides=spec.get("meta"), before_from=first)
                first = first or run

    def lora(self, spec: dict) -> None:
        for task in spec.get("tasks", list(self.block.tasks)):
            for mode, mode_meta in lora_modes(spec).items():
                self.meta(task, spec.get("objective", "lg"), lora=mode, overrides={**spec.get("meta", {}), **mode_meta},
                          name=f"lora-{mode}-{task}")

    def multi(self, spec: dict) -> None:
        objective = spec.get("objective", "lg")
        step = self._meta_defaults(spec)
        for task in spec.get("tasks", list(self.block.tasks)):
            models = {"base": self.base(task)}
            for k in spec.get("inner_ks", MULTI_KS):
                run = self.meta(task, objective, inner_k=k, overrides=spec.get("meta"), name=f"multi-k{k}-{task}")
                models[f"k{k}"] = str(run / "model")
            for label, model in models.items():
                name = f"multi-eval-{label}-{task}"
                values = {k: step[k] for k in ("lr", "steps", "param_filter", "rule", "max_new_tokens")}
                values = {**values, **(spec.get("eval") or {}), "model": model, "data": self.data(task), "name": name,
                          "runs_dir": str(self.dir), "overwrite": True}
                config = build_config(MultiContextConfig, None, values)
                self._step(self.dir / name, lambda _, c=config: run_multi_context(c))

    def controls(self, spec: dict) -> None:
        step = self._eval_step(spec)
        extra = {k: v for k, v in spec.items() if k in CONTROLS_KEYS}
        for task in spec.get("tasks", list(self.block.tasks)):
            models = {"": str(self.meta(task, spec.get("objective", "lg"), overrides=spec.get("meta")) / "model")}
            if spec.get("base_model"):  # the same controls on the model meta-training starts from
                models["base-"] = self.base(task)
            for prefix, model in models.items():
                name = f"controls-{prefix}{task}"
                values = {**step, **extra, "model": model, "data": self.data(task),
                          "base": self.base(task), "name": name, "runs_dir": str(self.dir), "overwrite": True}
                config = build_config(ControlsConfig, None, values)
                self._step(self.dir / name, lambda _, c=config: run_controls(c))

    def cross(self, spec: dict) -> None:
        """NC / Prompt / FT of the models meta-trained on one task (each of `objectives`, and the base model with
        `base_model: true`), evaluated on another task's test set or on a split of it (`TASK:SPLIT`, e.g. the
        held-out families `mix:test_families`)."""
        step = self._eval_step(spec)
        objectives = spec.get("objectives", [spec.get("objective", "lg")])
        for train_task, target in spec.get("pairs", []):
            eval_task, split = task_and_split(target, "cross")
            models = {objective: str(self.meta(train_task, objective, overrides=spec.get("meta")) / "model")
                      for objective in objectives}
            if spec.get("base_model"):
                models = {"base": self.base(train_task), **models}
            for label, model in models.items():
                name = f"cross-{label}-{train_task}-on-{target.replace(':', '-')}"
                values = {**step, "model": model, "data": self.data(eval_task), "split": split, "name": name,
                          "runs_dir": str(self.dir), "overwrite": True}
                config = build_config(EvalConfig, None, values)
                self._step(self.dir / name, lambda _, c=config: run_eval(c))

    def transfer(self, spec: dict) -> None:
        source, target = spec["source"], spec["target"]
        objective = spec.get("objective", "lg")
        source_run = self.meta(source, objective, overrides=spec.get("meta"))
        target_run = self.meta(target, objective, overrides=spec.get("meta"))
        name = f"transfer-{source}-to-{target}"
        extra = {k: v for k, v in spec.items() if k not in ("source", "target", "meta")}
        values = {**self.block.meta, **(spec.get("meta") or {}), **extra, "objective": objective,
                  "model": self.base(source), "source": self.data(source), "target": self.data(target),
                  "source_model": str(source_run / "model"), "target_run": str(target_run), "name": name,
                  "runs_dir": str(self.dir), "overwrite": True}
        known = {f.name for f in fields(TransferConfig)}  # drop meta-train-only keys (checkpoint_every, ...)
        config = build_config(TransferConfig, None, {k: v for k, v in values.items() if k in known})
        self._step(self.dir / name, lambda _: run_transfer(config))

    def run(self) -> None:
        for kind in EXPERIMENT_KEYS:  # a fixed order: later experiments reuse earlier runs
            if kind in self.block.experiments:
                getattr(self, kind)(self.block.experiments[kind])


@dataclass
class ReproduceConfig:
    """`promptstep reproduce --suite FILE`: run a YAML-described suite end to end, then its report."""

    suite: str = ""
    """YAML suite file, e.g. configs/suite-cpu.yaml. Required."""
    only: tuple[str, ...] = ()
    """Run only these blocks of the suite (default: all)."""
    resume: bool = False
    """Continue the suite: finished steps are reused as they are, an interrupted meta-training resumes."""
    overwrite: bool = False
    """Replace the suite's existing directory."""

    def validate(self) -> None:
        if not self.suite:
            raise InputError("reproduce needs --suite FILE (e.g. configs/suite-cpu.yaml)")
        if self.resume and self.overwrite:
            raise InputError("choose one of --resume and --overwrite")


def run_reproduce(config: ReproduceConfig) -> Path:
    suite = load_suite(config.suite)
    check_options(suite)
    blocks = [b for b in suite.blocks if not config.only or b.name in config.only]
    unknown = set(config.only) - {b.name for b in suite.blocks}
    if unknown:
        raise InputError(f"--only: no block named '{sorted(unknown)[0]}' in {config.suite}")
    root = suite.root
    if root.exists() and not config.resume:
        if not config.overwrite:
            raise InputError(f"{root} already exists; pass --resume true to continue it or --overwrite true")
        check_replaceable(root)
    with run_lock(root):
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "suite.yaml").exists() or not (root / "suite.yaml").samefile(config.suite):
            shutil.copyfile(config.suite, root / "suite.yaml")
        log: list[dict] = []
        started = time.time()
        runners = [BlockRunner(block, root, log, fresh=config.overwrite) for block in blocks]
        for runner in runners:
            runner.run()
        if config.overwrite:  # every step succeeded: only now drop the old suite's runs that this one did not make
            for runner in runners:
                _remove_stale_runs(runner.dir, runner.seen)
        with (root / "timings.jsonl").open("a", encoding="utf-8") as handle:
            for row in log:
                handle.write(json_line(row))
        total = round(time.time() - started, 1)
        # One report per block: tables match runs by task and objective, so two models must not share one.
        for block in suite.blocks:
            if (root / block.name).is_dir():
                run_report(ReportConfig(runs=(str(root / block.name),), out=str(root / "report" / block.name),
                                        metric=suite.metric, overwrite=True))
    print(f"[reproduce] {len(log)} steps in {total / 60:.1f} min; reports in {root / 'report'}/<block>/")
    return root / "report"
