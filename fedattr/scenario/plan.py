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

from fedattr.core.errors import UserError
from fedattr.protocol import AttackSpec, JobSpec, PlanEntry
from fedattr.results.store import atomic_write_json, job_name, read_json
from fedattr.scenario.schema import ArmSpec, Scenario


def job_spec(scenario: Scenario, arm: ArmSpec, seed: int, *, job_id: str) -> JobSpec:
    """The job spec of one (arm, seed) of a validated scenario; it names no local path."""
    return JobSpec(
        job_id=job_id,
        scenario_name=scenario.name,
        arm=arm.name,
        seed=int(seed),
        num_clients=scenario.num_clients,
        attacker_ids=list(scenario.attacker_ids),
        rounds=scenario.rounds,
        model=scenario.model,
        data=scenario.data.model_copy(update={"data_dir": None}),
        partition=scenario.partition,
        train=scenario.train,
        attack=AttackSpec(name=arm.attack, params=dict(arm.params), start_round=arm.start_round,
                          counterfactual=arm.counterfactual),
        device=scenario.runtime.device,
    )


def plan_entry(scenario: Scenario, arm: ArmSpec, seed: int, *, job_dir: str | Path,
               job_id: str) -> PlanEntry:
    """One job of a plan: its spec plus the server-side settings of the scenario."""
    return PlanEntry(
        dir=str(job_dir),
        spec=job_spec(scenario, arm, seed, job_id=job_id),
        attribution=scenario.attribution,
        aggregation=scenario.aggregation,
        detectors=list(scenario.detectors),
        min_clients=scenario.runtime.min_clients,
        round_timeout_s=scenario.runtime.round_timeout_s,
        server_data_dir=scenario.data.data_dir,
        sampling=scenario.sampling,
    )


def inside(path: Path, base: Path, what: str) -> Path:
    """``path``, refused (UserError) unless, resolved, it lies strictly inside ``base``."""
    resolved, root = path.resolve(), base.resolve()
    if resolved == root or root not in resolved.parents:
        raise UserError(f"{what} {resolved} would lie outside {root}; results stay under the "
                        f"chosen directory")
    return path


def default_results_dir(scenario: Scenario, anchor: Path | None = None) -> Path:
    """``<output_dir>/<name>-<UTC time>``, absolute; a relative ``output_dir`` is taken relative
    to ``anchor`` (default: the current directory; the ServerApp passes the home directory, since
    its working directory is the SuperLink's). The result always lies inside ``output_dir``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(scenario.output_dir).expanduser()
    if not base.is_absolute():
        base = (anchor or Path.cwd()) / base
    out = inside(base / f"{scenario.name}-{stamp}", base,
                 f"the results directory of scenario {scenario.name!r}")
    return out.resolve()


def scenario_jobs(scenario: Scenario, results_dir: Path) -> list[dict[str, Any]]:
    """One plan entry (``fedattr.protocol.PlanEntry``, as JSON) per (arm, seed) of ``scenario``.

    Seeds are outermost so that the arms of a seed run together. No cache or data path is part
    of a job: each node finds its own. Every job directory lies inside ``results_dir``.
    """
    jobs = []
    for seed in scenario.seeds:
        for arm in scenario.arms:
            name = job_name(arm.name, seed)
            job_dir = inside(results_dir / "jobs" / name, results_dir, f"job directory of {name!r}")
            entry = plan_entry(scenario, arm, seed, job_dir=job_dir,
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
