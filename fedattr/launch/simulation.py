"""Flower's simulation runtime: a private SuperLink, one ``flwr run`` for a whole plan, progress.

Each launch starts its own simulation SuperLink (own port, project-local ``FLWR_HOME``, Flower
offline), submits the app with ``flwr run`` and a plan naming every job, follows progress through
the jobs' ``rounds.jsonl``, and ends the SuperLink's whole process family by PID, whatever happens.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fedattr.core.errors import UserError
from fedattr.launch.processes import (bin_path, end_process_group, end_tagged_processes, free_port,
                                      project_root, tagged_env)
from fedattr.results.store import job_state, read_jsonl

Progress = Callable[[dict[str, Any]], None]


@contextmanager
def simulation_superlink(flwr_home: Path, log_path: Path,
                         tag: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a simulation SuperLink on a free loopback port; yield (connection name, env); end it by PID.

    ``tag`` marks every process of the launch (a fresh one when None).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tag = tag or uuid.uuid4().hex
    env = tagged_env(tag, flwr_home)
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


def _emit(progress: Progress | None, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


def _done(job: dict[str, Any]) -> bool:
    """The job's summary is valid (finished or failed): the ServerApp has moved past it."""
    return job_state(job["dir"]).done


def _finished(job: dict[str, Any]) -> bool:
    return job_state(job["dir"]).status == "finished"


def execute_plan(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, runtime: Any, work_dir: Path,
                 progress: Progress | None = None, tag: str | None = None) -> dict[str, float]:
    """Run every unfinished job of a plan in ONE ``flwr run``; return timings (wall, start-up).

    Jobs that failed earlier are run again; ``tag`` marks every process started (see
    :func:`fedattr.launch.ownership.own_results_dir`).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    flwr_log = work_dir / "flwr.log"
    t0 = time.perf_counter()
    todo = [j for j in jobs if not _finished(j)]
    if not todo:
        _emit(progress, {"event": "log", "message": "every job finished earlier; nothing to run"})
        return {"wall_s": 0.0, "startup_s": 0.0}
    # Flower wants whole CPUs as an integer; GPUs may be fractional.
    cpus = int(runtime.client_cpus) if float(runtime.client_cpus).is_integer() else runtime.client_cpus
    fed_cfg = (f"num-supernodes={num_clients} client-resources-num-cpus={cpus} "
               f"client-resources-num-gpus={runtime.client_gpus}")
    # SIGTERM/SIGHUP would end this process without running the cleanup below.
    # SIGINT too: a process started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Ctrl-C (or a SIGINT from a supervisor) must still end the run and its processes.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return _execute(plan_path, todo, num_clients, fed_cfg, work_dir, flwr_log, t0, progress, tag)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _execute(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, fed_cfg: str, work_dir: Path,
             flwr_log: Path, t0: float, progress: Progress | None, tag: str | None) -> dict[str, float]:
    first_round_at: float | None = None
    log_start = flwr_log.stat().st_size if flwr_log.exists() else 0
    with simulation_superlink(work_dir / "flwr_home", work_dir / "superlink.log", tag) as (conn, env):
        cmd = [bin_path("flwr"), "run", str(project_root()), conn, "--run-config", f"plan='{plan_path}'",
               "--federation-config", fed_cfg, "--stream"]
        _emit(progress, {"event": "log", "message": f"flwr run: {' '.join(cmd)}"})
        with open(flwr_log, "ab") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            seen: dict[str, int] = {}
            # Only jobs of this launch are followed: finished ones say nothing about this start-up.
            pending = {j["spec"]["job_id"] for j in jobs}
            ended: set[str] = set()
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    for j in jobs:
                        if j["spec"]["job_id"] not in ended and _done(j):
                            ended.add(j["spec"]["job_id"])
                    done = len(ended)
                    for j in jobs:
                        d = Path(j["dir"])
                        n_rounds = _count_lines(d / "rounds.jsonl")
                        finished = j["spec"]["job_id"] in ended
                        key = j["spec"]["job_id"]
                        if n_rounds and first_round_at is None and key in pending:
                            first_round_at = time.perf_counter()
                        if n_rounds != seen.get(key, 0) or (finished and seen.get(key + "#done") is None):
                            seen[key] = n_rounds
                            if finished:
                                seen[key + "#done"] = 1
                            _emit(progress, {"event": "round", "arm": j["spec"]["arm"], "seed": j["spec"]["seed"],
                                             "round": n_rounds, "rounds": j["spec"]["rounds"],
                                             "jobs_done": done, "jobs_total": len(jobs)})
                    _emit(progress, {"event": "jobs", "jobs_done": done, "jobs_total": len(jobs)})
                    if done == len(jobs):
                        break
                proc.wait(timeout=120)
            except BaseException:
                end_process_group(proc)
                raise
            finally:
                if proc.poll() is None:
                    end_process_group(proc)
    missing = [j["spec"]["job_id"] for j in jobs if not _done(j)]
    if missing:
        cause = run_error_cause(flwr_log, log_start) or "no error line found in the log"
        raise UserError(f"the Flower run ended without finishing {len(missing)} job(s) "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): {cause}; "
                        f"full log: {flwr_log}")
    wall = time.perf_counter() - t0
    first_pending = [j for j in jobs if j["spec"]["job_id"] in pending] or jobs
    return {"wall_s": wall, "startup_s": startup_seconds(first_pending, first_round_at, t0, wall)}


def _count_lines(path: Path) -> int:
    """Round records written so far (the file is rewritten atomically, so lines are whole)."""
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


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
    rounds = read_jsonl(Path(jobs[0]["dir"]) / "rounds.jsonl")
    if not rounds:
        return first_round_at - t0
    first = rounds[0].get("timings", {})
    later = sorted(r.get("timings", {}).get("train_s", 0.0) for r in rounds[1:]) or [0.0]
    own_work = first.get("attribution_s", 0.0) + first.get("aggregate_s", 0.0) + later[len(later) // 2]
    return max(0.0, first_round_at - t0 - own_work)


__all__ = ["simulation_superlink", "execute_plan", "startup_seconds", "run_error_cause"]
