"""``fedattr deploy``: run a scenario on Flower's deployment runtime (separate processes).

``fedattr deploy local`` starts a SuperLink, one SuperNode per client (the attacker's with
``role="attacker"`` in its node_config) and a SuperExec for each on 127.0.0.1; ``fedattr deploy
compose-file`` writes the docker-compose topology for a scenario. The launchers (and with them
Flower and torch) are imported only when a command runs; errors, progress and the end of a run
(:func:`fedattr.cli.runs.finish_run`) are the same as ``fedattr run``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedattr.cli.console import err, user_errors
from fedattr.cli.progress import ProgressView
from fedattr.cli.runs import finish_run

__all__ = ["deploy_app"]

deploy_app = typer.Typer(help="Run a scenario as separate Flower processes (SuperLink, SuperNodes, "
                              "SuperExecs) on this machine, or write its docker-compose file.",
                         no_args_is_help=True)

_SCENARIO = typer.Argument(help="Scenario TOML file.", show_default=False)


@deploy_app.command("local")
def local(scenario: Annotated[Path, _SCENARIO],
          set_: Annotated[Optional[list[str]], typer.Option(
              "--set", "-s", metavar="KEY=VALUE",
              help="Override a scenario field (dotted key, TOML value); repeatable.")] = None,
          out: Annotated[Optional[Path], typer.Option(
              "--out", "-o", help="Results directory (default: <output_dir>/<name>-<time>).")] = None,
          json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
          no_report: Annotated[bool, typer.Option("--no-report", help="Do not write report.md/plots.")] = False,
          device: Annotated[Optional[str], typer.Option(
              "--device", help="Device every SuperNode trains on (node_config `device`: cpu, cuda or auto); "
                               "default: the scenario's runtime.device.")] = None,
          force: Annotated[bool, typer.Option(
              "--force", help="Start an existing results directory of other settings over (its old "
                              "results move to superseded/).")] = False,
          ) -> None:
    """Run a scenario on a local deployment: one process per SuperLink, SuperNode and SuperExec.

    Example: fedattr deploy local scenarios/demo.toml --out results/demo-deploy
    """
    user_errors(_local)(scenario, set_ or [], out, json_, no_report, device, force)


def _local(scenario: Path, set_: list[str], out: Optional[Path], json_: bool, no_report: bool,
           device: Optional[str] = None, force: bool = False) -> None:
    from fedattr.core.errors import UserError
    from fedattr.scenario import load_scenario

    if device is not None and device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device {device!r} is not allowed; choose one of cpu, cuda, auto")
    sc = load_scenario(scenario, set_)
    try:
        from fedattr.launch.local import deploy_scenario
    except ImportError as exc:
        raise UserError(f"the local deployment launcher cannot be imported: {exc}") from exc
    with ProgressView(err()) as progress:
        results_dir = Path(deploy_scenario(sc, out_dir=out, progress=progress, scenario_path=scenario.resolve(),
                                           node_extra={"device": device} if device else None, force=force))
    finish_run(results_dir, json_=json_, no_report=no_report)


@deploy_app.command("compose-file")
def compose_file(scenario: Annotated[Path, _SCENARIO],
                 set_: Annotated[Optional[list[str]], typer.Option(
                     "--set", "-s", metavar="KEY=VALUE", help="Override a scenario field; repeatable.")] = None,
                 out: Annotated[Path, typer.Option(
                     "--out", "-o", help="Where to write the compose file.")] = Path("docker-compose.yml"),
                 tls: Annotated[bool, typer.Option(
                     "--tls", help="Write the TLS override (docker-compose.tls.yml) instead.")] = False,
                 ) -> None:
    """Write a docker-compose file with one SuperNode per client of the scenario.

    Example: fedattr deploy compose-file scenarios/demo.toml --out docker-compose.yml
    """
    user_errors(_compose_file)(scenario, set_ or [], out, tls)


def _compose_file(scenario: Path, set_: list[str], out: Path, tls: bool) -> None:
    from fedattr.launch.compose import write_compose
    from fedattr.scenario import load_scenario

    sc = load_scenario(scenario, set_)
    path = write_compose(out, sc.num_clients, list(sc.attacker_ids), tls=tls, source=str(scenario))
    typer.echo(f"wrote {path} ({sc.num_clients} SuperNodes, attacker partition(s) {list(sc.attacker_ids)})")
