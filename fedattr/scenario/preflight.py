"""Checks a scenario must pass before any process starts.

Everything that can be known on the launching machine is checked here, so that a bad value is
one clear :class:`~fedattr.core.errors.UserError` (exit status 2) instead of a failure inside Flower
30-75 s later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedattr.core.errors import UserError


def registries() -> dict[str, list[str]]:
    """Every registry name a scenario may use (``fedattr.scenario.components.registries``)."""
    from fedattr.scenario.components import registries as _registries

    return _registries()


def check_scenario(scenario: Any, data: bool = True) -> None:
    """Every check below, in order: registries and parameters, evaluator limits, resources, data.

    ``data=False`` skips loading the dataset and cutting the partitions (the slowest check).
    """
    check_registries(scenario)
    check_evaluator_limits(scenario)
    check_resources(scenario)
    if data:
        check_data(scenario)


def check_registries(scenario: Any) -> None:
    """Unknown registry names and bad parameters of every component fail here, in one message."""
    from fedattr.scenario.components import check_components

    problems = check_components(scenario)
    if problems:
        raise UserError("invalid scenario components:\n" + "\n".join(f"  - {p}" for p in problems))


def check_evaluator_limits(scenario: Any) -> None:
    """Exact evaluators enumerate all 2^n coalitions: refuse more clients than they accept."""
    from fedattr.evaluators import make_evaluator

    n = scenario.num_clients
    for i, ev in enumerate(scenario.attribution.evaluators):
        evaluator = make_evaluator(ev.name, **ev.params)
        limit = getattr(evaluator, "max_players", None)
        exact = getattr(evaluator, "method", "exact") == "exact"
        if limit is not None and exact and n > limit:
            raise UserError(
                f"attribution.evaluators[{i}] ({ev.name!r}) enumerates all 2^n coalitions and accepts at most "
                f"{limit} clients; the scenario has num_clients = {n}. Use a Monte-Carlo evaluator (tmc, gtg, "
                f"banzhaf_msr) or fewer clients")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_resources(scenario: Any, cpu_count: int | None = None, cuda: bool | None = None) -> None:
    """CPUs and GPUs the scenario reserves against what this machine has."""
    rt = scenario.runtime
    cpus = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    if rt.client_cpus > cpus:
        raise UserError(f"runtime.client_cpus = {rt.client_cpus:g} but this machine has {cpus} CPU(s): no client "
                        f"could be scheduled; set runtime.client_cpus <= {cpus}")
    wants_gpu = rt.client_gpus > 0 or rt.device == "cuda"
    if wants_gpu and not (_cuda_available() if cuda is None else cuda):
        what = f"runtime.client_gpus = {rt.client_gpus:g}" if rt.client_gpus > 0 else "runtime.device = 'cuda'"
        raise UserError(f"{what} but torch sees no CUDA GPU on this machine; use runtime.device = 'cpu' (or "
                        "'auto') and runtime.client_gpus = 0")
    if rt.min_clients is not None and rt.min_clients > scenario.num_clients:
        raise UserError(f"runtime.min_clients = {rt.min_clients} is more than num_clients = {scenario.num_clients}")


def check_data(scenario: Any) -> None:
    """The dataset is there, its splits fit, and every seed's partition can be cut.

    Loads the dataset (offline and missing: the data module's UserError naming the directory)
    and cuts the client partitions of every distinct partition seed, so that a split that cannot
    meet ``partition.min_partition_size`` fails here and not inside a client.
    """
    from fedattr.learning.task import Job, job_spec

    arm = scenario.arms[0]
    seeds = {scenario.partition.seed if scenario.partition.seed is not None else s: s for s in scenario.seeds}
    for seed in seeds.values():
        job = Job(job_spec(scenario, arm, seed, job_id="preflight"), data_dir=scenario.data.data_dir)
        sizes = [len(job.partition(pid)[1]) for pid in range(scenario.num_clients)]
        empty = [pid for pid, n in enumerate(sizes) if n == 0]
        if empty:
            raise UserError(f"seed {seed}: client partition(s) {empty} get no examples (pool of "
                            f"{len(job.splits().y_pool)} over {scenario.num_clients} clients, partition "
                            f"{scenario.partition.kind}); use more data (data.pool_size) or fewer clients")


def check_out_dir(path: str | Path) -> Path:
    """A results directory that can be created and written; return it resolved (and created).

    A file in its place, a file among its parents, or a directory that cannot be created or
    written is one UserError naming the path.
    """
    out = Path(path).expanduser()
    try:
        out = out.resolve()
    except OSError as exc:
        raise UserError(f"--out {path}: {exc.strerror or exc}") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose a directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a directory")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fedattr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create or write the results directory "
                        f"({exc.strerror or exc})") from None
    return out
