"""The ``fedattr`` command line (typer + rich): run, sweep, report, train-generator, list, scenario.

Errors a user can cause (a bad scenario, a missing file, a ``UserError`` from a launcher) end with
one red message on stderr and exit status 2, never a traceback. The launcher (and with it torch and
Flower) is imported only by the commands that need it, so ``--help``, ``scenario`` and ``report``
start fast.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from fedattr.cli.console import (FAILED_JOBS_EXIT, INTERRUPTED_EXIT, USER_ERROR_EXIT, err as _err,
                                 fail as _fail, out as _out, print_json as _print_json,
                                 rows_table as _rows_table, user_errors as _user_errors)
from fedattr.core.errors import UserError
from fedattr.cli.deploy import deploy_app
from fedattr.scenario.schema import (Scenario, ScenarioError, dump_resolved, expand_grid,
                              load_scenario, parse_grid, schema_text)

__all__ = ["app", "main"]


app = typer.Typer(
    name="fedattr",
    help="Federated data-attribution testbed on Flower: run scenarios, sweep them, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
scenario_app = typer.Typer(help="Inspect and validate scenario files.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
app.add_typer(deploy_app, name="deploy")

# Shared option types: every command that loads a scenario accepts the same overrides.
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE",
    help="Override a scenario field (dotted key, TOML value); repeatable. "
         "E.g. --set train.lr=0.1 --set seeds=[0,1,2]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Results directory (default: <output_dir>/<name>-<time>).")]
ScenarioArg = Annotated[Path, typer.Argument(help="Scenario TOML file.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="If --out holds results of other settings, move them to superseded/ and start "
                    "over (without it, such a directory is refused).")]


def _launcher() -> Any:
    """``fedattr.launch.execute``, imported on demand (it pulls in torch and Flower)."""
    try:
        import fedattr.launch.execute as launcher
    except ImportError as exc:
        raise UserError(f"the fedattr launcher cannot be imported: {exc}") from exc
    return launcher


def _check_registry(scenario: Scenario) -> str:
    """Fail on any component the scenario names wrongly (``fedattr.scenario.components``, the one path)."""
    try:
        from fedattr.scenario.components import check_components

        problems = check_components(scenario)
    except ImportError as exc:  # a registry that cannot load must not hide the schema's verdict
        return f" (names not checked: {exc})"
    if problems:
        raise ScenarioError("invalid scenario components:\n" + "\n".join(f"  - {p}" for p in problems))
    return ""


# --------------------------------------------------------------------------- progress


class _ProgressView:
    """Rich progress of a run, fed by the launcher's progress events (dicts).

    Events: ``{"event": "round", "arm", "seed", "round", "rounds", "jobs_done", "jobs_total"}``
    (optionally ``"point"``/``"points"`` in a sweep) and ``{"event": "log", "message"}``; other
    events are ignored, so the launcher may add more.
    """

    def __init__(self, console: Console):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.jobs = self.progress.add_task("jobs", total=None)
        self.rounds = self.progress.add_task("rounds", total=None, visible=False)
        self.done = 0

    def __enter__(self) -> _ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Update the bars from one progress event."""
        kind = event.get("event")
        if kind == "log":
            self.progress.console.print(escape(str(event.get("message", ""))))
            return
        if "jobs_total" in event or "jobs_done" in event:
            # never move the jobs bar backwards: round events may carry a stale jobs_done
            self.done = max(self.done, int(event.get("jobs_done") or 0))
            where = (f"point {int(event['point']) + 1}/{event['points']} "
                     if "point" in event and "points" in event else "")
            self.progress.update(self.jobs, description=f"{where}jobs",
                                 total=event.get("jobs_total"), completed=self.done)
        if kind == "round":
            self.progress.update(self.rounds, visible=True,
                                 description=f"{event.get('arm')} seed {event.get('seed')} rounds",
                                 total=event.get("rounds"), completed=event.get("round", 0))


# --------------------------------------------------------------------------- output helpers


def _print_summary(summary: Mapping[str, Any]) -> None:
    """Per arm and evaluator: final accuracy, attacker value, inflation, Kendall tau; then failures."""
    from fedattr.report import summary_rows

    headers, rows = summary_rows(summary)
    _out().print(_rows_table(f"{summary.get('name')}: mean ± 95% CI over seeds", headers, rows))
    _print_failures(summary)


def _print_failures(summary: Mapping[str, Any], where: str = "") -> None:
    """The failures table (rejected replies, silent nodes, failed jobs), when there is any."""
    from fedattr.report import failure_rows

    headers, rows = failure_rows(summary)
    if rows:
        _err().print(_rows_table(f"{where}failures (rejected replies are never aggregated; failed jobs are "
                                 "left out of every statistic)", headers, rows))


def _failed_jobs(summary: Mapping[str, Any]) -> int:
    """Failed jobs of a scenario or sweep summary."""
    if summary.get("kind") == "sweep":
        return sum(_failed_jobs(p["summary"]) for p in summary.get("points", []) if p.get("summary"))
    return int((summary.get("jobs") or {}).get("failed") or 0)


def _exit_if_failed(summary: Mapping[str, Any], results_dir: Path) -> None:
    """Exit with FAILED_JOBS_EXIT when any job failed (its results are listed, not trusted)."""
    failed = _failed_jobs(summary)
    if failed:
        _err().print(f"[bold red]error:[/bold red] [red]{failed} job(s) failed (see the failures table); "
                     f"re-run the same command to retry them: {escape(str(results_dir))}[/red]")
        raise typer.Exit(FAILED_JOBS_EXIT)


def _print_sweep(summary: Mapping[str, Any]) -> None:
    """One row per sweep point, arm and evaluator (non-honest arms only)."""
    from fedattr.report import summary_rows

    table_rows, headers = [], ["point", "overrides"]
    for point in summary["points"]:
        overrides = ", ".join(f"{k}={v}" for k, v in point["overrides"].items())
        if not point.get("summary"):
            table_rows.append([Path(point["dir"]).name, overrides,
                               point.get("error", "no results")])
            continue
        h, rows = summary_rows(point["summary"])
        headers = ["point", "overrides"] + h
        honest = point["summary"].get("honest_arm")
        table_rows += [[Path(point["dir"]).name, overrides] + r for r in rows if r[0] != honest]
    _out().print(_rows_table("sweep: mean ± 95% CI over seeds", headers, table_rows))
    for point in summary["points"]:
        if point.get("summary"):
            _print_failures(point["summary"], where=f"{Path(point['dir']).name}: ")


def _timing_line(meta: Mapping[str, Any]) -> str:
    """``wall time X s, start-up Y s (Z%)`` from environment.json or sweep.json."""
    wall, start = meta.get("wall_s"), meta.get("startup_s")
    if not isinstance(wall, (int, float)):
        return "wall time: not recorded"
    line = f"wall time {wall:.1f} s"
    if isinstance(start, (int, float)) and wall > 0:
        line += f", start-up {start:.1f} s ({start / wall:.0%} of it)"
    return line


def _read_meta(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, or {} when missing/unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- commands


@app.command()
@_user_errors
def run(scenario: ScenarioArg, set_: SetOpt = None, out: OutOpt = None, json_: JsonOpt = False,
        no_report: Annotated[bool, typer.Option("--no-report",
                                                help="Do not write report.md/plots.")] = False,
        force: ForceOpt = False) -> None:
    """Run a scenario: every arm on every seed, then print a summary and write the report.

    Re-running into the same --out resumes (failed and unfinished jobs are run again). Exit
    status: 0 all jobs finished, 1 some job failed, 2 bad input, 130 interrupted.

    Example: fedattr run scenarios/demo.toml --set seeds=[0,1,2] --out results/demo3
    """
    sc = load_scenario(scenario, set_ or [])
    launcher = _launcher()  # the launcher checks registry names and parameters itself
    with _ProgressView(_err()) as progress:
        results_dir = Path(launcher.run_scenario(sc, out_dir=out, progress=progress,
                                                 scenario_path=scenario.resolve(), force=force))
    from fedattr.report import summarize, write_report

    report_path = None if no_report else write_report(results_dir)
    summary = summarize(results_dir)
    if json_:
        _print_json({"results_dir": str(results_dir),
                     "report": str(report_path) if report_path else None, "summary": summary})
        _exit_if_failed(summary, results_dir)
        return
    from fedattr.report import client_rows

    headers, rows = client_rows(results_dir)
    _out().print(_rows_table("cumulative attribution per client (mean over seeds; * = attacker)", headers, rows))
    _print_summary(summary)
    con = _out()
    con.print(f"results: {escape(str(results_dir))}")
    con.print(_timing_line(_read_meta(results_dir / "environment.json")))
    if report_path:
        con.print(f"report: {escape(str(report_path))}")
    _exit_if_failed(summary, results_dir)


@app.command()
@_user_errors
def sweep(scenario: ScenarioArg,
          grid: Annotated[list[str], typer.Option(
              "--grid", "-g", metavar="KEY=V1,V2",
              help="Grid axis: dotted key and comma-separated values; repeatable. "
                   "attack.<param> sets params.<param> of every non-honest arm.")],
          set_: SetOpt = None, out: OutOpt = None, json_: JsonOpt = False,
          no_report: Annotated[bool, typer.Option("--no-report",
                                                  help="Do not write the reports.")] = False,
          force: ForceOpt = False) -> None:
    """Run a scenario at every point of a grid of overrides (one Flower start-up for all).

    Example: fedattr sweep scenarios/core_mnist5k.toml --grid partition.alpha=0.1,0.5,1.0
    --grid attack.synthetic_fraction=0.1,0.25
    """
    sc = load_scenario(scenario, set_ or [])
    grid_d = parse_grid(grid)
    points = expand_grid(sc, grid_d)
    launcher = _launcher()
    with _ProgressView(_err()) as progress:
        sweep_dir = Path(launcher.run_sweep(sc, points=points, out_dir=out, progress=progress,
                                            grid=grid_d, force=force))
    from fedattr.report import summarize, write_report

    report_path = None if no_report else write_report(sweep_dir)
    summary = summarize(sweep_dir)
    meta = _read_meta(sweep_dir / "sweep.json")
    if json_:
        _print_json({"sweep_dir": str(sweep_dir),
                     "report": str(report_path) if report_path else None,
                     "wall_s": meta.get("wall_s"), "startup_s": meta.get("startup_s"),
                     "summary": summary})
        _exit_if_failed(summary, sweep_dir)
        return
    _print_sweep(summary)
    con = _out()
    con.print(f"sweep: {escape(str(sweep_dir))} ({len(points)} points)")
    con.print(_timing_line(meta))
    if report_path:
        con.print(f"report: {escape(str(report_path))}")
    _exit_if_failed(summary, sweep_dir)


@app.command()
@_user_errors
def report(results_dir: Annotated[Path, typer.Argument(
               help="A scenario or sweep results directory.", show_default=False)],
           json_: JsonOpt = False) -> None:
    """(Re)write report.md, report.html and plots of a stored results directory.

    Example: fedattr report results/demo-20260101-120000
    """
    from fedattr.report import summarize, write_report

    path = write_report(results_dir)
    summary = summarize(results_dir)
    if json_:
        _print_json({"report": str(path), "summary": summary})
        return
    if summary["kind"] == "sweep":
        _print_sweep(summary)
    else:
        _print_summary(summary)
    _out().print(f"report: {escape(str(path))}")


class GeneratorSource(str, Enum):
    """Where the attacker's generator learns from."""

    public = "public"
    local = "local"


@app.command("train-generator")
@_user_errors
def train_generator(
        scenario: ScenarioArg,
        source: Annotated[GeneratorSource, typer.Option(
            "--source", help="Train on the public auxiliary split (public) or on the attacker's "
                             "own partition (local).")] = GeneratorSource.public,
        partition_id: Annotated[Optional[int], typer.Option(
            "--partition-id", help="Attacker partition for --source local (default: the first "
                                   "attacker id).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Retrain even if cached.")] = False,
        set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Train (or reuse from the cache) the attacker's generator for a scenario's dataset.

    Example: fedattr train-generator scenarios/demo.toml --source local --partition-id 0
    """
    sc = load_scenario(scenario, set_ or [])
    info = _launcher().train_generator(sc, source=source.value, partition_id=partition_id,
                                     force=force)
    if json_:
        _print_json(info)
        return
    _out().print(_rows_table("generator", ["key", "value"],
                             [[k, v] for k, v in dict(info).items()]))


@app.command("list")
@_user_errors
def list_(json_: JsonOpt = False) -> None:
    """List registered datasets, models, evaluators, attacks and aggregators.

    Example: fedattr list --json
    """
    registries = _launcher().registries()
    if json_:
        _print_json(registries)
        return
    _out().print(_rows_table("fedattr registries", ["kind", "names"],
                             [[k, ", ".join(v)] for k, v in registries.items()]))


@scenario_app.command("schema")
@_user_errors
def scenario_schema(json_: Annotated[bool, typer.Option(
        "--json", help="Print the JSON schema instead of the field listing.")] = False) -> None:
    """Print every scenario field with its type, default and description.

    Example: fedattr scenario schema --json > scenario.schema.json
    """
    if json_:
        _print_json(Scenario.model_json_schema())
    else:
        sys.stdout.write(schema_text())


@scenario_app.command("check")
@_user_errors
def scenario_check(scenario: ScenarioArg, set_: SetOpt = None, json_: Annotated[bool, typer.Option(
        "--json", help="Print the resolved scenario as JSON instead of TOML.")] = False,
                   registry: Annotated[bool, typer.Option(
                       "--registry/--no-registry",
                       help="Also check names against the registries (imports torch "
                            "and Flower).")] = True) -> None:
    """Validate a scenario file (with overrides) and print it resolved, every default filled.

    Example: fedattr scenario check scenarios/demo.toml --set partition.alpha=0.1
    """
    sc = load_scenario(scenario, set_ or [])
    note = ""
    if registry:
        note = _check_registry(sc)
    if json_:
        _print_json(dump_resolved(sc))
    else:
        sys.stdout.write(sc.to_toml())
    jobs = len(sc.arms) * len(sc.seeds)
    _err().print(f"[green]ok[/green]: {escape(sc.name)}: {len(sc.arms)} arms x {len(sc.seeds)} "
                 f"seeds = {jobs} jobs of {sc.rounds} rounds{escape(note)}")


def main() -> None:
    """Entry point of the ``fedattr`` console script."""
    app()


if __name__ == "__main__":
    main()
