"""End to end through Flower's simulation runtime (slow: each `flwr run` costs ~30-40 s here)."""

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from fedattr.results.store import read_json, read_jsonl
from fedattr.launch.execute import run_scenario
from fedattr.launch.processes import FLWR_ENV, project_root
from fedattr.launch.processes import tagged_pids as _tagged_pids
from fedattr.launch.simulation import simulation_superlink
from fedattr.scenario import scenario_from_dict

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny", "seeds": [0], "num_clients": 3, "attacker_ids": [0], "rounds": 2, "model": "cnn",
    "data": {"dataset": "mnist5k", "val_size": 200, "test_size": 200, "aux_size": 300, "pool_size": 600},
    "partition": {"kind": "dirichlet", "alpha": 0.5, "min_partition_size": 20},
    "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "attribution": {"evaluators": [{"name": "individual"}, {"name": "loo"}, {"name": "shapley"}]},
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _values(obj):
    """Everything but wall-clock timings and Flower's node ids (random per run)."""
    if isinstance(obj, list):
        return [_values(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _values(v) for k, v in obj.items() if k not in ("timings", "node_ids") and not k.endswith("seconds")}
    return obj


#: the test that compares a plain `flwr run` with the fixture's run (see ``_runs``)
PLAIN_TEST = "test_same_seed_gives_identical_rounds_via_plain_flwr_run"

#: the honest arm of the fixture's run, as run-config keys instead of a plan
PLAIN_OVERRIDES = ("name='tiny'; num_clients=3; attacker_ids=[0]; rounds=2; "
                   "data.val_size=200; data.test_size=200; data.aux_size=300; data.pool_size=600; "
                   "partition.min_partition_size=20; "
                   "attribution.evaluators=[{name='individual'},{name='loo'},{name='shapley'}]; "
                   "arms=[{name='honest',attack='honest'}]")


def _plain_flwr_run(work: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`flwr run .` as the README shows it, on a SuperLink of its own; return the process and its out-dir."""
    out = work / "plain"
    with simulation_superlink(work / "flwr_home", work / "superlink.log") as (conn, env):
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(project_root()), conn,
               "--run-config", f'set="{PLAIN_OVERRIDES}" out-dir="{out}"',
               "--federation-config", "num-supernodes=3 client-resources-num-cpus=1", "--stream"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    return proc, out


@pytest.fixture(scope="module")
def _runs(request, tmp_path_factory):
    """The module's two Flower runs, side by side: the plain `flwr run` of PLAIN_TEST (when that
    test is selected) in a thread, and the attack run through ``run_scenario`` here. They are
    independent (own SuperLink, tag, Ray instance and results directory) and a run's start-up is
    mostly waiting, so together they take little longer than one."""
    pool = ThreadPoolExecutor(max_workers=1)
    plain: Future | None = None
    if any(item.nodeid.endswith("::" + PLAIN_TEST) for item in request.session.items):
        plain = pool.submit(_plain_flwr_run, tmp_path_factory.mktemp("e2e_plain"))
    try:
        spec = dict(TINY, arms=[
            {"name": "honest", "attack": "honest"},
            {"name": "attack", "attack": "latent", "params": {
                "synthetic_fraction": 0.25, "generator_epochs": 2, "teacher_epochs": 2, "steps": 5}},
        ])
        out = tmp_path_factory.mktemp("e2e") / "run"
        events = []
        results = run_scenario(scenario_from_dict(spec), out_dir=out, progress=events.append)
        yield (results, events), plain
    finally:
        # the plain run (and its SuperLink) is over before the module is
        pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def attack_run(_runs):
    return _runs[0]


def test_run_writes_every_result_file(attack_run):
    results, events = attack_run
    assert (results / "scenario.json").exists() and (results / "plan.json").exists()
    env = read_json(results / "environment.json")
    assert env["packages"]["flwr"] == "1.42.0" and env["seeds"] == [0] and env["wall_s"] > 0
    for arm in ("honest", "attack"):
        job = results / "jobs" / f"{arm}__s0"
        rounds = read_jsonl(job / "rounds.jsonl")
        assert [r["round"] for r in rounds] == [1, 2]
        for r in rounds:
            assert r["arm"] == arm and r["clients"] == [0, 1, 2] and r["rejected"] == []
            assert 0.0 <= r["test"]["accuracy"] <= 1.0 and r["test"]["loss"] > 0
            assert set(r["values"]) == {"individual", "loo", "shapley"}
            assert set(r["values"]["shapley"]) == {"0", "1", "2"}
            assert r["utility_evaluations"]["shapley"] == 8 and r["utility_evaluations"]["loo"] == 4
            assert r["utility_evaluations"]["unique"] == 8  # the shared cache: union, not sum
            assert sum(r["label_histograms"]["1"]) == r["num_examples"]["1"]
            assert r["roles"] == {"0": "attacker", "1": "benign", "2": "benign"}
        summary = read_json(job / "summary.json")
        assert summary["final_test"]["accuracy"] == pytest.approx(rounds[-1]["test"]["accuracy"])
        cum = sum(r["values"]["shapley"]["1"] for r in rounds)
        assert summary["cumulative"]["shapley"]["1"] == pytest.approx(cum)
    attack_rounds = read_jsonl(results / "jobs" / "attack__s0" / "rounds.jsonl")
    assert all("0" in r["counterfactual_values"]["shapley"] for r in attack_rounds)
    metrics = attack_rounds[-1]["attack_metrics"]["0"]
    assert metrics["attack"] == "latent" and metrics["synthetic_count"] > 0
    assert any(e["event"] == "round" for e in events)
    pid = int((results / "logs" / "flwr_home" / "superlink.pid").read_text())
    assert not _alive(pid)
    tag = (results / "logs" / "flwr_home" / "run.tag").read_text().strip()
    assert _tagged_pids(tag) == []  # no SuperLink, SuperExec, simulation or Ray process left


def test_same_seed_gives_identical_rounds_via_plain_flwr_run(_runs, tmp_path):
    """`flwr run .` as the README shows it: run-config keys instead of a plan; same numbers."""
    (results, _), plain_run = _runs
    proc, out = plain_run.result(timeout=600) if plain_run is not None else _plain_flwr_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    plain = read_jsonl(out / "jobs" / "honest__s0" / "rounds.jsonl")
    first = read_jsonl(results / "jobs" / "honest__s0" / "rounds.jsonl")
    assert len(plain) == 2
    assert json.dumps(_values(plain), sort_keys=True) == json.dumps(_values(first), sort_keys=True)
    assert FLWR_ENV["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_contract_the_report_reads_a_real_run_through_the_typed_records(attack_run):
    """What the ServerApp writes validates against the protocol and the report renders it."""
    from fedattr.protocol import read_rounds, read_summary
    from fedattr.report import write_report

    results, _ = attack_run
    for arm in ("honest", "attack"):
        job = results / "jobs" / f"{arm}__s0"
        rounds = read_rounds(job / "rounds.jsonl")
        summary = read_summary(job / "summary.json")
        assert summary.status == "finished" and summary.rounds_recorded == len(rounds) == 2
        assert rounds[-1].roles[0] == "attacker"
    report = write_report(results)
    text = report.read_text()
    assert "attack" in text and "honest" in text
