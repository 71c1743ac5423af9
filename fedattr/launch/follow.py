"""Follow a running plan through its jobs' files and report each finished round as it lands.

The ServerApp writes ``rounds.jsonl`` (one record per finished round, rewritten atomically) and
``summary.json`` (when a job ends); :class:`RoundFollower` polls them and turns every new round
record into one progress event carrying what a person watching wants to see: test accuracy, the
attacker's cumulative value and rank under the first evaluator, and the round's seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fedattr.protocol import RecordError, RoundRecord, read_rounds
from fedattr.results.store import job_state

Progress = Callable[[dict[str, Any]], None]

__all__ = ["Progress", "RoundFollower", "round_event", "emit"]


def emit(progress: Progress | None, event: dict[str, Any]) -> None:
    """Send one event when there is a listener."""
    if progress is not None:
        progress(event)


def round_event(job: dict[str, Any], record: RoundRecord) -> dict[str, Any]:
    """The progress event of one finished round (see :mod:`fedattr.cli.progress` for the keys)."""
    spec = job["spec"]
    event: dict[str, Any] = {"event": "round", "job": spec["job_id"], "arm": spec["arm"], "seed": spec["seed"],
                             "round": record.round, "rounds": spec["rounds"],
                             "accuracy": record.test.get("accuracy"), "seconds": record.timings.get("round_s")}
    if record.attacker_ids and record.cumulative:
        evaluator = next(iter(record.cumulative))
        attacker = record.attacker_ids[0]
        event.update(attacker=attacker, evaluator=evaluator,
                     attacker_value=record.cumulative[evaluator].get(attacker),
                     attacker_rank=record.ranks.get(evaluator, {}).get(attacker),
                     clients=len(record.ranks.get(evaluator, {})) or None)
    return event


@dataclass
class RoundFollower:
    """Turn the jobs' ``rounds.jsonl``/``summary.json`` into progress events.

    Parameters: ``jobs`` (plan entries being run), ``progress`` (the callback). :meth:`tick`
    emits one ``round`` event per round record not yet reported, a ``job`` event when a job
    ends, and a ``jobs`` count; attributes: ``first_round_at`` (``perf_counter`` time at which
    the first round was seen), ``ended`` (ids of jobs whose summary is written).
    """

    jobs: list[dict[str, Any]]
    progress: Progress | None
    seen: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    first_round_at: float | None = None

    def start(self, log: Path) -> None:
        """Announce the run: jobs, rounds to do and the log to read while it runs.

        Rounds an earlier, unfinished try left in a job's file are not reported: the ServerApp
        starts such a job afresh, and its file then shrinks (see :meth:`tick`).
        """
        for j in self.jobs:
            try:
                self.seen[j["spec"]["job_id"]] = len(read_rounds(Path(j["dir"]) / "rounds.jsonl"))
            except (RecordError, OSError, UnicodeDecodeError):
                self.seen[j["spec"]["job_id"]] = 0
        emit(self.progress, {"event": "start", "jobs_total": len(self.jobs),
                             "rounds_total": sum(int(j["spec"]["rounds"]) for j in self.jobs), "log": str(log)})

    def tick(self) -> int:
        """Report what changed since the last tick; return how many jobs have ended."""
        for j in self.jobs:
            key = j["spec"]["job_id"]
            if key in self.ended:
                continue
            state = job_state(j["dir"])
            ended = state.done
            try:
                records = read_rounds(Path(j["dir"]) / "rounds.jsonl")
            except (RecordError, OSError, UnicodeDecodeError):
                records = []  # a damaged file is reported when the job ends, not while following it
            if ended:
                self.ended.add(key)
            if len(records) < self.seen.get(key, 0):
                self.seen[key] = 0  # the job started afresh over an earlier try's rounds
            new = records[self.seen.get(key, 0):]
            if new and self.first_round_at is None:
                self.first_round_at = time.perf_counter()
            for record in new:
                emit(self.progress, dict(round_event(j, record), jobs_done=len(self.ended),
                                         jobs_total=len(self.jobs)))
            self.seen[key] = max(self.seen.get(key, 0), len(records))
            if ended:
                emit(self.progress, {"event": "job", "job": key, "status": state.status, "reason": state.detail,
                                     "jobs_done": len(self.ended), "jobs_total": len(self.jobs)})
        emit(self.progress, {"event": "jobs", "jobs_done": len(self.ended), "jobs_total": len(self.jobs)})
        return len(self.ended)
