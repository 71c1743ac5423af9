"""The scaling page: attribution's cost against training at scale, and concurrent jobs.

``fedattr report --scaling DIR [DIR ...] [--bench JSON] --to docs/results/scaling.md`` reads each
results directory's round records (``timings``) and ``environment.json`` and, optionally, the
JSON that ``python -m benchmarks.concurrency --json`` writes.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from fedattr.core.errors import UserError
from fedattr.report.costs import RoundCost, cost_ratios, round_costs
from fedattr.report.markdown import generated_lines
from fedattr.report.reader import Environment, read_environment, read_scenario
from fedattr.report.render import md_table
from fedattr.results.store import atomic_write_text

__all__ = ["TARGET_RATIO", "ScaleRun", "scale_run", "scaling_markdown", "write_scaling_page"]

#: the target: attribution at most this many times the round's training time (rounds 2 onwards)
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class ScaleRun:
    """One results directory's size, sampling, per-round costs and mean cost ratios (rounds 2+)."""

    path: Path
    name: str
    num_clients: int
    fraction_train: float | None
    rounds: int
    evaluators: list[str]
    environment: Environment
    costs: list[RoundCost]
    ratios: dict[str, float]

    @property
    def overall(self) -> float | None:
        """Mean attribution / training over rounds 2+ (all evaluators), None without such rounds."""
        return self.ratios.get("all evaluators")


def scale_run(results_dir: str | Path) -> ScaleRun:
    """Read one results directory for the scaling page."""
    path = Path(results_dir)
    scenario = read_scenario(path)
    costs = round_costs(path)
    ratios = {k: mean(v) for k, v in cost_ratios(costs).items()}
    sampling = getattr(scenario, "sampling", None)
    fraction = getattr(sampling, "fraction_train", None) if sampling is not None else None
    return ScaleRun(path, scenario.name, scenario.num_clients, fraction, scenario.rounds,
                    [e.name for e in scenario.attribution.evaluators], read_environment(path), costs, ratios)


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _run_section(run: ScaleRun) -> list[str]:
    env = run.environment
    sampled = (f"{run.fraction_train:g} of them sampled each round" if run.fraction_train not in (None, 1.0)
               else "every client every round")
    verdict = ("no round past the first recorded" if run.overall is None else
               f"**{run.overall:.2f}x** training (target <= {TARGET_RATIO:g}x: "
               f"{'met' if run.overall <= TARGET_RATIO else 'missed'})")
    lines = [f"### {run.name}", "",
             f"- {run.num_clients} clients, {sampled}; {run.rounds} rounds; evaluators: {', '.join(run.evaluators)}",
             f"- results: `{run.path}`; produced at commit {env.commit or 'not recorded'} by `{env.command or 'not recorded'}`",
             f"- wall time {_num(env.wall_s, '.1f')} s (start-up {_num(env.startup_s, '.1f')} s); run's machine: "
             f"{env.cpu_count or '?'} CPUs, matmul rate {_num(env.matmul_gflops, '.1f')} GFLOP/s, load average "
             f"{_num(env.load_average, '.1f')} when it finished",
             f"- attribution / training, rounds 2 onwards (mean over jobs and rounds): {verdict}", ""]
    evaluators = [e for e in run.ratios if e != "all evaluators"]
    lines += md_table(["evaluator", "attribution / training (rounds 2+)"],
                      [[e, f"{run.ratios[e]:.2f}x"] for e in [*evaluators, "all evaluators"] if e in run.ratios])
    rows = [[c.job, str(c.round), str(c.participants), f"{c.train_s:.2f}", f"{c.attribution_s:.2f}",
             *(f"{c.evaluators_s.get(e, 0.0):.2f}" for e in evaluators), f"{c.ratio:.2f}x"]
            for c in run.costs]
    lines += md_table(["job", "round", "participants", "train s", "attribution s", *(f"{e} s" for e in evaluators),
                       "ratio"], rows)
    return lines


def _bench_section(bench: dict) -> list[str]:
    seq, conc = bench["sequential"], bench["concurrent"]
    lines = ["## Concurrent jobs (`python -m benchmarks.concurrency`)", "",
             f"- study: `{bench.get('scenario')}` with {' '.join(f'`--set {s}`' for s in bench.get('overrides', []))}: "
             f"{bench.get('jobs')} jobs, {bench.get('rounds')} rounds; {bench.get('cpu_count')} CPUs; load average "
             f"{bench['loadavg_before'][0]:.1f} before, {bench['loadavg_after'][0]:.1f} after", ""]
    lines += md_table(["run", "wall s", "start-up s", "jobs' own work s", "flwr runs"],
                      [[name, f"{r['wall_s']:.1f}", f"{r.get('startup_s') or 0:.1f}", f"{r['work_s']:.1f}", str(r['runs'])]
                       for name, r in (("sequential", seq), (f"--jobs {conc['jobs_at_once']}", conc))])
    lines += [f"- speed-up (sequential wall / concurrent wall): **{bench['speedup']:.2f}x**",
              f"- round records equal to the sequential run's (every field but timings): "
              f"**{'yes' if bench['equal'] else 'NO'}**",
              "- where the time goes, and the speed-up modelled for more cores: [docs/scaling.md](../scaling.md), "
              "\"Concurrent jobs and several machines\"", ""]
    return lines


def scaling_markdown(runs: list[ScaleRun], bench: dict | None, header: list[str]) -> str:
    """The page's markdown."""
    lines = ["# Scaling: attribution against training, and concurrent jobs", "", *header,
             "How to read it: a round's training time is the Flower train round's wall time (the clients' "
             "local training through Flower); attribution is every evaluator's time on that round's game. "
             "Round 1 includes the clients' start-up and is left out of the ratios. The recipe (client "
             "sampling, `--jobs`, several machines) is in [docs/scaling.md](../scaling.md).", ""]
    if runs:
        lines += ["## Attribution cost at scale", ""]
        lines += md_table(["study", "clients", "sampled / round", "rounds", "wall s", "attribution / training",
                           f"<= {TARGET_RATIO:g}x"],
                          [[r.name, str(r.num_clients), "all" if r.fraction_train in (None, 1.0) else f"{r.fraction_train:g}",
                            str(r.rounds), _num(r.environment.wall_s, ".1f"), _num(r.overall) + "x",
                            "n/a" if r.overall is None else ("yes" if r.overall <= TARGET_RATIO else "no")]
                           for r in runs])
        for r in runs:
            lines += _run_section(r)
    if bench is not None:
        lines += _bench_section(bench)
    return "\n".join(lines).rstrip() + "\n"


def write_scaling_page(dirs: list[Path], page: Path, bench_json: Path | None = None, command: str | None = None) -> Path:
    """Write the scaling page ``page`` from results directories and the concurrency benchmark's JSON."""
    page = Path(page)
    if page.suffix != ".md":
        raise UserError(f"--to must name a markdown file (….md): {page}")
    runs = [scale_run(d) for d in dirs]
    bench = None
    if bench_json is not None:
        try:
            bench = json.loads(Path(bench_json).read_text(encoding="utf-8"))
            bench["sequential"], bench["concurrent"], bench["speedup"]  # noqa: B018 - the keys the page reads
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--bench {bench_json}: not a benchmarks.concurrency JSON ({exc})") from None
    header = generated_lines(command or "fedattr report --scaling " + shlex.join(map(str, dirs)), page) + [""]
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(page, scaling_markdown(runs, bench, header))
    return page
