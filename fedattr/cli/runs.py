"""What every command that runs jobs prints and returns once its launcher is done.

``fedattr run``, ``fedattr sweep`` and ``fedattr deploy local`` end through :func:`finish_run`:
write the report, print the summary (or JSON), then exit with ``FAILED_JOBS_EXIT`` when any job
failed, so that the three commands agree on what a failed job means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.markup import escape

from fedattr.cli.console import FAILED_JOBS_EXIT, err, out, print_json, rows_table

if TYPE_CHECKING:  # the report (and matplotlib) is imported when a command prints one
    from fedattr.report import ScenarioSummary, SweepSummary

__all__ = ["finish_run", "print_summary", "print_sweep", "print_failures", "exit_if_failed", "timing_line",
           "read_meta", "attribution_cost_lines"]


def print_summary(summary: ScenarioSummary) -> None:
    """Per arm and evaluator: final accuracy, attacker value, inflation, Kendall tau; then what is
    unfinished or failed (so that no number is taken as final when it is not)."""
    from fedattr.report import summary_rows

    headers, rows = summary_rows(summary)
    out().print(rows_table(f"{summary.name}: mean ± 95% CI over seeds", headers, rows))
    print_failures(summary)


def print_failures(summary: ScenarioSummary, where: str = "") -> None:
    """The unfinished-jobs and failures tables (on stderr), when there is any; a live run's note."""
    from fedattr.report import failure_rows, unfinished_rows

    if summary.in_progress:
        err().print(f"[yellow]{escape(where)}in progress: a live fedattr run holds {escape(str(summary.dir))}; "
                    "these numbers are not final[/yellow]")
    headers, rows = unfinished_rows(summary)
    if rows:
        err().print(rows_table(f"{where}unfinished jobs (their values are from the last round reached)",
                               headers, rows))
    headers, rows = failure_rows(summary)
    if rows:
        err().print(rows_table(f"{where}failures (rejected replies are never aggregated; failed jobs are "
                               "left out of every statistic)", headers, rows))


def print_sweep(summary: SweepSummary) -> None:
    """One row per sweep point, arm and evaluator (non-honest arms only)."""
    from fedattr.report import summary_rows

    table_rows, headers = [], ["point", "overrides"]
    for point in summary.points:
        overrides = ", ".join(f"{k}={v}" for k, v in point.overrides.items())
        if point.summary is None:
            table_rows.append([Path(point.dir).name, overrides, point.error or "no results"])
            continue
        h, rows = summary_rows(point.summary)
        headers = ["point", "overrides"] + h
        table_rows += [[Path(point.dir).name, overrides] + r for r in rows if r[0] != point.summary.honest_arm]
    out().print(rows_table("sweep: mean ± 95% CI over seeds", headers, table_rows))
    for point in summary.points:
        if point.summary is not None:
            print_failures(point.summary, where=f"{Path(point.dir).name}: ")


def exit_if_failed(summary: ScenarioSummary | SweepSummary, results_dir: Path) -> None:
    """Exit with FAILED_JOBS_EXIT when any job failed (its results are listed, not trusted)."""
    failed = summary.failed_jobs
    if failed:
        err().print(f"[bold red]error:[/bold red] [red]{failed} job(s) failed (see the failures table); "
                    f"re-run the same command to retry them: {escape(str(results_dir))}[/red]")
        raise typer.Exit(FAILED_JOBS_EXIT)


def attribution_cost_lines(results_dir: Path) -> list[str]:
    """Per evaluator, its seconds over the round's training seconds in rounds 2 onwards (round 1
    includes the clients' start-up), the mean over jobs and rounds from the round records'
    ``timings``, with this machine's matmul rate beside it; [] when no round past the first has them."""
    from fedattr.report.costs import cost_ratios, round_costs

    ratios = cost_ratios(round_costs(results_dir))
    if not ratios:
        return []
    from fedattr.report.machine import machine

    parts = ", ".join(f"{name} {sum(r) / len(r):.2f}x" for name, r in ratios.items())
    rounds = max(len(r) for r in ratios.values())
    return [f"attribution / training time (rounds 2+, mean over {rounds} job rounds): {parts}",
            f"{machine().line()}; load average {os.getloadavg()[0]:.1f}"]


def timing_line(meta: Mapping[str, Any]) -> str:
    """``wall time X s, start-up Y s (Z%)`` from environment.json or sweep.json."""
    wall, start = meta.get("wall_s"), meta.get("startup_s")
    if not isinstance(wall, (int, float)):
        return "wall time: not recorded"
    line = f"wall time {wall:.1f} s"
    if isinstance(start, (int, float)) and wall > 0:
        line += f", start-up {start:.1f} s ({start / wall:.0%} of it)"
    return line


def read_meta(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, or {} when missing/unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def finish_run(results_dir: Path, *, json_: bool, no_report: bool,
               kind: Literal["run", "sweep"] = "run", points: int | None = None) -> None:
    """Report a finished launch: write the report, print the summary (or JSON), exit 1 on a failed job.

    ``kind="sweep"`` prints one row per grid point and reads the timings from ``sweep.json``.
    """
    from fedattr.report import summarize, write_report

    report_path = None if no_report else write_report(results_dir)
    summary = summarize(results_dir)
    sweep = kind == "sweep"
    meta = read_meta(results_dir / ("sweep.json" if sweep else "environment.json"))
    report = str(report_path) if report_path else None
    if json_:
        if sweep:
            print_json({"sweep_dir": str(results_dir), "report": report, "wall_s": meta.get("wall_s"),
                        "startup_s": meta.get("startup_s"), "summary": summary.as_dict()})
        else:
            print_json({"results_dir": str(results_dir), "report": report, "summary": summary.as_dict()})
        exit_if_failed(summary, results_dir)
        return
    con = out()
    if sweep:
        print_sweep(summary)
        con.print(f"sweep: {escape(str(results_dir))} ({points} points)")
    else:
        from fedattr.report import client_rows

        headers, rows = client_rows(results_dir)
        con.print(rows_table("cumulative attribution per client (mean over seeds; * = attacker)", headers, rows))
        print_summary(summary)
        con.print(f"results: {escape(str(results_dir))}")
    con.print(timing_line(meta))
    if not sweep:
        for line in attribution_cost_lines(results_dir):
            con.print(line, markup=False, highlight=False)
    if report_path:
        con.print(f"report: {escape(str(report_path))}")
    exit_if_failed(summary, results_dir)
