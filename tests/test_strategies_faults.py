"""A dead SuperNode never hangs a run (fedattr.strategies.attributed's bounded node wait), and an
overreported example count cannot take the round over (fedattr.strategies.weights).

Slow: real Flower. The fault tests run a local deployment of the tiny scenario for 3 rounds and
kill -9 one SuperNode after round 1; the run must end within a bounded time, as the
``min_clients`` policy says, with the absent client named by its partition id. The weight test
runs the honest and the ``overreport`` (factor 1e9) arms in simulation and compares them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedattr.launch.processes import project_root
from fedattr.results.store import read_json, read_jsonl

TINY = project_root() / "tests" / "compose" / "tiny.toml"
FEDATTR = str(Path(sys.executable).parent / "fedattr")
#: many times a healthy deployment round of the tiny scenario (3 clients of ~200 images: a few
#: seconds on a 2-core machine running the suite), and short, since the run waits it out
ROUND_TIMEOUT_S = 45


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the launcher exited ({proc.returncode}) while waiting for {what}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _processes(work: Path) -> dict | None:
    try:
        return json.loads((work / "processes.json").read_text())
    except (OSError, ValueError):
        return None


def _kill_a_node_after_round_1(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str, float, Path, dict]:
    out_dir = tmp_path / "run"
    cmd = [FEDATTR, "deploy", "local", str(TINY), "--out", str(out_dir), "--no-report", "--set", "rounds=3",
           "--set", f"runtime.round_timeout_s={ROUND_TIMEOUT_S}", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    job = out_dir / "jobs" / "honest__s0"
    try:
        procs = _wait_for(lambda: (p := _processes(out_dir / "logs")) and len(p["processes"]) == 8 and p, 300,
                          "all 8 processes", proc)
        _wait_for(lambda: read_jsonl(job / "rounds.jsonl"), 900, "round 1", proc)
        victim = next(p for p in procs["processes"] if p["name"] == "supernode-2")
        os.kill(victim["pid"], signal.SIGKILL)
        t_kill = time.perf_counter()
        out, _ = proc.communicate(timeout=3 * ROUND_TIMEOUT_S + 300)
        after_kill = time.perf_counter() - t_kill
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert [p["pid"] for p in procs["processes"] if _alive(p["pid"])] == []
    return proc, out.decode(errors="replace"), after_kill, job, procs


def _absent(record: dict) -> set[int]:
    """Partitions a round names as absent: missing, or a rejected (error) reply tied to them."""
    return set(record.get("missing_partitions", [])) | {r["partition_id"] for r in record["rejected"]}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_killed_supernode_fails_the_job_when_every_client_is_required(tmp_path):
    proc, text, after_kill, job, _ = _kill_a_node_after_round_1(tmp_path)
    assert proc.returncode == 1, text[-3000:]
    summary = read_json(job / "summary.json")
    assert summary["status"] == "failed"
    assert "fewer than min_clients = 3" in summary["failure_reason"]
    assert summary["failed_round"]["round"] == 2 and _absent(summary["failed_round"]) == {2}
    assert [r["round"] for r in read_jsonl(job / "rounds.jsonl")] == [1]
    print(f"node death, min_clients = 3: the job failed {after_kill:.0f} s after the kill")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_killed_supernode_is_recorded_missing_and_the_run_finishes_with_a_lower_min_clients(tmp_path):
    proc, text, after_kill, job, _ = _kill_a_node_after_round_1(tmp_path, "--set", "runtime.min_clients=2")
    assert proc.returncode == 0, text[-3000:]
    assert "supernode-2 (benign) exited" in text
    rounds = read_jsonl(job / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["clients"] == [0, 1, 2] and rounds[0]["missing"] == 0
    for r in rounds[1:]:  # the dead node's partition is named in every later round
        assert r["clients"] == [0, 1] and _absent(r) == {2}, r
    assert read_json(job / "summary.json")["status"] == "finished"
    print(f"node death, min_clients = 2: the run finished {after_kill:.0f} s after the kill")


OVERREPORT = """
name = "overreport"
seeds = [0, 1]
num_clients = 4
attacker_ids = [0]
rounds = 3
model = "cnn"
[data]
dataset = "mnist5k"
val_size = 200
test_size = 500
aux_size = 300
pool_size = 800
[partition]
kind = "dirichlet"
alpha = 0.5
min_partition_size = 20
[train]
local_epochs = 1
batch_size = 32
lr = 0.05
[attribution]
evaluators = [{name = "loo"}]
[[arms]]
name = "honest"
attack = "honest"
[[arms]]
name = "overreport"
attack = "overreport"
params = { factor = 1e9 }
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_an_overreported_count_of_1e9_times_the_data_does_not_take_the_round_over(tmp_path):
    scenario = tmp_path / "overreport.toml"
    scenario.write_text(OVERREPORT)
    out = tmp_path / "res"
    done = subprocess.run([FEDATTR, "run", str(scenario), "--out", str(out), "--no-report"], capture_output=True,
                          text=True, timeout=1100)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    acc, benign = {}, {}
    for arm in ("honest", "overreport"):
        for seed in (0, 1):
            job = out / "jobs" / f"{arm}__s{seed}"
            summary = read_json(job / "summary.json")
            acc[arm, seed] = summary["final_test"]["accuracy"]
            benign[arm, seed] = [summary["cumulative"]["loo"][str(p)] for p in (1, 2, 3)]
            for r in read_jsonl(job / "rounds.jsonl"):
                claimed, used = r["claimed_num_examples"], r["num_examples"]
                honest_counts = [claimed[str(p)] for p in (1, 2, 3)]
                if arm == "honest":
                    assert used == claimed  # honest claims are under the cap
                else:
                    assert claimed["0"] > 1e10
                    median = sorted([claimed["0"], *honest_counts])[1:3]
                    assert used["0"] == pytest.approx(4 * sum(median) / 2)
                    assert all(used[str(p)] == claimed[str(p)] for p in (1, 2, 3))
    mean = {arm: sum(acc[arm, s] for s in (0, 1)) / 2 for arm in ("honest", "overreport")}
    # within the seed-to-seed spread of the honest arm (0.29 and 0.45 in the measured run)
    assert abs(mean["overreport"] - mean["honest"]) < 0.1, acc
    # an uncapped claim makes every benign LOO value exactly 0; capped, they stay of the honest size
    gap = [abs(a - b) for s in (0, 1) for a, b in zip(benign["overreport", s], benign["honest", s])]
    assert any(v != 0 for s in (0, 1) for v in benign["overreport", s])
    assert max(gap) < 0.3, benign
    print(f"overreport x1e9: final accuracy {acc}; benign cumulative LOO {benign}")
