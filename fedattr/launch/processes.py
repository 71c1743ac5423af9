"""The process family of a launch: its tag, its environment, free ports, and ending it by PID.

Every process a launch starts carries ``FEDATTR_RUN_TAG=<tag>`` in its environment; Flower
starts SuperExec and the simulation in sessions of their own, so the tag (plus descent from a
tagged process) is how the whole family is found and ended afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedattr.core.errors import UserError

#: environment variable that marks every process a launch starts
RUN_TAG = "FEDATTR_RUN_TAG"

#: Flower offline: no runtime dependency installation, no telemetry, no update checks
FLWR_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}


def project_root() -> Path:
    """The directory holding fedattr's pyproject.toml (the Flower app that ``flwr run`` submits)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise UserError(f"fedattr must be installed from its source tree (pip install -e .); no pyproject.toml in {root}")
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    """The console script ``name`` of this interpreter's environment, else ``name`` on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def tagged_env(tag: str, flwr_home: Path) -> dict[str, str]:
    """This process's environment plus Flower's offline settings, ``FLWR_HOME`` and the run tag."""
    return {**os.environ, **FLWR_ENV, "FLWR_HOME": str(flwr_home), RUN_TAG: tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def tagged_pids(tag: str) -> list[int]:
    """Processes carrying the tag in their environment, and all their descendants.

    Descendants count too because some (Ray's agents) are started with a fresh environment.
    """
    needle = f"{RUN_TAG}={tag}".encode()
    tagged, parent = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            parent[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                tagged.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    family, grew = set(tagged), True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return sorted(family)


def end_tagged_processes(tag: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process carrying this run's tag; return the PIDs found."""
    if not Path("/proc").is_dir():
        return []
    found = tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tagged_pids(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and tagged_pids(tag):
            time.sleep(0.2)
    return found


def end_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL whatever is left."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children (Ray workers) may linger in the group.
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


__all__ = ["RUN_TAG", "FLWR_ENV", "project_root", "free_port", "bin_path", "tagged_env", "tagged_pids",
           "end_tagged_processes", "end_process_group"]
