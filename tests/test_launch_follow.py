"""fedattr.launch.follow: one progress event per finished round, as it lands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fedattr.launch.follow import RoundFollower

SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small" / "run"


def _job(root: Path, name: str = "attack__s0") -> dict:
    arm, seed = name.split("__s")
    return {"dir": str(root / "jobs" / name), "spec": {"job_id": name, "arm": arm, "seed": int(seed), "rounds": 3}}


def _copy_rounds(src: Path, dest: Path, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    lines = (src / "rounds.jsonl").read_text().splitlines()[:n]
    (dest / "rounds.jsonl").write_text("".join(line + "\n" for line in lines))


def test_each_round_is_reported_once_with_its_numbers(tmp_path):
    src = SMALL / "jobs" / "attack__s0"
    job = _job(tmp_path)
    events = []
    follower = RoundFollower([job], events.append)
    follower.start(tmp_path / "logs" / "flwr.log")
    assert events[0] == {"event": "start", "jobs_total": 1, "rounds_total": 3,
                         "log": str(tmp_path / "logs" / "flwr.log")}
    _copy_rounds(src, Path(job["dir"]), 1)
    assert follower.tick() == 0 and follower.first_round_at is not None
    _copy_rounds(src, Path(job["dir"]), 3)
    follower.tick()
    follower.tick()  # nothing new: nothing reported again
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3]
    stored = [json.loads(line) for line in (src / "rounds.jsonl").read_text().splitlines()]
    for event, rec in zip(rounds, stored):
        ev = next(iter(rec["cumulative"]))
        assert event["accuracy"] == rec["test"]["accuracy"] and event["seconds"] == rec["timings"]["round_s"]
        assert event["attacker"] == 0 and event["evaluator"] == ev
        assert event["attacker_value"] == rec["cumulative"][ev]["0"]
        assert event["attacker_rank"] == rec["ranks"][ev]["0"] and event["clients"] == 4
    shutil.copy(src / "summary.json", Path(job["dir"]) / "summary.json")
    assert follower.tick() == 1
    assert [e for e in events if e["event"] == "job"] == [
        {"event": "job", "job": "attack__s0", "status": "finished", "reason": None, "jobs_done": 1, "jobs_total": 1}]


def test_rounds_of_an_earlier_try_are_not_reported_and_a_restart_is(tmp_path):
    src = SMALL / "jobs" / "attack__s0"
    job = _job(tmp_path)
    _copy_rounds(src, Path(job["dir"]), 2)  # an interrupted earlier try
    events = []
    follower = RoundFollower([job], events.append)
    follower.start(tmp_path / "flwr.log")
    follower.tick()
    assert not [e for e in events if e["event"] == "round"]
    _copy_rounds(src, Path(job["dir"]), 1)  # the ServerApp starts the job afresh
    follower.tick()
    assert [e["round"] for e in events if e["event"] == "round"] == [1]
