"""Flower's deployment runtime on this machine: every SuperLink, SuperNode and SuperExec a process.

:class:`LocalDeployment` starts, on 127.0.0.1 and free ports, a SuperLink (``--isolation
process``) with its own SuperExec for the ServerApp, and per client a SuperNode (``--isolation
process``, ``node_config`` with ``partition-id``, ``num-partitions`` and ``role``) with its own
SuperExec: the process layout of a container deployment. :func:`deploy_scenario` writes the plan,
submits it with ``flwr run`` to a project-local connection, follows the run's status (``flwr ls
--format json``) and the jobs' ``rounds.jsonl``, and writes results exactly as the simulation
launcher does. Every process started here carries the launch's tag and is ended by PID, also on
failure, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedattr.core.errors import UserError
from fedattr.launch.processes import (bin_path, end_process_group, end_tagged_processes, free_port,
                                      project_root, tagged_env)
from fedattr.launch.follow import Progress, RoundFollower, emit
from fedattr.launch.runconfig import run_config_args
from fedattr.results.store import atomic_write_json, job_state
from fedattr.scenario import Scenario

#: name of the connection written to the deployment's FLWR_HOME
CONNECTION = "fedattr-local"


@dataclass
class Member:
    """One process of the deployment."""

    name: str
    kind: str  # superlink, superexec, supernode
    cmd: list[str]
    port: int | None = None
    role: str | None = None
    partition_id: int | None = None
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """What processes.json records about this member."""
        return {"name": self.name, "kind": self.kind, "pid": self.proc.pid if self.proc else None,
                "port": self.port, "role": self.role, "partition_id": self.partition_id, "cmd": self.cmd}


def node_config(partition_id: int, num_partitions: int, role: str, extra: dict[str, str] | None = None) -> str:
    """The ``--node-config`` value of one SuperNode (TOML values: strings quoted)."""
    items = {"partition-id": partition_id, "num-partitions": num_partitions, "role": role, **(extra or {})}
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class LocalDeployment:
    """A SuperLink, its SuperExec and ``num_clients`` SuperNodes with one SuperExec each, on 127.0.0.1.

    Use as a context manager: ``__enter__`` starts everything and waits until each server process
    listens; ``__exit__`` ends every process (and every tagged descendant) by PID. ``processes.json``
    in ``work_dir`` names each process with its PID, port and role, ``run.tag`` the launch's tag
    (``tag``, else a new one).
    """

    def __init__(self, num_clients: int, attacker_ids: list[int], work_dir: Path,
                 node_extra: dict[str, str] | None = None, ready_timeout_s: float = 90.0, tag: str | None = None):
        self.num_clients = num_clients
        self.attacker_ids = attacker_ids
        self.work_dir = work_dir
        self.node_extra = node_extra
        self.ready_timeout_s = ready_timeout_s
        self.tag = tag

    # -- start / stop
    def __enter__(self) -> LocalDeployment:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home_ = self.work_dir / "flwr_home"
        self.flwr_home_.mkdir(parents=True, exist_ok=True)
        # The results directory's owner passes its tag, so that its watchdog ends this family too.
        self.tag_ = self.tag or uuid.uuid4().hex
        (self.work_dir / "run.tag").write_text(self.tag_ + "\n")
        self.env_ = tagged_env(self.tag_, self.flwr_home_)
        self.members_: list[Member] = []
        try:
            self._start_all()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        # SuperExecs and SuperNodes first (all at once: each may take seconds to stop), then the
        # SuperLink they talk to.
        members = [m for m in getattr(self, "members_", []) if m.proc is not None]
        for group in ([m for m in members if m.kind != "superlink"], [m for m in members if m.kind == "superlink"]):
            if group:
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    list(pool.map(lambda m: end_process_group(m.proc), group))
        if hasattr(self, "tag_"):
            end_tagged_processes(self.tag_)
        for m in getattr(self, "members_", []):
            if m.log is not None:
                m.log.close()

    def _start_all(self) -> None:
        link_port = free_port()
        self.address_ = f"127.0.0.1:{link_port}"
        (self.flwr_home_ / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address_}"\ninsecure = true\n')
        self._start(Member("superlink", "superlink", [
            bin_path("flower-superlink"), "--insecure", "--isolation", "process", "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"], port=link_port))
        self._start(Member("superexec-serverapp", "superexec", [
            bin_path("flower-superexec"), "--insecure", "--runtime-api-address", self.address_]))
        for pid in range(self.num_clients):
            role = "attacker" if pid in self.attacker_ids else "benign"
            port = free_port()
            self._start(Member(f"supernode-{pid}", "supernode", [
                bin_path("flower-supernode"), "--insecure", "--superlink", self.address_, "--isolation", "process",
                "--host", "127.0.0.1", "--port", str(port),
                "--node-config", node_config(pid, self.num_clients, role, self.node_extra)],
                port=port, role=role, partition_id=pid))
            self._start(Member(f"superexec-{pid}", "superexec", [
                bin_path("flower-superexec"), "--insecure", "--runtime-api-address", f"127.0.0.1:{port}"],
                role=role, partition_id=pid))
        self.write_processes()

    def _start(self, m: Member) -> None:
        logs = self.work_dir / "processes"
        logs.mkdir(exist_ok=True)
        m.log = open(logs / f"{m.name}.log", "ab")
        # Own session: a Ctrl-C in the terminal reaches only the launcher, which ends them in order.
        m.proc = subprocess.Popen(m.cmd, env=self.env_, stdout=m.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.members_.append(m)
        self.write_processes()
        if m.port is not None:
            self._wait_listening(m)

    def _wait_listening(self, m: Member) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if m.proc.poll() is not None:
                raise UserError(f"{m.name} exited with status {m.proc.returncode} while starting; "
                                f"see {self.work_dir / 'processes' / (m.name + '.log')}")
            try:
                with socket.create_connection(("127.0.0.1", m.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.3)
        raise UserError(f"{m.name} did not open 127.0.0.1:{m.port} within {self.ready_timeout_s:.0f} s; "
                        f"see {self.work_dir / 'processes' / (m.name + '.log')}")

    def write_processes(self) -> None:
        """Record every process (name, PID, port, role) in ``processes.json``."""
        atomic_write_json(self.work_dir / "processes.json",
                          {"tag": self.tag_, "address": getattr(self, "address_", None),
                           "processes": [m.describe() for m in self.members_]})

    # -- state
    def exited(self) -> list[Member]:
        """Members whose process has ended."""
        return [m for m in self.members_ if m.proc is not None and m.proc.poll() is not None]

    def run_status(self, timeout_s: float = 60.0) -> dict[str, Any] | None:
        """The newest run on this SuperLink as ``flwr ls --format json`` reports it (None if unknown)."""
        try:
            out = subprocess.run([bin_path("flwr"), "ls", CONNECTION, "--format", "json"], env=self.env_,
                                 capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
        except subprocess.TimeoutExpired:
            return None
        return latest_run(out.stdout)


def latest_run(text: str) -> dict[str, Any] | None:
    """The run with the highest start time in ``flwr ls --format json`` output (None if none)."""
    try:
        data = json.loads(text[text.index("{"):]) if "{" in text else None
    except ValueError:
        return None
    runs = (data or {}).get("runs") or []
    return runs[-1] if runs else None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def execute_plan_local(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, attacker_ids: list[int],
                       work_dir: Path, progress: Progress | None = None, node_extra: dict[str, str] | None = None,
                       status_every_s: float = 15.0, tag: str | None = None) -> dict[str, Any]:
    """Run the unfinished jobs of a plan in ONE ``flwr run`` on a local deployment; return timings and status."""
    from fedattr.launch.simulation import raise_run_failure, startup_seconds

    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = [j for j in jobs if job_state(j["dir"]).status != "finished"]
    if not todo:
        emit(progress, {"event": "log", "message": "every job finished earlier; nothing to run"})
        return {"wall_s": 0.0, "startup_s": 0.0, "status": None}
    flwr_log = work_dir / "flwr.log"
    log_start = flwr_log.stat().st_size if flwr_log.exists() else 0
    # SIGINT too: a process started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Ctrl-C (or a SIGINT from a supervisor) must still end the run and its processes.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with LocalDeployment(num_clients, attacker_ids, work_dir, node_extra, tag=tag) as dep:
            emit(progress, {"event": "log", "message": f"local deployment up: SuperLink {dep.address_}, "
                                                        f"{num_clients} SuperNodes (attacker ids {attacker_ids}); "
                                                        f"processes in {work_dir / 'processes.json'}"})
            status, follower = _submit_and_follow(dep, plan_path, todo, work_dir, progress, status_every_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    missing = [j["spec"]["job_id"] for j in todo if not job_state(j["dir"]).done]
    run_status = str((status or {}).get("status") or "unknown")
    if missing or run_status.endswith(("failed", "stopped")):
        raise_run_failure(f"the deployed run ended with status {run_status!r} and {len(missing)} unfinished job(s) "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", flwr_log, log_start,
                          logs=work_dir)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "startup_s": startup_seconds(todo, follower.first_round_at, t0, wall),
            "status": run_status}


def _submit_and_follow(dep: LocalDeployment, plan_path: Path, jobs: list[dict[str, Any]], work_dir: Path,
                       progress: Progress | None, status_every_s: float) -> tuple[dict | None, RoundFollower]:
    cmd = [bin_path("flwr"), "run", str(project_root()), CONNECTION,
           *run_config_args(work_dir / "run_config.toml", {"plan": str(plan_path)}), "--stream"]
    emit(progress, {"event": "log", "message": f"flwr run: {' '.join(cmd)}"})
    follower = RoundFollower(jobs, progress)
    follower.start(work_dir / "flwr.log")
    status: dict | None = None
    reported: set[str] = set()
    with open(work_dir / "flwr.log", "ab") as fh:
        proc = subprocess.Popen(cmd, env=dep.env_, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            next_status = time.monotonic() + status_every_s
            while True:
                time.sleep(1.0)
                done = follower.tick()
                for m in dep.exited():
                    if m.name not in reported:
                        reported.add(m.name)
                        emit(progress, {"event": "log", "message": f"{m.name} ({m.role or m.kind}) exited with "
                                                                    f"status {m.proc.returncode}"})
                        if m.kind == "superlink":
                            raise UserError(f"the SuperLink exited with status {m.proc.returncode}; "
                                            f"see {work_dir / 'processes' / 'superlink.log'}")
                stream_ended = proc.poll() is not None
                if done == len(jobs) or stream_ended or time.monotonic() >= next_status:
                    status = dep.run_status() or status
                    next_status = time.monotonic() + status_every_s
                    if status:
                        emit(progress, {"event": "status", "run_id": status.get("run-id"),
                                         "status": status.get("status")})
                    if status and str(status.get("status", "")).startswith("finished"):
                        break
                    if stream_ended and done == len(jobs):
                        break
            # Rounds written while the last status was being read are reported too.
            follower.tick()
        finally:
            end_process_group(proc)
    return status, follower


def deploy_scenario(scenario: Scenario, out_dir: str | Path | None = None, progress: Progress | None = None,
                    scenario_path: str | Path | None = None, node_extra: dict[str, str] | None = None,
                    force: bool = False) -> Path:
    """Run every arm and seed of ``scenario`` on a local deployment; return the results directory.

    The results directory has the same layout, ownership and resume rules as a simulation run's
    (:func:`fedattr.launch.execute.run_scenario`); ``logs/`` also holds one log per process and
    ``processes.json``.
    """
    from fedattr.launch.execute import prepared_run
    from fedattr.protocol import default_cache_dir

    with prepared_run(scenario, out_dir, scenario_path, force) as run:
        run.environment["backend"] = "deployment-local"
        extra = {"cache-dir": str(default_cache_dir()), **(node_extra or {})}
        timings = execute_plan_local(run.plan_path, run.jobs, scenario.num_clients, list(scenario.attacker_ids),
                                     run.results_dir / "logs", progress, node_extra=extra, tag=run.tag)
        run.environment["run_status"] = timings.pop("status")
        run.environment.update(timings)
    return run.results_dir


__all__ = ["LocalDeployment", "deploy_scenario", "execute_plan_local", "node_config", "latest_run", "CONNECTION"]
