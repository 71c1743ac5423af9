"""Ownership of a results directory for the duration of a run: a lock, a watchdog, a resume check.

- :func:`own_results_dir` takes an exclusive ``flock`` on ``R/.fedattr.lock`` (released by the
  kernel when its holders die, so a lock is never stale), records the holder (PID, host, start
  time, run tag) in it, ends the processes an earlier run of that directory left behind, and
  starts a :mod:`~fedattr.launch.watchdog` that holds the lock until the run's processes are gone.
  A second run into the same directory is refused with a message naming the holder.
- :func:`check_resume` refuses to resume a directory whose stored scenario differs from the one
  being run (listing the differing keys) unless asked to start it over (``--force``), in which
  case the old results are moved to ``R/superseded/<UTC time>/``, never deleted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from fedattr.core.errors import NoSpaceError, UserError
from fedattr.launch.processes import end_tagged_processes
from fedattr.results.store import LOCK_NAME

#: scenario keys that do not change a result: a resume may differ in them
IGNORED_KEYS = ("output_dir", "description", "runtime.ray_address")

#: what a run writes at the top of its directory; --force moves these aside
RESULT_ENTRIES = ("scenario.json", "plan.json", "environment.json", "sweep.json", "jobs", "points", "report.md",
                  "report.html", "plots", "logs")


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def own_results_dir(results_dir: Path, watch: bool = True) -> Iterator[str]:
    """Hold ``results_dir`` for one run; yield the run tag every launched process must carry.

    Raises UserError when another live run holds the directory.
    """
    lock_path = results_dir / LOCK_NAME
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on {lock_path}: free some space, then run again") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = _holder(lock_path)
        raise UserError(
            f"{results_dir} is in use by another fedattr run (PID {h.get('pid', '?')} on {h.get('host', '?')}, "
            f"started {h.get('started', '?')}); wait for it to end, or choose another --out") from None
    watchdog = None
    try:
        previous = _holder(lock_path)
        # The lock was free, so no fedattr run holds this directory: whatever an earlier run
        # left behind (its watchdog killed too) is an orphan and must not write here any more.
        if previous.get("tag"):
            end_tagged_processes(str(previous["tag"]))
        tag = uuid.uuid4().hex
        info = {"pid": os.getpid(), "host": socket.gethostname(), "tag": tag,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(f"no space left on {lock_path}: free some space, then run again") from None
            raise
        if watch:
            watchdog = subprocess.Popen([sys.executable, "-m", "fedattr.launch.watchdog", "--parent", str(os.getpid()),
                                         "--tag", tag],
                                        pass_fds=(fd,), start_new_session=True, stdin=subprocess.DEVNULL)
        yield tag
    finally:
        if watchdog is not None:
            watchdog.terminate()
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def scenario_differences(stored: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two resolved scenarios (as JSON) differ, ignoring :data:`IGNORED_KEYS`."""
    if isinstance(stored, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(stored) | set(new), key=str):
            dotted = f"{prefix}{key}"
            if dotted in IGNORED_KEYS:
                continue
            if key not in stored or key not in new:
                out.append(dotted)
            elif dotted == "seeds" and _extends(stored[key], new[key]):
                continue  # more seeds extend a study: the finished jobs stay valid
            else:
                out += scenario_differences(stored[key], new[key], dotted + ".")
        return out
    return [] if stored == new else [prefix.rstrip(".") or "(scenario)"]


def _extends(stored: Any, new: Any) -> bool:
    """``new`` holds every seed of ``stored`` (and maybe more)."""
    return isinstance(stored, list) and isinstance(new, list) and set(stored) <= set(new)


def _has_results(results_dir: Path) -> bool:
    return any((results_dir / name).exists() for name in ("jobs", "points"))


def check_resume(results_dir: Path, scenarios: dict[str, Any], force: bool) -> None:
    """Refuse to resume ``results_dir`` for other settings than it holds, unless ``force``.

    ``scenarios`` maps a scenario.json path relative to ``results_dir`` (``scenario.json``, or
    ``points/pNNN/scenario.json`` in a sweep) to the resolved scenario (JSON) about to run.
    With ``force``, the old results move to ``superseded/<UTC time>/`` and the run starts over.
    """
    if not _has_results(results_dir):
        return
    diffs = []
    for rel, new in scenarios.items():
        stored_path = results_dir / rel
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            diffs.append(f"{rel}: (not stored)")
            continue
        except (OSError, ValueError) as exc:
            diffs.append(f"{rel}: unreadable ({exc})")
            continue
        diffs += [f"{rel}: {k}" if len(scenarios) > 1 else k for k in scenario_differences(stored, new)]
    if not diffs:
        return
    if not force:
        shown = ", ".join(diffs[:12]) + (f" (and {len(diffs) - 12} more)" if len(diffs) > 12 else "")
        raise UserError(f"{results_dir} holds results of other settings; differing keys: {shown}. "
                        "Resume it with the same settings, choose another --out, or pass --force to move "
                        "the old results to superseded/ and start over")
    dest = results_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest.mkdir(parents=True, exist_ok=True)
    for name in RESULT_ENTRIES:
        if (results_dir / name).exists():
            (results_dir / name).rename(dest / name)


__all__ = ["own_results_dir", "check_resume", "scenario_differences", "LOCK_NAME"]
