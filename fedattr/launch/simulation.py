"""Flower's simulation runtime: a private SuperLink, ``flwr run`` per plan, progress.

Each launch starts its own simulation SuperLink (own port, project-local ``FLWR_HOME``, Flower
offline), submits the app with ``flwr run`` and a plan naming every job, follows progress through
the jobs' ``rounds.jsonl``, and ends the SuperLink's whole process family by PID, whatever happens.

With ``concurrency`` N > 1 the unfinished jobs are dealt into N plans (:func:`deal_jobs`), each
submitted by its own ``flwr run`` to the same SuperLink: its SuperExec starts one
``flwr-simulation`` process per run, each with its own Ray instance and ClientApp actors, so the
runs execute at once.
The machine's CPUs are split between them through Flower's ``init-args-num-cpus`` (Ray's
resources); nothing here schedules jobs beyond submitting the runs and following them.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fedattr.core.errors import NoSpaceError, RunFailedError, UserError
from fedattr.launch.follow import Progress, RoundFollower, emit
from fedattr.launch.processes import (bin_path, end_process_group, end_tagged_processes, free_port,
                                      project_root, tagged_env)
from fedattr.launch.runconfig import run_config_args
from fedattr.protocol import RecordError, read_rounds
from fedattr.results.store import job_state
from fedattr.scenario.plan import write_plan


@contextmanager
def simulation_superlink(flwr_home: Path, log_path: Path, tag: str | None = None,
                         extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a simulation SuperLink on a free loopback port; yield (connection name, env); end it by PID.

    ``tag`` marks every process of the launch (a fresh one when None); ``extra_env`` is added to
    the environment of the SuperLink and so of every simulation process it starts (e.g.
    ``RAY_ADDRESS``).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tag = tag or uuid.uuid4().hex
    env = {**tagged_env(tag, flwr_home), **(extra_env or {})}
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedattr"\n\n[superlink.fedattr]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    cmd = [bin_path("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"]
    log_fh = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
    (flwr_home / "superlink.pid").write_text(f"{proc.pid}\n")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f"flower-superlink exited with status {proc.returncode}; see {log_path}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise UserError(f"flower-superlink did not open 127.0.0.1:{port} within 60 s; see {log_path}")
        (flwr_home / "run.tag").write_text(tag + "\n")
        yield "fedattr", env
    finally:
        end_process_group(proc)
        end_tagged_processes(tag)
        log_fh.close()


def _done(job: dict[str, Any]) -> bool:
    """The job's summary is valid (finished or failed): the ServerApp has moved past it."""
    return job_state(job["dir"]).done


def _finished(job: dict[str, Any]) -> bool:
    return job_state(job["dir"]).status == "finished"


def deal_jobs(jobs: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """Deal ``jobs`` into ``min(n, len(jobs))`` non-empty plans of balanced work; deterministic.

    Jobs are dealt longest first (rounds) in snake order (0, 1, ..., n-1, n-1, ..., 0, ...), so
    plan sizes differ by at most one and the arms of a seed, which lie next to each other in a
    plan, land in different plans. Each plan keeps the jobs in their original order.
    """
    if n < 1:
        raise ValueError(f"jobs at once must be >= 1, got {n}")
    n = min(n, len(jobs))
    order = sorted(range(len(jobs)), key=lambda i: -int(jobs[i]["spec"]["rounds"]))
    plans: list[list[int]] = [[] for _ in range(n)]
    for k, i in enumerate(order):
        lap, pos = divmod(k, n)
        plans[pos if lap % 2 == 0 else n - 1 - pos].append(i)
    return [[jobs[i] for i in sorted(p)] for p in plans if p]


@dataclass
class _Run:
    """One ``flwr run`` of a launch: its plan, jobs, log and process."""

    index: int
    plan: Path
    jobs: list[dict[str, Any]]
    log: Path
    log_start: int = 0
    proc: subprocess.Popen | None = None

    def unfinished(self) -> list[str]:
        return [j["spec"]["job_id"] for j in self.jobs if not _done(j)]


def _runs(plan_path: Path, todo: list[dict[str, Any]], num_clients: int, concurrency: int,
          work_dir: Path) -> list[_Run]:
    """One run for the whole plan (``concurrency`` 1), else one per dealt plan ``plan.<i>.json``.

    Dealt plans of an earlier launch are removed first: they describe runs that are over.
    """
    for old in plan_path.parent.glob(f"{plan_path.stem}.*.json"):
        if old.stem.rsplit(".", 1)[-1].isdigit():
            old.unlink()
    if concurrency <= 1 or len(todo) <= 1:
        return [_Run(0, plan_path, todo, work_dir / "flwr.log")]
    runs = []
    for i, part in enumerate(deal_jobs(todo, concurrency)):
        plan = write_plan(plan_path.with_name(f"{plan_path.stem}.{i}.json"), part, num_clients)
        runs.append(_Run(i, plan, part, work_dir / f"flwr.{i}.log"))
    return runs


def ray_address(runtime: Any) -> str | None:
    """The Ray cluster the simulation joins: ``runtime.ray_address``, else ``RAY_ADDRESS``, else None."""
    return getattr(runtime, "ray_address", None) or os.environ.get("RAY_ADDRESS") or None


def check_concurrency(concurrency: int, runtime: Any) -> None:
    """Refuse (UserError) jobs at once that are not a whole number >= 1, or several on a shared Ray cluster."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise UserError(f"--jobs must be a whole number >= 1, got {concurrency!r}")
    address = ray_address(runtime)
    if concurrency > 1 and address:
        # Every run sizes its actor pool to the whole cluster and its actors hold their CPUs
        # while idle: two runs' pools would each wait on actors the other one holds.
        raise UserError(f"--jobs {concurrency} cannot share the Ray cluster at {address}: Flower sizes each "
                        "run's actor pool to the whole cluster, so concurrent runs would wait on each other's "
                        "actors; use --jobs 1 on a Ray cluster (its clients spread over every node), or "
                        "--jobs N without one")


def check_ray_cluster(runtime: Any, timeout_s: float = 5.0) -> None:
    """Refuse (UserError) a Ray cluster address (HOST:PORT) where nothing answers.

    A simulation told to join a cluster that is not there waits in its first round instead of
    failing, so the address is tried before anything starts. ``auto`` is left to Ray.
    """
    address = ray_address(runtime)
    if not address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc}); start one with `ray start --head "
                        f"--port {port or 'PORT'}` or fix runtime.ray_address / RAY_ADDRESS") from None


def federation_config(num_clients: int, runtime: Any, runs: int, cpu_count: int | None = None) -> str:
    """``flwr run --federation-config`` of each run of a launch of ``runs`` concurrent runs.

    One run leaves Ray its default (every CPU of the machine). Several runs on one machine each
    get an equal share of its CPUs (at least one client's worth) as Ray's ``num_cpus``, so their
    ClientApp actors together match the cores instead of each run claiming all of them.
    """
    # Flower wants whole CPUs as an integer; GPUs may be fractional.
    cpus = int(runtime.client_cpus) if float(runtime.client_cpus).is_integer() else runtime.client_cpus
    cfg = (f"num-supernodes={num_clients} client-resources-num-cpus={cpus} "
           f"client-resources-num-gpus={runtime.client_gpus}")
    if runs > 1:
        cores = cpu_count or os.cpu_count() or 1
        cfg += f" init-args-num-cpus={max(math.ceil(float(runtime.client_cpus)), cores // runs)}"
    return cfg


def execute_plan(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, runtime: Any, work_dir: Path,
                 progress: Progress | None = None, tag: str | None = None, concurrency: int = 1) -> dict[str, float]:
    """Run every unfinished job of a plan; return timings (wall, start-up, runs at once).

    ``concurrency`` 1 runs the plan in ONE ``flwr run``; N > 1 deals the unfinished jobs into N
    plans run as N concurrent ``flwr run`` processes on one SuperLink (logs ``flwr.<i>.log``). Jobs
    that failed earlier are run again; ``tag`` marks every process started (see
    :func:`fedattr.launch.ownership.own_results_dir`). A run that fails names its unfinished
    jobs and its log; the other runs finish first.
    """
    check_concurrency(concurrency, runtime)
    check_ray_cluster(runtime)
    address = ray_address(runtime)
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = [j for j in jobs if not _finished(j)]
    if not todo:
        emit(progress, {"event": "log", "message": "every job finished earlier; nothing to run"})
        return {"wall_s": 0.0, "startup_s": 0.0}
    runs = _runs(plan_path, todo, num_clients, concurrency, work_dir)
    fed_cfg = federation_config(num_clients, runtime, len(runs))
    extra_env = {"RAY_ADDRESS": address} if address else None
    # SIGTERM/SIGHUP would end this process without running the cleanup below.
    # SIGINT too: a process started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Ctrl-C (or a SIGINT from a supervisor) must still end the run and its processes.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return _execute(runs, todo, fed_cfg, work_dir, t0, progress, tag, extra_env)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _submit(run: _Run, conn: str, env: dict[str, str], fed_cfg: str, work_dir: Path,
            progress: Progress | None) -> None:
    """Start ``flwr run`` for one plan, streaming its log to ``run.log``."""
    name = "run_config.toml" if run.log.name == "flwr.log" else f"run_config.{run.index}.toml"
    cmd = [bin_path("flwr"), "run", str(project_root()), conn,
           *run_config_args(work_dir / name, {"plan": str(run.plan)}),
           "--federation-config", fed_cfg, "--stream"]
    emit(progress, {"event": "log", "message": f"flwr run: {' '.join(cmd)}"})
    run.log_start = run.log.stat().st_size if run.log.exists() else 0
    with open(run.log, "ab") as fh:
        run.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _execute(runs: list[_Run], jobs: list[dict[str, Any]], fed_cfg: str, work_dir: Path, t0: float,
             progress: Progress | None, tag: str | None, extra_env: dict[str, str] | None) -> dict[str, float]:
    follower = RoundFollower(jobs, progress)
    follower.start(runs[0].log if len(runs) == 1 else work_dir)
    with simulation_superlink(work_dir / "flwr_home", work_dir / "superlink.log", tag, extra_env) as (conn, env):
        try:
            for run in runs:
                _submit(run, conn, env, fed_cfg, work_dir, progress)
            live = list(runs)
            while live:
                time.sleep(1.0)
                follower.tick()
                # A run is over when its process exits or every job of its plan has ended (the
                # follower has just read each job's state: no second read of its files).
                live = [r for r in live if r.proc.poll() is None
                        and any(j["spec"]["job_id"] not in follower.ended for j in r.jobs)]
            for run in runs:
                run.proc.wait(timeout=120)
            follower.tick()  # rounds written while the last tick ran
        finally:
            for run in runs:
                if run.proc is not None and run.proc.poll() is None:
                    end_process_group(run.proc)
    failed = [r for r in runs if r.unfinished()]
    if failed:
        _raise_failed_runs(failed, len(runs))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "startup_s": startup_seconds(jobs, follower.first_round_at, t0, wall),
            "concurrent_runs": len(runs)}


def _raise_failed_runs(failed: list[_Run], total: int) -> None:
    """Raise the error of the runs that ended unfinished, naming each run's jobs and log."""
    def what(run: _Run) -> str:
        missing = run.unfinished()
        shown = f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
        where = "the Flower run" if total == 1 else f"Flower run {run.index + 1} of {total} ({run.plan.name})"
        return f"{where} ended without finishing {len(missing)} job(s) ({shown})"

    if len(failed) == 1:
        raise_run_failure(what(failed[0]), failed[0].log, failed[0].log_start)
    for run in failed:
        full = no_space_path(run.log, run.log_start)
        if full is not None:
            raise NoSpaceError(f"no space left on {full}: {what(run)}; free some space and re-run the same "
                               f"command to resume; full log: {run.log}")
    parts = [f"{what(r)}: {run_error_cause(r.log, r.log_start) or 'no error line found in the log'}; "
             f"full log: {r.log}" for r in failed]
    raise RunFailedError(f"{len(failed)} of {total} Flower runs failed: " + " | ".join(parts))


#: what the OS says when a write finds its file system full (ENOSPC), with the path when it names one
_NO_SPACE = re.compile(r"""No space left on device(?::\s*(?:'([^']+)'|"([^"]+)"))?""")
#: what fedattr's own NoSpaceError says (``no space left on PATH``)
_NO_SPACE_ON = re.compile(r"no space left on (/\S+?)[:;,]?(?:\s|$)")


def no_space_path(log_path: Path, start: int = 0) -> str | None:
    """The path a full disk stopped the run at (``"device"`` when none is named), if the log says
    after byte ``start`` that a write found its file system full; else None."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = _ANSI.sub("", fh.read().decode("utf-8", errors="replace"))
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        m = _NO_SPACE_ON.search(line) or _NO_SPACE.search(line)
        if m:
            found = next((g for g in m.groups() if g), None) or found or "device"
    return found


def raise_run_failure(what: str, log_path: Path, log_start: int, logs: Path | None = None) -> None:
    """Raise the error of a run that ended unfinished: :class:`NoSpaceError` when the log shows a
    full disk, else :class:`RunFailedError` with the log's last exception line."""
    where = f"full log: {log_path}" if logs is None else f"logs: {logs}"
    full = no_space_path(log_path, log_start)
    if full is not None:
        raise NoSpaceError(f"no space left on {full}: {what}; free some space and re-run the same command "
                           f"to resume; {where}")
    cause = run_error_cause(log_path, log_start) or "no error line found in the log"
    raise RunFailedError(f"{what}: {cause}; {where}")


#: a Python exception line as Flower's logs print it, e.g. ``ValueError: ...`` or ``fedattr.core.errors.UserError: ...``
_EXC_LINE = re.compile(r"\b((?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*)?(?:Error|Exception|Exit|Interrupt)):\s*(.+)$")
#: Flower's own wrappers around the exception that ended a run: they say nothing of its cause
_WRAPPERS = ("An error was encountered. Ending simulation", "Simulation Runtime crashed")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_error_cause(log_path: Path, start: int = 0) -> str | None:
    """The last exception line (``Type: message``) the run wrote to ``log_path`` after byte ``start``.

    A ServerApp that fails prints its traceback into the streamed ``flwr run`` log; its last
    exception line is the real cause (a ``UserError``'s one-line message, say).
    """
    try:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    found, wrapper = None, None
    for line in text.splitlines():
        m = _EXC_LINE.search(_ANSI.sub("", line))
        if m and not m.group(2).startswith("Traceback"):
            cause = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
            if any(g in cause for g in _WRAPPERS):
                wrapper = cause
            else:
                found = cause
    return found or wrapper


def startup_seconds(jobs: list[dict[str, Any]], first_round_at: float | None, t0: float, wall: float) -> float:
    """Launch-to-first-round time minus the first round's own work.

    Flower starts the SuperLink, the simulation, Ray and the ClientApp actors before (and
    during) the first round; what the first round took beyond a typical round is start-up.
    """
    if first_round_at is None:
        return wall
    try:
        rounds = read_rounds(Path(jobs[0]["dir"]) / "rounds.jsonl")
    except (RecordError, OSError, UnicodeDecodeError):
        rounds = []
    if not rounds:
        return first_round_at - t0
    first = rounds[0].timings
    later = sorted(r.timings.get("train_s", 0.0) for r in rounds[1:]) or [0.0]
    own_work = first.get("attribution_s", 0.0) + first.get("aggregate_s", 0.0) + later[len(later) // 2]
    return max(0.0, first_round_at - t0 - own_work)


__all__ = ["simulation_superlink", "execute_plan", "deal_jobs", "check_concurrency", "check_ray_cluster", "federation_config", "ray_address", "startup_seconds", "run_error_cause", "raise_run_failure",
           "no_space_path"]
