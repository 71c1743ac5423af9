"""Local deployment: SuperLink, SuperNodes and SuperExecs as separate processes on 127.0.0.1.

The slow tests start real Flower processes (each ClientApp message starts a fresh process, so a
round costs tens of seconds on 2 cores) and check by PID that none is left afterwards.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedattr.launch.local import CONNECTION, deploy_scenario, latest_run, node_config
from fedattr.launch.processes import project_root, tagged_pids
from fedattr.results.store import read_json, read_jsonl
from fedattr.scenario import load_scenario

TINY = project_root() / "tests" / "compose" / "tiny.toml"
FEDATTR = str(Path(sys.executable).parent / "fedattr")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher exited ({proc.returncode}) while waiting for {what}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _processes(work: Path) -> dict | None:
    try:
        return json.loads((work / "processes.json").read_text())
    except (OSError, ValueError):
        return None


def test_node_config_is_toml():
    assert node_config(2, 5, "attacker", {"cache-dir": '/a "b"'}) == \
        'partition-id=2 num-partitions=5 role="attacker" cache-dir="/a \\"b\\""'


def test_latest_run_reads_flwr_ls_json():
    text = ('Using SuperLink: x\n{"success": true, "runs": [{"run-id": 1, "status": "finished:completed"}, '
            '{"run-id": 2, "status": "running"}]}')
    assert latest_run(text) == {"run-id": 2, "status": "running"}
    assert latest_run('{"success": false, "error-message": "down"}') is None
    assert latest_run("no json") is None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_local_deployment_two_rounds(tmp_path):
    events = []
    t0 = time.perf_counter()
    results = deploy_scenario(load_scenario(TINY), out_dir=tmp_path / "run", progress=events.append)
    wall = time.perf_counter() - t0
    job = results / "jobs" / "honest__s0"
    rounds = read_jsonl(job / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        # partition 0's role came from its SuperNode's node_config
        assert r["roles"] == {"0": "attacker", "1": "benign", "2": "benign"}
        assert r["clients"] == [0, 1, 2] and r["missing"] == 0
        assert set(r["values"]["loo"]) == {"0", "1", "2"}
    assert read_json(job / "summary.json")["status"] == "finished"
    for name in ("scenario.json", "plan.json", "environment.json"):
        assert (results / name).exists()
    env = read_json(results / "environment.json")
    assert env["backend"] == "deployment-local" and 0 < env["wall_s"] <= wall
    statuses = [e["status"] for e in events if e["event"] == "status"]
    assert statuses and statuses[-1] == "finished:completed"
    assert any(e["event"] == "round" and e["round"] == 2 for e in events)
    # one SuperLink, its SuperExec, and a SuperNode + SuperExec per client; none left running
    procs = read_json(results / "logs" / "processes.json")
    kinds = sorted(p["kind"] for p in procs["processes"])
    assert kinds == ["superexec"] * 4 + ["superlink"] + ["supernode"] * 3
    roles = {p["partition_id"]: p["role"] for p in procs["processes"] if p["kind"] == "supernode"}
    assert roles == {0: "attacker", 1: "benign", 2: "benign"}
    assert [p["pid"] for p in procs["processes"] if _alive(p["pid"])] == []
    assert tagged_pids(procs["tag"]) == []
    flwr_home = results / "logs" / "flwr_home" / "config.toml"
    assert f"[superlink.{CONNECTION}]" in flwr_home.read_text() and procs["address"] in flwr_home.read_text()
    print(f"local deployment, 3 clients x 2 rounds: {wall:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_ends_every_process(tmp_path):
    work = tmp_path / "run" / "logs"
    proc = subprocess.Popen([FEDATTR, "deploy", "local", str(TINY), "--out", str(tmp_path / "run"), "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        procs = _wait_for(lambda: (p := _processes(work)) and len(p["processes"]) == 8 and p, 300,
                          "all 8 processes", proc)
        pids = [p["pid"] for p in procs["processes"]]
        assert all(_alive(pid) for pid in pids)
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and b"interrupted" in out
    assert [pid for pid in pids if _alive(pid)] == []
    assert tagged_pids(procs["tag"]) == []
