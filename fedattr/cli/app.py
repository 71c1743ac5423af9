"""The ``fedattr`` command line (typer + rich): run, sweep, report, stats, train-generator, list,
scenario, deploy.

Every error ends with one red message on stderr and an exit status, never a traceback: 0 finished,
1 a run or job failed (or the disk is full), 2 bad input, 130 interrupted
(:mod:`fedattr.cli.console`). ``run``, ``sweep`` and ``deploy local`` end through
:func:`fedattr.cli.runs.finish_run`. The launcher (and with it torch and Flower) is imported only
by the commands that need it, so ``--help``, ``scenario`` and ``report`` start fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from fedattr.cli.console import (FAILED_JOBS_EXIT, INTERRUPTED_EXIT, USER_ERROR_EXIT, err as _err,
                                 out as _out, print_json as _print_json, rows_table as _rows_table,
                                 user_errors as _user_errors)
from fedattr.cli.progress import ProgressView
from fedattr.cli.runs import finish_run
from fedattr.core.errors import UserError
from fedattr.cli.deploy import deploy_app
from fedattr.scenario import (Scenario, dump_resolved, expand_grid, load_scenario,
                              parse_grid, schema_text, to_toml)

__all__ = ["app", "main", "USER_ERROR_EXIT", "FAILED_JOBS_EXIT", "INTERRUPTED_EXIT"]


app = typer.Typer(
    name="fedattr",
    help="Federated data-attribution testbed on Flower: run scenarios, sweep them, report.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
)
scenario_app = typer.Typer(help="Inspect and validate scenario files.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
app.add_typer(deploy_app, name="deploy")
from fedattr.cli.report import register as _register_report  # noqa: E402

_register_report(app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fedattr {version('fedattr')}")
        except PackageNotFoundError:
            typer.echo("fedattr (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the fedattr version and exit.")] = False) -> None:
    """Federated data-attribution testbed on Flower: run scenarios, sweep them, report.

    Exit status: 0 finished, 1 a run or job failed (or the disk is full), 2 bad input,
    130 interrupted.
    """

# Shared option types: every command that loads a scenario accepts the same overrides.
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE",
    help="Override a scenario field (dotted key, TOML value); repeatable. "
         "E.g. --set train.lr=0.1 --set seeds=[0,1,2]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Results directory (default: <output_dir>/<name>-<time>).")]
ScenarioArg = Annotated[Path, typer.Argument(help="Scenario TOML file.", show_default=False)]
JobsOpt = Annotated[int, typer.Option(
    "--jobs", "-j", min=1, metavar="N",
    help="Run up to N jobs at once: N Flower runs on one SuperLink, the machine's CPUs split "
         "between them (docs/scaling.md). Results equal a one-at-a-time run.")]
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
    """Fail on any component or parameter the scenario names wrongly (``fedattr.scenario.checks``,
    the one path; this machine's resources and the data are checked by ``run``)."""
    try:
        from fedattr.scenario.checks import check_scenario

        check_scenario(scenario, resources=False, data=False)
    except ImportError as exc:  # a registry that cannot load must not hide the schema's verdict
        return f" (names not checked: {exc})"
    return ""


# --------------------------------------------------------------------------- commands


@app.command()
@_user_errors
def run(scenario: ScenarioArg, set_: SetOpt = None, out: OutOpt = None, json_: JsonOpt = False,
        no_report: Annotated[bool, typer.Option("--no-report",
                                                help="Do not write report.md/plots.")] = False,
        force: ForceOpt = False, jobs: JobsOpt = 1) -> None:
    """Run a scenario: every arm on every seed, then print a summary and write the report.

    Re-running into the same --out resumes (failed and unfinished jobs are run again). Exit
    status: 0 all jobs finished, 1 some job failed, 2 bad input, 130 interrupted.

    Example: fedattr run scenarios/demo.toml --set seeds=[0,1,2] --out results/demo3
    """
    sc = load_scenario(scenario, set_ or [])
    launcher = _launcher()  # the launcher checks registry names and parameters itself
    with ProgressView(_err()) as progress:
        results_dir = Path(launcher.run_scenario(sc, out_dir=out, progress=progress,
                                                 scenario_path=scenario.resolve(), force=force,
                                                 concurrency=jobs))
    finish_run(results_dir, json_=json_, no_report=no_report)


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
          force: ForceOpt = False, jobs: JobsOpt = 1) -> None:
    """Run a scenario at every point of a grid of overrides (one Flower start-up for all).

    Example: fedattr sweep scenarios/core_mnist5k.toml --grid partition.alpha=0.1,0.5,1.0
    --grid attack.synthetic_fraction=0.1,0.25
    """
    sc = load_scenario(scenario, set_ or [])
    grid_d = parse_grid(grid)
    points = expand_grid(sc, grid_d)
    launcher = _launcher()
    with ProgressView(_err()) as progress:
        sweep_dir = Path(launcher.run_sweep(sc, points=points, out_dir=out, progress=progress,
                                            grid=grid_d, force=force, concurrency=jobs))
    finish_run(sweep_dir, json_=json_, no_report=no_report, kind="sweep", points=len(points))


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
        sys.stdout.write(to_toml(sc))
    jobs = len(sc.arms) * len(sc.seeds)
    _err().print(f"[green]ok[/green]: {escape(sc.name)}: {len(sc.arms)} arms x {len(sc.seeds)} "
                 f"seeds = {jobs} jobs of {sc.rounds} rounds{escape(note)}")


def main() -> None:
    """Entry point of the ``fedattr`` console script."""
    app()


if __name__ == "__main__":
    main()
