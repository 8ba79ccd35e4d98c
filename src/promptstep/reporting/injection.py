"""Tables (markdown) and the accuracy-vs-N plot (PNG) of a knowledge-injection benchmark summary
(`experiments.injection.summarize_benchmark`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MB = 2**20


def _cell(cell: dict, metric: str) -> str:
    if metric not in cell:
        return "does not fit" if cell.get("fits", 1.0) == 0 else "–"
    scale = 1.0 if metric == "nll" else 100.0
    text = f"{cell[metric] * scale:.1f} ± {cell[metric + '_se'] * scale:.1f}"
    if cell.get("fits", 1.0) < 1.0:
        text += f" ({100 * cell['fits']:.0f}% fit)"
    return text


def injection_tables(summary: dict, metrics: tuple[str, ...] = ("em", "tok_acc", "nll")) -> str:
    """Markdown: per metric, one row per setting and one column per N; then the costs per setting."""
    settings = summary["settings"]
    sizes = sorted({int(s) for entry in settings.values() for s in entry["by_size"]})
    names = {"em": "exact match %", "tok_acc": "token accuracy %", "nll": "answer NLL per token",
             "distractor": "answered a distractor %"}
    blocks = []
    for metric in metrics:
        lines = [f"**{names.get(metric, metric)}** (mean ± SE over documents; n = documents at N)", "",
                 "| setting | " + " | ".join(f"N = {n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for setting, entry in settings.items():
            cells = []
            for n in sizes:
                cell = entry["by_size"].get(str(n))
                cells.append("" if cell is None else f"{_cell(cell, metric)}" + (f" (n={cell['documents']})"
                                                                               if metric == metrics[0] else ""))
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    lines = ["**costs** (per document injected; stored = the compact update, a dense delta for AdamW, the text for "
             "prompt; peak = largest growth of peak memory over one group's run)", "",
             "| setting | seconds / document | stored MB / document | peak MB |",
             "|---|---|---|---|"]
    for setting, entry in settings.items():
        seconds = (f"{entry['seconds_per_document']:.3f} ± {entry['seconds_per_document_se']:.3f}"
                   if "seconds_per_document" in entry else "–")
        stored = f"{entry['stored_bytes_per_document'] / MB:.3g}" if "stored_bytes_per_document" in entry else "–"
        peak = f"{entry['peak_bytes'] / MB:.0f}" if entry.get("peak_bytes") is not None else "–"
        lines.append(f"| {setting} | {seconds} | {stored} | {peak} |")
    blocks.append("\n".join(lines))
    first = [(s, e["first_document"]) for s, e in settings.items() if e.get("first_document") and
             "em" in e["first_document"] and s not in ("nc", "prompt")]  # those two do not depend on N
    if first:
        small, large = first[0][1]["sizes"]
        shown = (("em", "EM %", 100.0), ("tok_acc", "token accuracy %", 100.0), ("nll", "NLL", 1.0))
        header = " | ".join(f"{name} N = {small} | N = {large} | change" for _, name, _ in shown)
        lines = [f"**the first document after N = {large} vs N = {small}** (its questions; mean ± SE over groups)", "",
                 f"| setting | {header} | groups |", "|---|" + "---|" * (3 * len(shown) + 1)]
        for setting, block in first:
            cells = []
            for metric, _, scale in shown:
                a, b, c = (block[metric][f"at_{small}"], block[metric][f"at_{large}"], block[metric]["change"])
                cells += [f"{scale * a[0]:.1f} ± {scale * a[1]:.1f}", f"{scale * b[0]:.1f} ± {scale * b[1]:.1f}",
                          f"{scale * c[0]:+.1f} ± {scale * c[1]:.1f}"]
            lines.append(f"| {setting} | " + " | ".join(cells) + f" | {block['em']['groups']} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_injection(summary: dict, path: Path, title: str) -> None:
    """Exact match and token accuracy (± SE) against the number of documents injected, one line per setting (dashed:
    no update; dotted: sum mode)."""
    settings = summary["settings"]
    sizes = sorted({int(n) for entry in settings.values() for n in entry["by_size"]})
    colors = plt.cm.tab20.colors
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, name) in zip(axes, (("em", "exact match"), ("tok_acc", "token accuracy"))):
        for index, (setting, entry) in enumerate(settings.items()):
            points = sorted((int(n), cell) for n, cell in entry["by_size"].items() if metric in cell)
            if not points:
                continue
            style = "--" if setting.startswith(("prompt", "nc")) else ":" if setting.endswith("/sum") else "-"
            ax.errorbar([n for n, _ in points], [100 * c[metric] for _, c in points],
                        yerr=[100 * c[f"{metric}_se"] for _, c in points], label=setting, linestyle=style,
                        marker="o", capsize=3, color=colors[index % len(colors)])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("documents injected (N)")
        ax.set_ylabel(f"{name} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(name)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
