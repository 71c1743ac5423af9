"""Reports of stored results: the claim statistics, tables, plots, report.md/.html, stats.json, results pages.

A results directory is re-reportable at any time without re-running (``fedattr report DIR``).
The package's layers, each importing only those below it:

- :mod:`~fedattr.report.stats` (intervals, paired statistics, ranks, number format) and
  :mod:`~fedattr.report.machine`;
- :mod:`~fedattr.report.reader` (a results directory parsed once into typed records);
- :mod:`~fedattr.report.claim_stats` (same-game effects, the claim and control tables);
- :mod:`~fedattr.report.summary` (every reported number as typed objects; the CLI's rows);
- :mod:`~fedattr.report.render` (markdown tables, figures, the palette);
- :mod:`~fedattr.report.detectors`, then :mod:`~fedattr.report.plots` and
  :mod:`~fedattr.report.markdown`; :mod:`~fedattr.report.html`; this module writes the files.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from fedattr.core.errors import UserError
from fedattr.report.html import markdown_to_html
from fedattr.report.markdown import generated_lines, scenario_markdown, sweep_markdown
from fedattr.report.plots import scenario_plots, sweep_plot
from fedattr.report.reader import (JobResult, ScenarioResults, is_sweep, load_results, merge_results,
                                   read_environment, sweep_meta)
from fedattr.report.stats import MeanCI, PairedStats, fmt_ci, fmt_num, kendall_between, mean_ci, paired_stats
from fedattr.report.summary import (ScenarioSummary, SweepSummary, client_rows, failure_rows, scenario_summary,
                                    summarize, summary_rows, unfinished_rows)
from fedattr.results.store import atomic_write_json, atomic_write_text

__all__ = [
    "MeanCI", "PairedStats", "mean_ci", "paired_stats", "fmt_ci", "fmt_num", "kendall_between",
    "JobResult", "ScenarioResults", "load_results", "merge_results", "sweep_meta", "is_sweep",
    "ScenarioSummary", "SweepSummary", "summarize", "summary_rows", "client_rows", "failure_rows",
    "unfinished_rows", "write_report", "write_page", "markdown_to_html",
]

STATS_JSON = "stats.json"


def _write(path: Path, md: str, title: str, summary: ScenarioSummary | SweepSummary) -> Path:
    """Write report.md, a self-contained report.html and stats.json into ``path``; return the .md path."""
    atomic_write_text(path / "report.md", md)
    atomic_write_text(path / "report.html", markdown_to_html(md, title, base=path))
    atomic_write_json(path / STATS_JSON, summary.as_dict())
    return path / "report.md"


def _scenario_report(path: Path) -> tuple[ScenarioResults, ScenarioSummary]:
    res = load_results(path)
    if not res.jobs and not res.failed:
        raise UserError(f"no job results under {path / 'jobs'} yet: nothing to report")
    return res, scenario_summary(res)


def _write_scenario_report(path: Path) -> Path:
    """Tables, plots and report files of one scenario directory."""
    res, summary = _scenario_report(path)
    md = scenario_markdown(res, summary, scenario_plots(res, path / "plots"), path)
    return _write(path, md, f"fedattr report: {res.scenario.name}", summary)


def _sweep_plots(summary: SweepSummary, out: Path) -> list[tuple[str, Path]]:
    plots = []
    for key in summary.grid:
        plot = sweep_plot(summary, key, out)
        if plot is not None:
            plots.append((f"Attacker inflation and accuracy vs {key}", plot))
    return plots


def write_report(results_dir: str | Path, *, points: bool = True) -> Path:
    """Write report.md, report.html (self-contained), stats.json and plots/*.png for a scenario or sweep.

    A sweep directory (it holds sweep.json) gets sweep tables and plots versus every grid key
    and, with ``points``, a report of every point. Returns the path of report.md. Raises
    UserError when the directory holds no readable results.
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not is_sweep(path):
        return _write_scenario_report(path)
    summary = summarize(path)
    assert isinstance(summary, SweepSummary)
    point_reports = {}
    if points:
        for p in summary.points:
            if p.summary and p.summary.jobs.found + p.summary.jobs.failed:
                point_reports[p.dir] = _write_scenario_report(path / p.dir)
    md = sweep_markdown(summary, sweep_meta(path), _sweep_plots(summary, path / "plots"), path, point_reports)
    return _write(path, md, "fedattr sweep report", summary)


def page_header(results_dir: Path, page: Path, command: str | None) -> list[str]:
    """A results page's provenance lines: date, commit, the command behind the results, the machine."""
    env = read_environment(results_dir)
    produced = env.command or command or "not recorded"
    return generated_lines(f"fedattr report {shlex.quote(str(results_dir))} --to {shlex.quote(str(page))}", page) + [
        f"- results produced at commit {env.commit or 'not recorded'} by: `{produced}`", ""]


def write_page(results_dir: str | Path, page: str | Path, command: str | None = None) -> Path:
    """Write a generated results page ``page`` (e.g. docs/results/claim.md) for a results directory.

    Its plots go next to it, in a folder named after the page (``docs/results/claim/*.png``),
    linked relatively. The header gives the date, commit, the command that produced the results
    (from environment.json, else ``command``), and the machine (CPU count, matmul rate).
    """
    path, page = Path(results_dir), Path(page)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if page.suffix != ".md":
        raise UserError(f"--to must name a markdown file (….md): {page}")
    plots_dir = page.with_suffix("")
    header = page_header(path, page, command)
    if is_sweep(path):
        summary = summarize(path)
        assert isinstance(summary, SweepSummary)
        md = sweep_markdown(summary, sweep_meta(path), _sweep_plots(summary, plots_dir), page.parent, {}, header)
    else:
        res, summary = _scenario_report(path)
        md = scenario_markdown(res, summary, scenario_plots(res, plots_dir), page.parent, header)
    atomic_write_text(page, md + "\n")
    return page
