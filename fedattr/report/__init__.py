"""Reports of stored results: mean ± 95% CI tables over seeds, PNG plots, report.md/.html.

A results directory is re-reportable at any time without re-running (``fedattr report DIR``).
The package's parts: :mod:`~fedattr.report.stats` (mean and CI, Kendall tau, number format),
:mod:`~fedattr.report.reader` (results directory -> job results), :mod:`~fedattr.report.summary`
(every reported number; the CLI's table rows), :mod:`~fedattr.report.plots`,
:mod:`~fedattr.report.markdown` and :mod:`~fedattr.report.html`.
"""

from __future__ import annotations

from pathlib import Path

from fedattr.core.errors import UserError
from fedattr.report.html import markdown_to_html
from fedattr.report.markdown import scenario_markdown, sweep_markdown
from fedattr.report.plots import scenario_plots, sweep_plot
from fedattr.report.reader import JobResult, ScenarioResults, is_sweep, load_results, merge_results, sweep_meta
from fedattr.report.stats import MeanCI, fmt_ci, fmt_num, kendall_between, mean_ci
from fedattr.report.summary import client_rows, failure_rows, scenario_summary, summarize, summary_rows
from fedattr.results.store import atomic_write_text

__all__ = [
    "MeanCI",
    "mean_ci",
    "fmt_ci",
    "fmt_num",
    "kendall_between",
    "JobResult",
    "ScenarioResults",
    "load_results",
    "merge_results",
    "summarize",
    "summary_rows",
    "client_rows",
    "failure_rows",
    "write_report",
    "markdown_to_html",
]


def _write(path: Path, md: str, title: str) -> Path:
    """Write report.md and report.html next to each other; return the .md path."""
    atomic_write_text(path / "report.md", md)
    atomic_write_text(path / "report.html", markdown_to_html(md, title))
    return path / "report.md"


def _write_scenario_report(path: Path) -> Path:
    """Tables, plots and report files of one scenario directory."""
    res = load_results(path)
    if not res.jobs and not res.failed:
        raise UserError(f"no job results under {path / 'jobs'} yet: nothing to report")
    summary = scenario_summary(res)
    plots = scenario_plots(res, path / "plots")
    md = scenario_markdown(res, summary, plots, path)
    return _write(path, md, f"fedattr report: {res.scenario.get('name', path.name)}")


def write_report(results_dir: str | Path, *, points: bool = True) -> Path:
    """Write report.md, report.html and plots/*.png for a scenario or sweep directory.

    A sweep directory (it holds sweep.json) gets sweep tables and plots versus every grid key
    and, with ``points``, a report of every point. Returns the path of report.md. Raises
    UserError when the directory holds no readable results.
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not is_sweep(path):
        return _write_scenario_report(path)
    meta = sweep_meta(path)
    summary = summarize(path)
    point_reports = {}
    if points:
        for p in summary["points"]:
            if p.get("summary") and p["summary"]["jobs"]["found"]:
                point_reports[p["dir"]] = _write_scenario_report(path / p["dir"])
    plots = []
    for key in summary["grid"]:
        plot = sweep_plot(summary, key, path / "plots")
        if plot is not None:
            plots.append((f"Attacker inflation and accuracy vs {key}", plot))
    md = sweep_markdown(summary, meta, plots, path, point_reports)
    return _write(path, md, "fedattr sweep report")
