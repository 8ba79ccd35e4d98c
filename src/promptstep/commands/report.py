"""`promptstep report RUN...`: paper-style tables and a Figure-2-style chart from run directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptstep.config import config_dict
from promptstep.errors import InputError
from promptstep.runs import staged_dir, write_yaml


@dataclass
class ReportConfig:
    """`promptstep report RUN...`: paper-style tables (markdown + CSV) and a Figure-2-style PNG from runs."""

    runs: tuple[str, ...] = ()
    """Run directories, or directories above them, to build the tables from. Required."""
    out: str = ""
    """Directory to write the report to (default: <first run>/report)."""
    metric: str = "tok_acc"
    """Metric of the tables: tok_acc, em or starts."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""

    def validate(self) -> None:
        from promptstep.reporting.paper_tables import METRICS

        if not self.runs:
            raise InputError("report needs at least one run directory: promptstep report RUN [RUN ...]")
        if self.metric not in METRICS:
            raise InputError(f"unknown metric '{self.metric}' (choose from {', '.join(METRICS)})")


def run_report(config: ReportConfig) -> Path:
    from promptstep.reporting.paper_tables import build_report, find_runs, plot_figure2, report_markdown

    runs = find_runs(config.runs)
    out = Path(config.out) if config.out else Path(config.runs[0]) / "report"
    tables = build_report(runs, config.metric)
    with staged_dir(out, config.overwrite) as staging:
        figure = plot_figure2(runs, config.metric, staging / "figure2.png")
        text = report_markdown(tables, runs, figure)
        (staging / "report.md").write_text(text, encoding="utf-8")
        for table in tables:
            if table.rows:
                table.write_csv(staging / f"{table.name}.csv")
        write_yaml(staging / "config.yaml", config_dict(config))
    print(text)
    print(f"report in {out / 'report.md'}")
    return out
