"""benchmarks.concurrency: the jobs' own work read from round records, and its bad input."""

from __future__ import annotations

import json

import pytest

from benchmarks.concurrency import job_work, main


def test_job_work_sums_each_jobs_round_seconds(tmp_path):
    for name, seconds in (("honest__s0", [1.5, 2.0]), ("attack__s0", [4.0])):
        job = tmp_path / "jobs" / name
        job.mkdir(parents=True)
        (job / "rounds.jsonl").write_text("".join(json.dumps({"round": i + 1, "timings": {"round_s": s}}) + "\n"
                                                  for i, s in enumerate(seconds)) + "\n")
    assert job_work(tmp_path) == {"attack__s0": 4.0, "honest__s0": 3.5}


def test_benchmark_needs_at_least_two_jobs_at_once(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--jobs", "1"])
    assert exc.value.code == 2
    assert "--jobs must be >= 2" in capsys.readouterr().err
