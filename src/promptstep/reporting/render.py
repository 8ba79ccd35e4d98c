"""Tables (markdown) and bar charts (PNG) of evaluation summaries."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TABLE_METRICS = (("em", "EM %"), ("starts", "starts %"), ("tok_acc", "tok acc %"), ("nll", "NLL/tok"))
# Shown when some row has them: FT's agreement with Prompt, answering another fact's name, the irrelevant leak.
OPTIONAL_COLUMNS = (("agree_prompt", "agrees w/ Prompt %"), ("distractor", "distractor %"), ("leak_em", "leak EM %"))


def format_cell(entry: dict[str, float], metric: str) -> str:
    """'mean ± SE' of one metric of a summary entry, in % except for NLL."""
    scale = 1.0 if metric == "nll" else 100.0
    return f"{entry[metric] * scale:.1f} ± {entry[metric + '_se'] * scale:.1f}"


def markdown_table(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table: one row per (model/run label, setting), mean ± SE per metric ('–' where a row has none)."""
    entries = [entry for summary in summaries.values() for entry in summary.values()]
    columns = [*TABLE_METRICS, *((m, name) for m, name in OPTIONAL_COLUMNS if any(m in e for e in entries))]
    header = "| run | setting | n | " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "|" + "---|" * (3 + len(columns))]
    for label, summary in summaries.items():
        for setting, entry in summary.items():
            cells = " | ".join(format_cell(entry, metric) if metric in entry else "–" for metric, _ in columns)
            lines.append(f"| {label} | {setting} | {int(entry['n'])} | {cells} |")
    return "\n".join(lines)


def plot_settings(summaries: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """Grouped bars of exact match and token accuracy (± SE) per setting, one group per run label."""
    metrics = (("em", "exact match"), ("tok_acc", "token accuracy"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    labels = list(summaries)
    settings = list(dict.fromkeys(s for summary in summaries.values() for s in summary))
    width = 0.8 / max(len(labels), 1)
    for ax, (metric, name) in zip(axes[0], metrics):
        for i, label in enumerate(labels):
            summary = summaries[label]
            xs = [j + i * width for j, s in enumerate(settings) if s in summary]
            ys = [100 * summary[s][metric] for s in settings if s in summary]
            es = [100 * summary[s][metric + "_se"] for s in settings if s in summary]
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=label)
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(settings))], settings)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        if len(labels) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(log_path: Path, path: Path) -> None:
    """Outer loss and gradient norm against step, from a JSONL training log."""
    import json

    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not r.get("skipped")]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["loss"] for r in rows], label="outer loss")
    if "lm" in rows[0]:
        axes[0].plot(steps, [r["lm"] for r in rows], label="regulariser")
    axes[0].set_xlabel("outer step")
    axes[0].legend()
    axes[1].plot(steps, [r["grad_norm"] for r in rows])
    axes[1].set_yscale("log")
    axes[1].set_xlabel("outer step")
    axes[1].set_ylabel("gradient norm (before clipping)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
