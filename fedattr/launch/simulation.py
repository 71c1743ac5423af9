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
from typing import Any, Iterator

from fedattr.core.errors import NoSpaceError, RunFailedError, UserError
from fedattr.launch.follow import Progress, RoundFollower, emit
from fedattr.launch.processes import (bin_path, end_process_group, end_tagged_processes, free_port,
                                      project_root, tagged_env)
from fedattr.launch.runconfig import run_config_args
from fedattr.protocol import RecordError, read_rounds
from fedattr.results.store import job_state


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
        emit(progress, {"event": "log", "message": "every job finished earlier; nothing to run"})
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
    log_start = flwr_log.stat().st_size if flwr_log.exists() else 0
    follower = RoundFollower(jobs, progress)
    follower.start(flwr_log)
    with simulation_superlink(work_dir / "flwr_home", work_dir / "superlink.log", tag) as (conn, env):
        cmd = [bin_path("flwr"), "run", str(project_root()), conn,
               *run_config_args(work_dir / "run_config.toml", {"plan": str(plan_path)}),
               "--federation-config", fed_cfg, "--stream"]
        emit(progress, {"event": "log", "message": f"flwr run: {' '.join(cmd)}"})
        with open(flwr_log, "ab") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    if follower.tick() == len(jobs):
                        break
                proc.wait(timeout=120)
                follower.tick()  # rounds written while the last tick ran
            except BaseException:
                end_process_group(proc)
                raise
            finally:
                if proc.poll() is None:
                    end_process_group(proc)
    missing = [j["spec"]["job_id"] for j in jobs if not _done(j)]
    if missing:
        raise_run_failure(f"the Flower run ended without finishing {len(missing)} job(s) "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", flwr_log, log_start)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "startup_s": startup_seconds(jobs, follower.first_round_at, t0, wall)}


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


__all__ = ["simulation_superlink", "execute_plan", "startup_seconds", "run_error_cause", "raise_run_failure",
           "no_space_path"]
