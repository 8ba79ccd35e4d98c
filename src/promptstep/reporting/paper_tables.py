"""The paper's Tables 1–5 and a Figure-2-style chart from run directories, each table
beside the paper's own numbers (paper.py).

Runs are found by walking the given directories: meta-train runs (config with an `objective`), and the
`kind`-tagged summaries of multi-context, controls and transfer runs. A task is named by its dataset
directory (`data/character` -> `character`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from promptstep.config import read_yaml  # noqa: E402
from promptstep.errors import InputError  # noqa: E402
from promptstep.reporting import paper  # noqa: E402
from promptstep.reporting.render import format_cell  # noqa: E402

METRICS = ("tok_acc", "em", "starts")
LEAK = {"tok_acc": "leak_tok_acc", "em": "leak_em", "starts": "leak_starts"}
SKIP_DIRS = {"model", "checkpoint", "outer_adapter", "data", "report"}
MISSING = "—"
SETTINGS = ("nc", "prompt", "ft")
SETTING_NAMES = {"nc": "NC", "prompt": "Prompt", "ft": "FT"}


@dataclass(frozen=True)
class Run:
    """One run directory: what kind of run it is, its resolved config and its summary."""

    path: Path
    kind: str
    config: dict
    summary: dict

    @property
    def task(self) -> str:
        return Path(str(self.config.get("data", ""))).name

    @property
    def plain(self) -> bool:
        """A full-parameter, one-context-per-step meta-train run."""
        return self.config.get("lora", "none") == "none" and self.config.get("inner_k", 1) == 1


def read_summary(path: Path) -> dict:
    """The summary.json of a run directory."""
    file = path / "summary.json"
    if not file.is_file():
        raise InputError(f"{path}: not a finished run (no summary.json)")
    return json.loads(file.read_text(encoding="utf-8"))


def _kind(config: dict, summary: dict) -> str | None:
    if summary.get("kind") in ("multi-context", "controls", "transfer"):
        return summary["kind"]
    if "objective" in config and "before" in summary and "after" in summary and "data" in config:
        return "meta-train"
    if "settings" in config and "settings" in summary and "lrs" in config:
        return "cross"  # an `eval` run (of a meta-trained or a base model), e.g. on another task's test set
    return None


def _trained_config(spec: str) -> dict | None:
    """The meta-train config of the run that produced model directory `spec`, if it is one."""
    config_file = Path(spec).parent / "config.yaml"
    if Path(spec).name == "model" and config_file.is_file():
        config = read_yaml(config_file)
        if "objective" in config:
            return config
    return None


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every recognised run at or below `paths`, in a stable order."""
    runs: list[Run] = []

    def visit(directory: Path) -> None:
        if (directory / "summary.json").is_file() and (directory / "config.yaml").is_file():
            config, summary = read_yaml(directory / "config.yaml"), read_summary(directory)
            kind = _kind(config, summary)
            if kind:
                runs.append(Run(directory, kind, config, summary))
        for child in sorted(p for p in directory.iterdir() if p.is_dir()):
            if child.name not in SKIP_DIRS and not child.name.startswith("."):
                visit(child)

    for path in map(Path, paths):
        if not path.is_dir():
            raise InputError(f"{path}: no such run directory")
        visit(path)
    if not runs:
        raise InputError(f"no meta-train, multi-context, controls, transfer or cross-evaluation runs under "
                         f"{', '.join(map(str, paths))}")
    return runs


def model_label(spec: str) -> str:
    """How a model spec reads in a table: 'Meta-Learn (k ctx trained, LG, on TASK)' for a meta-train run's
    model, 'Base (spec)' otherwise."""
    config = _trained_config(spec)
    if config is None:
        return f"Base ({spec})"
    lora = config.get("lora", "none")
    extra = f", LoRA {lora}" if lora != "none" else ""
    return (f"Meta-Learn ({config.get('inner_k', 1)} ctx trained, {config['objective'].upper()}{extra}, "
            f"on {Path(str(config['data'])).name})")


def _model_order(spec: str) -> tuple[int, int]:
    """Base models first, then meta-trained ones by contexts per inner step."""
    config = _trained_config(spec)
    return (0, 0) if config is None else (1, int(config.get("inner_k", 1)))


@dataclass
class Table:
    """A titled table of strings, with the paper's version (if any) and notes."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    paper: Table | None = None
    note: str = ""

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.header)} |", "|" + "---|" * len(self.header)]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def _cell(entry: dict | None, metric: str) -> str:
    return format_cell(entry, metric) if entry and metric in entry else MISSING


def _paper_table(name: str, first: str, rows: dict, columns: Sequence[str], number: int) -> Table:
    labels = [" / ".join(key) if isinstance(key, tuple) else key for key in rows]
    return Table(name, f"Paper, Table {number} ({paper.CITATION}; Llama 3.2 1B)", [first, *columns],
                 [[label, *(str(v) for v in values)] for label, values in zip(labels, rows.values())])


def _meta_by_task(runs: Sequence[Run]) -> dict[str, list[Run]]:
    tasks: dict[str, list[Run]] = {}
    for run in runs:
        if run.kind == "meta-train":
            tasks.setdefault(run.task, []).append(run)
    return tasks


def _candidates(runs: Sequence[Run], objective: str, lora: str = "none") -> list[Run]:
    """The meta-train runs with this objective and LoRA mode, trained on one context per step, in path order."""
    return [r for r in runs if r.config["objective"] == objective and r.config.get("lora", "none") == lora
            and r.config.get("inner_k", 1) == 1]


def _pick(runs: Sequence[Run], objective: str, lora: str = "none") -> Run | None:
    """The first of the candidate runs (a suite's meta-OBJ-TASK sorts before its multi-k1-TASK)."""
    chosen = _candidates(runs, objective, lora)
    return chosen[0] if chosen else None


def choice_notes(runs: Sequence[Run]) -> list[str]:
    """One line for every table slot that several runs could fill: which one the tables use."""
    notes = []
    for task, task_runs in _meta_by_task(runs).items():
        for objective in ("lc", "lg"):
            for lora in ("none", "outer", "inner"):
                chosen = _candidates(task_runs, objective, lora)
                if len(chosen) > 1:
                    notes.append(f"{task}, {objective.upper()}, lora {lora}: used `{chosen[0].path}` "
                                 f"(also found: {', '.join(f'`{r.path.name}`' for r in chosen[1:])})")
    return notes


def figure2_groups(runs: Sequence[Run]) -> dict[str, dict[str, dict]]:
    """Per task: the BM (before meta-training), LC and LG summaries of the plain meta-train runs."""
    groups: dict[str, dict[str, dict]] = {}
    for task, task_runs in _meta_by_task(runs).items():
        for objective in ("lc", "lg"):
            run = _pick(task_runs, objective)
            if run:
                models = groups.setdefault(task, {})
                models.setdefault("BM", run.summary["before"])
                models[objective.upper()] = run.summary["after"]
    return {task: {k: models[k] for k in ("BM", "LC", "LG") if k in models} for task, models in groups.items()}


def figure2_table(runs: Sequence[Run], metric: str) -> Table:
    table = Table("figure2", f"Figure 2: NC / Prompt / FT of the base model (BM) and after meta-training from "
                  f"conditioning (LC) and gold labels (LG) — {metric} %", ["task", "model", "NC", "Prompt", "FT"],
                  note="The paper gives Figure 2 only as an image (no numbers in its text): compare shapes, not "
                       "values. BM = the `before` evaluation of the meta-train runs (the model meta-training starts "
                       "from).")
    for task, models in figure2_groups(runs).items():
        for label, summary in models.items():
            table.rows.append([task, label, *(_cell(summary.get(s), metric) for s in SETTINGS)])
    return table


def plot_figure2(runs: Sequence[Run], metric: str, path: Path) -> bool:
    """Grouped bars (BM / LC / LG x NC / Prompt / FT) per task, ± SE; False if there is nothing to plot."""
    groups = figure2_groups(runs)
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    width = 0.26
    for ax, (task, models) in zip(axes[0], groups.items()):
        for i, setting in enumerate(SETTINGS):
            xs = [j + (i - 1) * width for j in range(len(models))]
            ys = [100 * m.get(setting, {}).get(metric, 0) for m in models.values()]
            es = [100 * m.get(setting, {}).get(f"{metric}_se", 0) for m in models.values()]
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=SETTING_NAMES[setting])
        ax.set_xticks(range(len(models)), list(models))
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.set_ylabel(f"{metric} (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("NC / Prompt / FT before (BM) and after meta-training (LC, LG)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def table1(runs: Sequence[Run], metric: str) -> Table:
    table = Table("table1", f"Table 1: LoRA variants, gold-label (LG) meta-training — {metric} %",
                  ["task", *paper.TABLE1_COLUMNS],
                  paper=_paper_table("table1", "dataset", paper.TABLE1, paper.TABLE1_COLUMNS, 1),
                  note="Base = the model meta-training starts from; LoRA Inner Step: Untrained FT = one inner step "
                       "on PEFT's freshly initialised adapter (B = 0, so the step moves only B).")
    for task, task_runs in _meta_by_task(runs).items():
        full, outer, inner = _pick(task_runs, "lg"), _pick(task_runs, "lg", "outer"), _pick(task_runs, "lg", "inner")
        if not (full or outer or inner):
            continue
        base = next(r.summary["before"] for r in (full, outer) if r) if (full or outer) else {}
        table.rows.append([task, _cell(base.get("prompt"), metric), _cell(base.get("ft"), metric),
                           _cell(full and full.summary["after"]["ft"], metric),
                           _cell(outer and outer.summary["after"]["ft"], metric),
                           _cell(inner and inner.summary["before"]["ft"], metric),
                           _cell(inner and inner.summary["after"]["ft"], metric)])
    return table


def _multi_columns(settings: Sequence[str]) -> list[str]:
    order = {"1": (1, 0)} | {s: (int(s.split("@")[1]), 0 if s.startswith("seq") else 1) for s in settings if "@" in s}
    return sorted(set(settings), key=lambda s: order[s])


def table2(runs: Sequence[Run], metric: str) -> Table:
    multi = [r for r in runs if r.kind == "multi-context"]
    columns = _multi_columns([s for r in multi for s in r.summary["settings"]])
    table = Table("table2", f"Table 2: several contexts per update — {metric} % after N updates, answering the "
                  "queries of all N contexts (± SE over random groups)", ["task", "model", *columns],
                  paper=_paper_table("table2", "model", paper.TABLE2, paper.TABLE2_COLUMNS, 2),
                  note="sequential@N = N separate steps, one per context; batched@N = one step on the mean loss of "
                       "the N contexts. The paper's columns are sequential (Zhang, Choshen & Andreas 2025, "
                       "arXiv 2506.20989, Table 2: N updates in sequence).")
    for run in sorted(multi, key=lambda r: (r.task, _model_order(str(r.config["model"])))):
        settings = run.summary["settings"]
        table.rows.append([run.task, model_label(str(run.config["model"])),
                           *(_cell(settings.get(c), metric) for c in columns)])
    return table


def table3(runs: Sequence[Run], metric: str) -> Table:
    table = Table("table3", f"Table 3: cross-dataset transfer — FT {metric} %",
                  ["method", "evaluation", "No Meta-Learning", "In-Domain", "Transfer"],
                  paper=_paper_table("table3", "method / evaluation", paper.TABLE3, paper.TABLE3_COLUMNS, 3),
                  note="Meta-trained on the source task; 'meta only' = that model on the target without the target's "
                       "format fine-tuning. In-Domain on the target = a model meta-trained on the target itself.")
    for run in (r for r in runs if r.kind == "transfer"):
        results = run.summary["results"]
        source, target = Path(run.summary["source"]).name, Path(run.summary["target"]).name
        in_domain = run.summary.get("in_domain_target", {}).get("ft")
        ft = {(label, role): _cell(block.get("ft"), metric) for label, by_role in results.items()
              for role, block in by_role.items()}
        for mode in ("meta", "sequential", "joint"):
            if mode in results:
                name = "meta only" if mode == "meta" else mode.capitalize()
                table.rows.append([name, f"{target} FT", ft["base", "target"], _cell(in_domain, metric),
                                   ft[mode, "target"]])
        for mode in ("sequential", "joint"):
            if mode in results:
                table.rows.append([mode.capitalize(), f"{source} Retain", ft["base", "source"], ft["meta", "source"],
                                   ft[mode, "source"]])
    return table


def table4(runs: Sequence[Run]) -> Table:
    table = Table("table4", "Table 4: correctness of each example without / with the inner step (meta-trained "
                  "model), % of examples", ["task", "model", "split", "n", *paper.TABLE4_COLUMNS],
                  paper=_paper_table("table4", "split", paper.TABLE4, paper.TABLE4_COLUMNS, 4),
                  note="Correct = the run's breakdown_metric (default exact match) is 1. 'Correct w/o Context' = right "
                       "without the step, wrong after it.")
    for run in (r for r in runs if r.kind == "controls"):
        for split, cells in run.summary["breakdown"].items():
            table.rows.append([run.task, model_label(str(run.config["model"])), split, str(cells["n"]),
                               *(f"{100 * cells[k]:.1f}" for k in ("always_incorrect", "always_correct",
                                                                     "correct_without_only", "only_correct_with"))])
    return table


def table5(runs: Sequence[Run], metric: str) -> Table:
    table = Table("table5", f"Table 5: one step on an irrelevant context — {metric} %",
                  ["task", "model", "No Context (base model)", "No Context (this model)", "Irrelevant Context",
                   "leak: answers with the irrelevant context's answer", "leak with that context in the prompt",
                   "FT agrees with Prompt", "Normal Context"],
                  paper=_paper_table("table5", "dataset", paper.TABLE5, paper.TABLE5_COLUMNS, 5),
                  note=f"Leak = {LEAK[metric]}: the same metric scored against the irrelevant context's answer; "
                       "beside it the same leak when the irrelevant context is put in the prompt instead (what a step "
                       "that simulates prompting should match), and the share of items where the step's answer "
                       "equals the prompted one. The paper reports no leak rate.")
    controls = [r for r in runs if r.kind == "controls"]
    for run in sorted(controls, key=lambda r: (r.task, _model_order(str(r.config["model"])))):
        scores = run.summary["eval"]
        irrelevant = scores["irrelevant"]
        prompted = scores.get("irrelevant_prompt")
        table.rows.append([run.task, model_label(str(run.config["model"])), _cell(run.summary.get("base_nc"), metric),
                           _cell(scores.get("nc"), metric), _cell(irrelevant, metric),
                           _cell(irrelevant, LEAK[metric]), _cell(prompted, LEAK[metric]),
                           _cell(irrelevant, "agree_prompt"), _cell(scores.get("ft"), metric)])
    return table


def _evaluated_on(run: Run) -> str:
    split = str(run.config.get("split", "test"))
    return run.task if split == "test" else f"{run.task}:{split}"


def cross_table(runs: Sequence[Run], metric: str) -> Table:
    table = Table("cross", f"Meta-trained models on other test sets (another task, multi-fact contexts, held-out "
                  f"families), beside the base model where it was evaluated — {metric} %",
                  ["evaluated on", "model", "NC", "Prompt", "FT", "FT agrees with Prompt", "distractor: Prompt",
                   "distractor: FT"],
                  note="Compare with the Figure 2 rows of the evaluation task: a step that stores the queried fact "
                       "keeps its FT accuracy when the context holds other facts too. 'Agrees' = FT's answer equals "
                       "Prompt's on the same item; 'distractor' = the answer is another fact's name (multi-fact "
                       "items only).")
    for run in sorted((r for r in runs if r.kind == "cross"),
                      key=lambda r: (_evaluated_on(r), _model_order(str(r.config["model"])))):
        settings = run.summary["settings"]
        table.rows.append([_evaluated_on(run), model_label(str(run.config["model"])),
                           *(_cell(settings.get(s), metric) for s in SETTINGS),
                           _cell(settings.get("ft"), "agree_prompt"), _cell(settings.get("prompt"), "distractor"),
                           _cell(settings.get("ft"), "distractor")])
    return table


def by_tag_table(runs: Sequence[Run], metric: str) -> Table:
    table = Table("by_tag", f"The evaluations above by number of facts in the context, family (seen / held out) and "
                  f"name style — {metric} %", ["evaluated on", "model", "group", "n", "NC", "Prompt", "FT",
                                               "FT agrees with Prompt", "distractor: Prompt", "distractor: FT"],
                  note="Groups come from the `tags` of the evaluation items (multi-fact data from `promptstep data "
                       "character --facts ...`).")
    for run in sorted((r for r in runs if r.kind == "cross" and r.summary.get("by_tag")),
                      key=lambda r: (_evaluated_on(r), _model_order(str(r.config["model"])))):
        for tag, by_value in run.summary["by_tag"].items():
            for value, settings in by_value.items():
                ft = settings.get("ft", {})
                table.rows.append([_evaluated_on(run), model_label(str(run.config["model"])), f"{tag}={value}",
                                   str(int(ft.get("n", next(iter(settings.values()))["n"]))),
                                   *(_cell(settings.get(s), metric) for s in SETTINGS), _cell(ft, "agree_prompt"),
                                   _cell(settings.get("prompt"), "distractor"), _cell(ft, "distractor")])
    return table


def build_report(runs: Sequence[Run], metric: str) -> list[Table]:
    return [figure2_table(runs, metric), table1(runs, metric), table2(runs, metric), table3(runs, metric),
            table4(runs), table5(runs, metric), cross_table(runs, metric), by_tag_table(runs, metric)]


def report_markdown(tables: Sequence[Table], runs: Sequence[Run], figure: bool) -> str:
    parts = ["# promptstep report", "", f"Runs: {len(runs)} ({', '.join(sorted({r.kind for r in runs}))}). "
             "Our numbers: mean ± standard error. The paper (Zhang, Choshen & Andreas 2025, arXiv 2506.20989) "
             "does not define its accuracy.", ""]
    notes = choice_notes(runs)
    if notes:
        parts += ["Several runs fit one slot of Figure 2 / Table 1; the tables use the first in path order:", ""]
        parts += [f"* {note}" for note in notes] + [""]
    if figure:
        parts += ["![Figure 2](figure2.png)", ""]
    for table in tables:
        if not table.rows:
            continue
        parts += [f"## {table.title}", "", table.markdown(), ""]
        if table.note:
            parts += [table.note, ""]
        if table.paper:
            parts += [f"*{table.paper.title}:*", "", table.paper.markdown(), ""]
    return "\n".join(parts)
