"""Execute a scenario or a sweep: write its plan and records, run the plan, finish its records.

This is what ``fedattr run`` and ``fedattr sweep`` call. A run or a whole sweep is ONE Flower
simulation (see :mod:`fedattr.launch.simulation`), or with ``concurrency`` N (``--jobs N``) N
concurrent simulations on one SuperLink; re-running into an existing results directory resumes
it. The directory is owned for the run's duration (:mod:`fedattr.launch.ownership`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedattr.core.errors import UserError
from fedattr.core.provenance import git_commit
from fedattr.launch.train_generator import train_generator
from fedattr.launch.ownership import check_resume, own_results_dir
from fedattr.launch.simulation import Progress, check_concurrency, check_ray_cluster, execute_plan
from fedattr.scenario.plan import default_results_dir, interleave, scenario_jobs, write_plan
from fedattr.scenario import Scenario
from fedattr.scenario.checks import check_out_dir, check_scenario, registries
from fedattr.results.store import atomic_write_json, job_state


def _environment(command: str) -> dict[str, Any]:
    from importlib import metadata

    pkgs = {}
    for name in ("fedattr", "flwr", "flwr-datasets", "datasets", "torch", "torchvision", "numpy", "scipy",
                 "scikit-learn", "ray", "pydantic", "mlxtend"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": pkgs,
            "command": command, "commit": git_commit(Path(__file__).parent), "cpu_count": os.cpu_count()}


def _finish_environment(results_dir: Path, env: dict[str, Any], timings: dict[str, float], started: str) -> None:
    from fedattr.report.machine import matmul_rate

    env.update(timings)
    env["started"] = started
    env["finished"] = datetime.now(timezone.utc).isoformat()
    # The machine as the run left it: its timings are read against these.
    env["matmul_gflops"] = matmul_rate(seconds=0.25)
    env["load_average"] = os.getloadavg()[0]
    atomic_write_json(results_dir / "environment.json", env)


def _damaged(jobs: list[dict[str, Any]]) -> None:
    """Refuse to resume over a damaged job file; clear failed jobs' summaries so they are redone."""
    for j in jobs:
        state = job_state(j["dir"])
        if state.status == "damaged":
            raise UserError(f"cannot resume: damaged results file: {state.detail}")
        if state.status == "failed":
            summary = Path(j["dir"]) / "summary.json"
            summary.replace(summary.with_name("summary.failed.json"))


def _results_dir(scenario: Scenario, out_dir: str | Path | None, suffix: str = "") -> Path:
    if out_dir:
        return check_out_dir(out_dir)
    default = default_results_dir(scenario)
    return check_out_dir(default.with_name(default.name + suffix))


@dataclass
class PreparedRun:
    """A results directory owned for one scenario run, its plan written (see :func:`prepared_run`)."""

    results_dir: Path
    tag: str
    jobs: list[dict[str, Any]]
    plan_path: Path
    environment: dict[str, Any]


@contextmanager
def prepared_run(scenario: Scenario, out_dir: str | Path | None, scenario_path: str | Path | None,
                 force: bool) -> Iterator[PreparedRun]:
    """What every launcher does around running a plan: pre-flight checks, own the directory,
    refuse a resume of other settings, write scenario.json and plan.json, and on success write
    environment.json with the timings the launcher puts in ``run.environment``."""
    check_scenario(scenario)
    results_dir = _results_dir(scenario, out_dir)
    resolved = scenario.model_dump(mode="json")
    with own_results_dir(results_dir) as tag:
        check_resume(results_dir, {"scenario.json": resolved}, force)
        started = datetime.now(timezone.utc).isoformat()
        atomic_write_json(results_dir / "scenario.json", resolved)
        env = _environment(" ".join(sys.argv))
        env["seeds"] = list(scenario.seeds)
        env["scenario_path"] = str(Path(scenario_path).resolve()) if scenario_path else None
        jobs = scenario_jobs(scenario, results_dir)
        _damaged(jobs)
        plan_path = write_plan(results_dir / "plan.json", jobs, scenario.num_clients)
        run = PreparedRun(results_dir, tag, jobs, plan_path, env)
        yield run
        _finish_environment(results_dir, env, {}, started)


def run_scenario(scenario: Scenario, out_dir: str | Path | None = None, progress: Progress | None = None,
                 scenario_path: str | Path | None = None, force: bool = False, concurrency: int = 1) -> Path:
    """Run every arm and seed of ``scenario`` in one Flower simulation; return the results directory.

    ``concurrency`` N > 1 runs up to N jobs at once, as N Flower runs on one SuperLink
    (:func:`fedattr.launch.simulation.execute_plan`); each job's results are those of a
    sequential run.

    Re-running into an existing results directory resumes it: finished jobs are kept, failed and
    unfinished ones are run again. A directory of other settings is refused unless ``force``
    (then its old results move to ``superseded/``). Every check that can fail before start-up
    runs first (:func:`fedattr.scenario.checks.check_scenario`).
    """
    check_concurrency(concurrency, scenario.runtime)  # before anything is written
    check_ray_cluster(scenario.runtime)
    with prepared_run(scenario, out_dir, scenario_path, force) as run:
        run.environment.update(execute_plan(run.plan_path, run.jobs, scenario.num_clients, scenario.runtime,
                                            run.results_dir / "logs", progress, tag=run.tag,
                                            concurrency=concurrency))
    return run.results_dir


def run_sweep(scenario: Scenario, points: list[tuple[dict[str, str], Scenario]], out_dir: str | Path | None = None,
              progress: Progress | None = None, grid: dict[str, list[str]] | None = None,
              force: bool = False, concurrency: int = 1) -> Path:
    """Run every grid point of a sweep in ONE Flower simulation (start-up paid once), or with
    ``concurrency`` N > 1 in N concurrent Flower runs on one SuperLink."""
    check_concurrency(concurrency, scenario.runtime)
    check_ray_cluster(scenario.runtime)
    if not points:
        raise UserError("the sweep grid is empty")
    sizes = {p.num_clients for _, p in points}
    if len(sizes) != 1:
        raise UserError(f"a sweep runs on one set of nodes: every point needs the same num_clients, got {sorted(sizes)}")
    for i, (overrides, p) in enumerate(points):
        try:
            check_scenario(p, data=i == 0 or p.data != points[0][1].data or p.partition != points[0][1].partition)
        except UserError as exc:
            where = ", ".join(f"{k}={v}" for k, v in overrides.items())
            raise UserError(f"sweep point {i} ({where}): {exc}") from None
    sweep_dir = _results_dir(scenario, out_dir, suffix="-sweep")
    resolved = {f"points/p{i:03d}/scenario.json": point.model_dump(mode="json") for i, (_, point) in enumerate(points)}
    with own_results_dir(sweep_dir) as tag:
        check_resume(sweep_dir, resolved, force)
        started = datetime.now(timezone.utc).isoformat()
        per_point, entries = [], []
        for i, (overrides, point) in enumerate(points):
            pdir = sweep_dir / "points" / f"p{i:03d}"
            pdir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(pdir / "scenario.json", point.model_dump(mode="json"))
            per_point.append(scenario_jobs(point, pdir))
            entries.append({"overrides": overrides, "dir": f"points/p{i:03d}"})
        jobs = interleave(per_point)
        _damaged(jobs)
        plan_path = write_plan(sweep_dir / "plan.json", jobs, sizes.pop())
        # Written first so that an interrupted sweep can still be reported from what it finished.
        atomic_write_json(sweep_dir / "sweep.json", {"grid": grid or {}, "points": entries, "wall_s": None,
                                                     "startup_s": None, "jobs": len(jobs), "started": started})
        timings = execute_plan(plan_path, jobs, points[0][1].num_clients, scenario.runtime, sweep_dir / "logs",
                               progress, tag=tag, concurrency=concurrency)
        env = _environment(" ".join(sys.argv))
        for e, (_, point) in zip(entries, points):
            _finish_environment(sweep_dir / e["dir"], dict(env, seeds=list(point.seeds)), timings, started)
        atomic_write_json(sweep_dir / "sweep.json", {
            "grid": grid or {}, "points": entries, "wall_s": timings["wall_s"], "startup_s": timings["startup_s"],
            "jobs": len(jobs), "started": started, "finished": datetime.now(timezone.utc).isoformat(),
        })
        atomic_write_json(sweep_dir / "environment.json", dict(env, **timings))
    return sweep_dir


# The CLI reaches every launch entry point through this module.
__all__ = ["run_scenario", "run_sweep", "registries", "train_generator"]
