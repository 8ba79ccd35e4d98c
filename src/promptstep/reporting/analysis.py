"""The analysis run's markdown table and per-layer plots (one line per model and setting, like Deutch et al. Fig. 3)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

STATE_COLUMNS = (("simaou", "SimAOU"), ("simaou_norm", "SimAOU_norm"), ("simam", "SimAM"), ("simam_delta", "SimAM_Δ"))
REFERENCE_ROW = "random update; SimAM: ICL vs ZS; overlaps: ICL vs ICL reordered"
PLOTS = {"simaou": "SimAOU", "simaou_norm": "SimAOU_norm", "simam": "SimAM", "simam_delta": "SimAM_Δ"}


def _pm(entry: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if entry is None or math.isnan(entry["mean"]):
        return "–"
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['se'] * scale:.{digits}f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_summary(summaries: dict[str, dict]) -> str:
    """One row per model and FT rule (layer-averaged, mean ± SE over examples), plus each model's reference row."""
    header = ("| model | FT rule | n | acc ZS / ICL / FT % | full-vocab acc ZS / ICL / FT % | "
              + " | ".join(label for _, label in STATE_COLUMNS)
              + " | Rec2FTP % (FT fixes) | top-K overlap | overlap cos | α | Sen ICL / FT |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for label, s in summaries.items():
        sen = s.get("order_sensitivity", {})
        for rule, entry in s["rules"].items():
            accuracy = [" / ".join(_num(s[key][k]["mean"] * 100) for k in ("zs", "icl", rule))
                        for key in ("accuracy", "vocab_accuracy")]
            cells = [_pm(entry[m]) for m, _ in STATE_COLUMNS]
            alpha = _pm(s["alpha"]) if rule == "lcgd" and "alpha" in s else "–"
            order = f"{_num(sen['icl']['mean'], 3)} / {_num(sen[rule]['mean'], 3)}" if sen else "–"
            lines.append(f"| {label} | {rule} | {s['n']} | " + " | ".join(accuracy + cells)
                         + f" | {_num(entry['rec2ftp'])} ({entry['ft_fixes']}) | "
                         f"{_pm(entry['top_k_overlap'], digits=2)} | {_pm(entry['overlap_cosine'], digits=2)} | "
                         f"{alpha} | {order} |")
        icl = s["icl"]
        reference = [_pm(icl["random_simaou"]), _pm(icl["random_simaou_norm"]), _pm(icl["simam_zs"]), "–"]
        overlap = s.get("icl_vs_icl", {})
        lines.append(f"| {label} | {REFERENCE_ROW} | {s['n']} | – | – | " + " | ".join(reference)
                     + f" | – | {_pm(overlap.get('top_k_overlap'), digits=2)} | "
                     f"{_pm(overlap.get('overlap_cosine'), digits=2)} | – | – |")
    return "\n".join(lines)


def plot_layers(summaries: dict[str, dict], out: Path, title: str) -> None:
    """layers_<metric>.png for each state metric (and α): value against layer, one line per model and rule.

    Dashed lines are the references: the random update for SimAOU(_norm), ICL vs ZS maps for SimAM.
    """
    references = {"simaou": "random_simaou", "simaou_norm": "random_simaou_norm", "simam": "simam_zs"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"sgd": ("-", "o"), "lcgd": (":", "s")}
    for metric, name in PLOTS.items():
        fig, ax = plt.subplots(figsize=(9, 4))
        for index, (label, s) in enumerate(summaries.items()):
            colour = colours[index % len(colours)]
            for rule, entry in s["rules"].items():
                line, marker = styles.get(rule, ("-", "."))
                ax.plot(entry[metric]["per_layer"], color=colour, linestyle=line, marker=marker, markersize=3,
                        label=f"{label} {rule}")
            if metric in references:
                ax.plot(s["icl"][references[metric]]["per_layer"], color=colour, linestyle="--", alpha=0.4,
                        label=f"{label} {'ICL vs ZS' if metric == 'simam' else 'random update'}")
        _finish(fig, ax, name, f"{title}: {name}", out / f"layers_{metric}.png")
    alphas = {label: s["alpha"]["per_layer"] for label, s in summaries.items() if "alpha" in s}
    if alphas:
        fig, ax = plt.subplots(figsize=(9, 4))
        for label, values in alphas.items():
            ax.plot(values, marker=".", label=label)
        _finish(fig, ax, "α = SimAM_Δ(LCGD, GD)", f"{title}: α", out / "layers_alpha.png")


def _finish(fig, ax, ylabel: str, title: str, path: Path) -> None:
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
