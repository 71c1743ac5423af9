"""The result store: one directory per job, every write atomic (temp file + rename).

Layout of a scenario run ``R/`` (see README, "Outputs"):
``R/scenario.json``, ``R/environment.json``, ``R/plan.json`` and, per arm and seed,
``R/jobs/<arm>__s<seed>/rounds.jsonl`` (one record per finished round) and ``summary.json``
(written when the job ends). A job counts as finished only when its summary is a valid
``JobSummary`` with status ``finished`` that agrees with its rounds; a resume redoes every other
job (failed, interrupted or damaged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedattr.core.io import atomic_write_bytes, atomic_write_text, json_safe

#: the lock a live run holds on its results directory (taken by fedattr.launch.ownership)
LOCK_NAME = ".fedattr.lock"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become null)."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read one JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON Lines file; a missing file is an empty list."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def job_name(arm: str, seed: int) -> str:
    """Directory name of one (arm, seed) job."""
    return f"{arm}__s{seed}"


JobStatus = Literal["absent", "partial", "finished", "failed", "damaged"]


@dataclass(frozen=True)
class JobState:
    """What a job directory holds, after validating its files.

    ``status``: ``absent`` (nothing yet), ``partial`` (rounds but no summary: interrupted or
    running), ``finished``, ``failed`` (the server marked it so), ``damaged`` (a file that does not
    validate, or a summary that disagrees with its rounds; ``detail`` names the file and the fix).
    """

    status: JobStatus
    rounds: int = 0
    detail: str | None = None

    @property
    def done(self) -> bool:
        """True for a job the server has ended (finished or failed)."""
        return self.status in ("finished", "failed")


def job_state(job_dir: str | Path) -> JobState:
    """Validate ``rounds.jsonl`` and ``summary.json`` of one job directory; never raises for bad files."""
    return load_job(job_dir).state


class JobRecorder:
    """Appends round records of one job and writes its summary, atomically."""

    def __init__(self, job_dir: str | Path):
        self.job_dir = Path(job_dir).resolve()
        self.rounds_path = self.job_dir / "rounds.jsonl"
        self.summary_path = self.job_dir / "summary.json"
        self._lines: list[str] = []

    def start(self) -> None:
        """Begin a fresh job: the rounds and summary of an earlier unfinished or failed try are discarded."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self._lines = []
        self.summary_path.unlink(missing_ok=True)
        atomic_write_text(self.rounds_path, "")

    def append_round(self, record: dict) -> None:
        """Add one finished round; the file on disk always holds whole records only."""
        self._lines.append(json.dumps(json_safe(record), sort_keys=False))
        atomic_write_text(self.rounds_path, "\n".join(self._lines) + "\n")

    def write_summary(self, summary: dict) -> None:
        """Mark the job finished."""
        atomic_write_json(self.summary_path, summary)

    @property
    def finished(self) -> bool:
        """True when the job's summary is valid, says ``finished`` and agrees with its rounds.

        A failed, interrupted or damaged job is not finished, so a resume redoes it.
        """
        return job_state(self.job_dir).status == "finished"


@dataclass(frozen=True)
class StoredJob:
    """One job directory read once: its validated state, round records and summary.

    ``rounds`` and ``summary`` hold the parsed :class:`~fedattr.protocol.RoundRecord` list and
    :class:`~fedattr.protocol.JobSummary` (None when absent); both are empty for a damaged job.
    """

    state: JobState
    rounds: tuple[Any, ...] = ()
    summary: Any = None


def load_job(job_dir: str | Path) -> StoredJob:
    """Parse ``rounds.jsonl`` and ``summary.json`` of one job once and validate them together.

    A damaged file, rounds that disagree with the summary, or a finished summary short of its
    rounds give state ``damaged`` with the reason; never raises for bad files.
    """
    from fedattr.protocol import RecordError, read_rounds, read_summary

    job_dir = Path(job_dir)
    rounds_path, summary_path = job_dir / "rounds.jsonl", job_dir / "summary.json"
    try:
        rounds = read_rounds(rounds_path)
    except (RecordError, OSError, UnicodeDecodeError) as exc:
        return StoredJob(JobState("damaged", 0, f"{exc}" if str(rounds_path) in str(exc) else f"{rounds_path}: {exc}"))
    if not summary_path.exists():
        return StoredJob(JobState("partial" if rounds else "absent", len(rounds)), tuple(rounds))
    try:
        summary = read_summary(summary_path)
    except (RecordError, OSError, UnicodeDecodeError) as exc:
        return StoredJob(JobState("damaged", len(rounds),
                                  f"{exc}" if str(summary_path) in str(exc) else f"{summary_path}: {exc}"))
    numbers = [r.round for r in rounds]
    if summary.rounds_recorded != len(rounds) or numbers != sorted(set(numbers)) or \
            (summary.status == "finished" and numbers != list(range(1, len(rounds) + 1))):
        return StoredJob(JobState(
            "damaged", len(rounds), f"{summary_path} says {summary.rounds_recorded} rounds were recorded but "
            f"{rounds_path} holds rounds {numbers}; delete {job_dir} and re-run to redo the job"))
    if summary.status == "finished" and summary.rounds_recorded != summary.rounds:
        return StoredJob(JobState(
            "damaged", len(rounds), f"{summary_path} says finished after {summary.rounds_recorded} of "
            f"{summary.rounds} rounds; delete {job_dir} and re-run to redo the job"))
    return StoredJob(JobState(summary.status, len(rounds), summary.failure_reason), tuple(rounds), summary)
