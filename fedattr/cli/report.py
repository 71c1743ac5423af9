"""``fedattr report`` and ``fedattr stats``: re-report stored results and print the claim statistics."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fedattr.cli.console import out, print_json, user_errors
from fedattr.cli.runs import print_summary, print_sweep
from fedattr.core.errors import UserError

__all__ = ["register"]

_DIR = typer.Argument(help="A scenario or sweep results directory.", show_default=False)


@user_errors
def report(results_dir: Annotated[Path, _DIR],
           to: Annotated[Optional[Path], typer.Option(
               "--to", metavar="PAGE.md",
               help="Write a generated results page (e.g. docs/results/claim.md, plots in docs/results/claim/) "
                    "instead of the report files in the results directory.")] = None,
           json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
           breadth: Annotated[bool, typer.Option(
               "--breadth", help="Read RESULTS_DIR and MORE_DIRS as the breadth study's cells and write one "
                                 "page (needs --to): per-cell tables, the cheap estimators' error, the verdicts.")] = False,
           scaling: Annotated[bool, typer.Option(
               "--scaling", help="Read RESULTS_DIR and MORE_DIRS as scale runs and write the scaling page "
                                 "(needs --to): attribution / training per round, and --bench's figures.")] = False,
           defenses: Annotated[bool, typer.Option(
               "--defenses", help="Read RESULTS_DIR as a run of scenarios/defenses_new.toml and write the defences "
                                  "page (needs --to): each mitigation against issue 23's bar, the adaptive "
                                  "attacker.")] = False,
           holder: Annotated[Optional[Path], typer.Option(
               "--holder", metavar="HOLDER_DIR", help="With --defenses: the genuine-holder run "
                                                      "(scenarios/defenses_holder.toml).")] = None,
           bench: Annotated[Optional[Path], typer.Option(
               "--bench", metavar="JSON", help="With --scaling: the JSON of `python -m benchmarks.concurrency "
                                               "--json` (sequential against concurrent jobs).")] = None,
           more_dirs: Annotated[Optional[list[Path]], typer.Argument(
               help="Further results directories (with --breadth or --scaling only).", show_default=False)] = None) -> None:
    """(Re)write report.md, a self-contained report.html, stats.json and plots of a results directory.

    Unfinished jobs (values of the last round reached), failed jobs and a directory held by a
    live run are flagged here and in report.md.

    Example: fedattr report results/demo --to docs/results/demo.md

    Breadth study: fedattr report --breadth results/breadth_claim results/breadth_dataset ... --to docs/results/breadth.md

    Scaling: fedattr report --scaling results/scale100 results/scale500_sampled --bench concurrency.json --to docs/results/scaling.md

    Defences: fedattr report --defenses results/defenses_new --holder results/defenses_holder --to docs/results/defenses.md
    """
    from fedattr.report import STATS_JSON, summarize, write_page, write_report

    if defenses or holder is not None:
        _defenses_page(results_dir, more_dirs or [], to, holder, defenses, breadth or scaling or bench is not None)
        return
    if scaling:
        _scaling_page(results_dir, more_dirs or [], to, bench, breadth)
        return
    if bench is not None:
        raise UserError("--bench is read only with --scaling")
    if breadth or more_dirs:
        _breadth_page(results_dir, more_dirs or [], to, breadth)
        return
    if to is not None:
        path = write_page(results_dir, to, command="fedattr " + shlex.join(sys.argv[1:]))
    else:
        path = write_report(results_dir)
    summary = summarize(results_dir)
    if json_:
        print_json({"report": str(path), "summary": summary.as_dict()})
        return
    if summary.kind == "sweep":
        print_sweep(summary)
    else:
        print_summary(summary)
    out().print(f"report: {escape(str(path))}")
    if to is None:
        out().print(f"statistics: {escape(str(Path(results_dir) / STATS_JSON))}")


def _breadth_page(first: Path, more: list[Path], to: Optional[Path], breadth: bool) -> None:
    """``report --breadth``: the breadth study's page from its cell directories."""
    from fedattr.report.breadth import write_breadth_page

    if not breadth:
        raise UserError(f"several results directories ({first}, {more[0]}, ...) are read only with --breadth")
    if to is None:
        raise UserError("--breadth writes one page: name it with --to PAGE.md (e.g. docs/results/breadth.md)")
    path = write_breadth_page([first, *more], to, command="fedattr " + shlex.join(sys.argv[1:]))
    out().print(f"report: {escape(str(path))}")


def _scaling_page(first: Path, more: list[Path], to: Optional[Path], bench: Optional[Path], breadth: bool) -> None:
    """``report --scaling``: the scaling page from scale runs and the concurrency benchmark."""
    from fedattr.report.scaling import write_scaling_page

    if breadth:
        raise UserError("--scaling and --breadth write different pages: choose one")
    if to is None:
        raise UserError("--scaling writes one page: name it with --to PAGE.md (e.g. docs/results/scaling.md)")
    for d in (first, *more):
        if not d.is_dir():
            raise UserError(f"results directory not found: {d}")
    path = write_scaling_page([first, *more], to, bench, command="fedattr " + shlex.join(sys.argv[1:]))
    out().print(f"report: {escape(str(path))}")


def _defenses_page(first: Path, more: list[Path], to: Optional[Path], holder: Optional[Path], defenses: bool,
                   other_page: bool) -> None:
    """``report --defenses``: the defences page from a defences run and its genuine-holder run."""
    from fedattr.report.defenses import write_defenses_page

    if not defenses:
        raise UserError("--holder is read only with --defenses")
    if other_page:
        raise UserError("--defenses writes its own page: it takes no --breadth, --scaling or --bench")
    if more:
        raise UserError(f"--defenses reads one results directory (and --holder HOLDER_DIR); got also {more[0]}")
    if to is None:
        raise UserError("--defenses writes one page: name it with --to PAGE.md (e.g. docs/results/defenses.md)")
    # rebuilt from the options (not sys.argv): the page names the command that writes it, however invoked
    command = shlex.join(["fedattr", "report", "--defenses", str(first), *(["--holder", str(holder)] if holder else []),
                          "--to", str(to)])
    path = write_defenses_page(first, holder, to, command=command)
    out().print(f"report: {escape(str(path))}")


@user_errors
def stats(results_dir: Annotated[Path, _DIR],
          controls_dir: Annotated[Optional[Path], typer.Argument(
              help="The same regime's controls (and honest arm): adds their table and the attack "
                   "against each control, paired by seed.", show_default=False)] = None,
          evaluator: Annotated[Optional[list[str]], typer.Option(
              "--evaluator", "-e", help="Only this evaluator; repeatable (default: every evaluator).")] = None,
          machine: Annotated[bool, typer.Option(
              "--machine/--no-machine", help="Also print this machine's CPU count and matmul rate.")] = True) -> None:
    """Print the claim statistics of a results directory (and its controls).

    Per-seed inflation with t and bootstrap CIs, Wilcoxon p and the smallest p attainable at that
    many seeds, positive seeds, smallest detectable effect.

    A sweep directory gives one row per (point, arm, evaluator).

    Example: fedattr stats results/claim results/claim_controls
    """
    from fedattr.report import is_sweep, load_results
    from fedattr.report.claim_stats import claim_table, control_table, format_control_table, format_table, sweep_table
    from fedattr.report.machine import machine as this_machine

    evs = list(evaluator) if evaluator else None
    con = out()
    if is_sweep(results_dir):
        if controls_dir is not None:
            raise UserError(f"{results_dir} is a sweep directory: it takes no CONTROLS_DIR")
        con.print(format_table(sweep_table(results_dir, evs)), markup=False, highlight=False)
    else:
        res = load_results(results_dir)
        ctl = load_results(controls_dir) if controls_dir is not None else None
        con.print(format_table(claim_table(res, evs, reference=ctl)),
                  markup=False, highlight=False)
        if ctl is not None:
            con.print(f"\nControls ({escape(str(controls_dir))}):\n")
            con.print(format_table(claim_table(ctl, evs)), markup=False, highlight=False)
            con.print("\nAttack against each control, paired by seed:\n")
            con.print(format_control_table(control_table(res, ctl, evs)), markup=False, highlight=False)
    if machine:
        con.print("\n" + this_machine().line(), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``stats`` commands to ``app``."""
    app.command("report")(report)
    app.command("stats")(stats)
