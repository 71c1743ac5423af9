"""Plans: the list of (arm, seed) jobs one ServerApp run executes, and where each writes.

A plan is a JSON file written before the run. The ServerApp executes its jobs back to back over
the same connected nodes, so a sweep pays Flower's start-up (SuperLink, Ray, actors) once. A job
whose ``summary.json`` exists is skipped, so an interrupted plan resumes where it stopped.
"""

from __future__ import annotations

import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

from fedattr.results.store import atomic_write_json, job_name, read_json
from fedattr.learning.task import plan_entry


def default_results_dir(scenario: Any, anchor: Path | None = None) -> Path:
    """``<output_dir>/<name>-<UTC time>``, absolute; a relative ``output_dir`` is taken relative
    to ``anchor`` (default: the current directory; the ServerApp passes the home directory, since
    its working directory is the SuperLink's)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(scenario.output_dir).expanduser()
    if not base.is_absolute():
        base = (anchor or Path.cwd()) / base
    return (base / f"{scenario.name}-{stamp}").resolve()


def scenario_jobs(scenario: Any, results_dir: Path) -> list[dict[str, Any]]:
    """One plan entry (``fedattr.protocol.PlanEntry``, as JSON) per (arm, seed) of ``scenario``.

    Seeds are outermost so that the arms of a seed run together. No cache or data path is part
    of a job: each node finds its own.
    """
    jobs = []
    for seed in scenario.seeds:
        for arm in scenario.arms:
            name = job_name(arm.name, seed)
            entry = plan_entry(scenario, arm, seed, job_dir=results_dir / "jobs" / name,
                               job_id=f"{results_dir.name}/{name}")
            jobs.append(entry.model_dump(mode="json"))
    return jobs


def interleave(job_lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The jobs of several sweep points, first job of every point, then the second, ...

    Each point's list is seed-major, so a sweep stopped early has every point at the same number
    of seeds instead of the first points complete and the last ones empty.
    """
    return [j for group in zip_longest(*job_lists) for j in group if j is not None]


def write_plan(path: Path, jobs: list[dict[str, Any]], num_clients: int) -> Path:
    """Write a plan for ``num_clients`` nodes; every job must use that many clients."""
    bad = [j["spec"]["job_id"] for j in jobs if int(j["spec"]["num_clients"]) != num_clients]
    if bad:
        raise ValueError(f"jobs {bad} do not use {num_clients} clients; one plan runs on one set of nodes")
    atomic_write_json(path, {"num_clients": num_clients, "jobs": jobs})
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Load a plan written by :func:`write_plan` (validate it with ``fedattr.protocol.Plan``)."""
    return read_json(path)
