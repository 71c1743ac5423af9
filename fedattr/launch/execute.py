"""Execute a scenario or a sweep: write its plan and records, run the plan, finish its records.

This is what ``fedattr run`` and ``fedattr sweep`` call. A run or a whole sweep is ONE Flower
simulation (see :mod:`fedattr.launch.simulation`); re-running into an existing results directory
resumes it.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedattr.errors import UserError
from fedattr.launch.generator import train_generator
from fedattr.launch.simulation import Progress, execute_plan
from fedattr.plan import default_cache_dir, default_results_dir, scenario_jobs, write_plan
from fedattr.preflight import check_registries, registries
from fedattr.results import atomic_write_json


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
            "command": command, "cpu_count": os.cpu_count()}


def _finish_environment(results_dir: Path, env: dict[str, Any], timings: dict[str, float], started: str) -> None:
    env.update(timings)
    env["started"] = started
    env["finished"] = datetime.now(timezone.utc).isoformat()
    atomic_write_json(results_dir / "environment.json", env)


def run_scenario(scenario: Any, out_dir: str | Path | None = None, progress: Progress | None = None,
                 scenario_path: str | Path | None = None) -> Path:
    """Run every arm and seed of ``scenario`` in one Flower simulation; return the results directory.

    Re-running into an existing results directory resumes: finished jobs are kept.
    """
    check_registries(scenario)
    results_dir = Path(out_dir).expanduser().resolve() if out_dir else default_results_dir(scenario)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat()
    atomic_write_json(results_dir / "scenario.json", scenario.model_dump(mode="json"))
    env = _environment(" ".join(sys.argv))
    env["seeds"] = list(scenario.seeds)
    env["scenario_path"] = str(Path(scenario_path).resolve()) if scenario_path else None
    jobs = scenario_jobs(scenario, results_dir, default_cache_dir())
    plan_path = write_plan(results_dir / "plan.json", jobs, scenario.num_clients)
    timings = execute_plan(plan_path, jobs, scenario.num_clients, scenario.runtime, results_dir / "logs", progress)
    _finish_environment(results_dir, env, timings, started)
    return results_dir


def run_sweep(scenario: Any, points: list[tuple[dict[str, str], Any]], out_dir: str | Path | None = None,
              progress: Progress | None = None, grid: dict[str, list[str]] | None = None) -> Path:
    """Run every grid point of a sweep in ONE Flower simulation (start-up paid once)."""
    if not points:
        raise UserError("the sweep grid is empty")
    sizes = {p.num_clients for _, p in points}
    if len(sizes) != 1:
        raise UserError(f"a sweep runs on one set of nodes: every point needs the same num_clients, got {sorted(sizes)}")
    for _, p in points:
        check_registries(p)
    sweep_dir = (Path(out_dir).expanduser().resolve() if out_dir
                 else default_results_dir(scenario).with_name(default_results_dir(scenario).name + "-sweep"))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat()
    cache = default_cache_dir()
    jobs, entries = [], []
    for i, (overrides, point) in enumerate(points):
        pdir = sweep_dir / "points" / f"p{i:03d}"
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(pdir / "scenario.json", point.model_dump(mode="json"))
        jobs += scenario_jobs(point, pdir, cache)
        entries.append({"overrides": overrides, "dir": f"points/p{i:03d}"})
    plan_path = write_plan(sweep_dir / "plan.json", jobs, sizes.pop())
    # Written first so that an interrupted sweep can still be reported from what it finished.
    atomic_write_json(sweep_dir / "sweep.json", {"grid": grid or {}, "points": entries, "wall_s": None,
                                                 "startup_s": None, "jobs": len(jobs), "started": started})
    timings = execute_plan(plan_path, jobs, points[0][1].num_clients, scenario.runtime, sweep_dir / "logs", progress)
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
