"""Plans: the list of (arm, seed) jobs one ServerApp run executes, and where each writes.

A plan is a JSON file written before the run. The ServerApp executes its jobs back to back over
the same connected nodes, so a sweep pays Flower's start-up (SuperLink, Ray, actors) once. A job
whose ``summary.json`` exists is skipped, so an interrupted plan resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fedattr.results import atomic_write_json, job_name, read_json
from fedattr.task import job_spec


def default_cache_dir() -> Path:
    """Where trained generators are cached (``FEDATTR_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("FEDATTR_CACHE_DIR", Path.home() / ".cache" / "fedattr" / "generators")).resolve()


def default_results_dir(scenario: Any) -> Path:
    """``<output_dir>/<name>-<UTC time>``, absolute."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return (Path(scenario.output_dir).expanduser() / f"{scenario.name}-{stamp}").resolve()


def scenario_jobs(scenario: Any, results_dir: Path, cache_dir: Path) -> list[dict[str, Any]]:
    """One plan entry per (arm, seed) of ``scenario``, seeds outermost so arms of a seed run together."""
    jobs = []
    attribution = scenario.attribution.model_dump()
    for seed in scenario.seeds:
        for arm in scenario.arms:
            name = job_name(arm.name, seed)
            jobs.append({
                "dir": str(results_dir / "jobs" / name),
                "spec": job_spec(scenario, arm, seed, job_id=f"{results_dir.name}/{name}", cache_dir=str(cache_dir)),
                "attribution": attribution,
                "aggregation": scenario.aggregation.model_dump(),
            })
    return jobs


def write_plan(path: Path, jobs: list[dict[str, Any]], num_clients: int) -> Path:
    """Write a plan for ``num_clients`` nodes; every job must use that many clients."""
    bad = [j["spec"]["job_id"] for j in jobs if int(j["spec"]["num_clients"]) != num_clients]
    if bad:
        raise ValueError(f"jobs {bad} do not use {num_clients} clients; one plan runs on one set of nodes")
    atomic_write_json(path, {"num_clients": num_clients, "jobs": jobs})
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Load a plan written by :func:`write_plan`."""
    return read_json(path)
