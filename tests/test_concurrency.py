"""Concurrent jobs (``fedattr run/sweep --jobs N``): dealing jobs to plans, resources, bad input,
failure reports; the results equal to a one-at-a-time run are checked in tests/test_faults.py."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import RunFailedError, UserError
from fedattr.launch.simulation import (_Run, _raise_failed_runs, _runs, check_concurrency, deal_jobs,
                                       federation_config)
from fedattr.protocol import Plan
from fedattr.scenario import load_scenario
from fedattr.scenario.plan import scenario_jobs, write_plan

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"


def _jobs(tmp_path: Path, seeds: str = "[0,1,2]", rounds: int = 2) -> list[dict]:
    sc = load_scenario(DEMO, [f"seeds={seeds}", f"rounds={rounds}"])
    return scenario_jobs(sc, tmp_path / "r")


def _ids(plan: list[dict]) -> list[str]:
    return [j["spec"]["job_id"].rsplit("/", 1)[-1] for j in plan]


# --------------------------------------------------------------------------- dealing


def test_deal_jobs_gives_every_job_once_in_balanced_plans(tmp_path):
    jobs = _jobs(tmp_path)  # 2 arms x 3 seeds, seed-major
    plans = deal_jobs(jobs, 4)
    assert len(plans) == 4
    assert sorted(len(p) for p in plans) == [1, 1, 2, 2]
    assert Counter(j["spec"]["job_id"] for p in plans for j in p) == Counter(j["spec"]["job_id"] for j in jobs)
    # Snake order: 0 1 2 3 3 2 -> plans 0..3 get jobs (0), (1), (2, 5), (3, 4)
    assert [_ids(p) for p in plans] == [["honest__s0"], ["attack__s0"], ["honest__s1", "attack__s2"],
                                        ["attack__s1", "honest__s2"]]


def test_deal_jobs_splits_the_arms_of_a_seed_and_keeps_order(tmp_path):
    plans = deal_jobs(_jobs(tmp_path, "[0,1]"), 2)
    assert [_ids(p) for p in plans] == [["honest__s0", "attack__s1"], ["attack__s0", "honest__s1"]]
    assert deal_jobs(_jobs(tmp_path, "[0,1]"), 2) == plans  # deterministic


def test_deal_jobs_balances_rounds_longest_first(tmp_path):
    long = _jobs(tmp_path / "a", "[0]", rounds=8)
    short = _jobs(tmp_path / "b", "[0,1,2]", rounds=2)
    jobs = short[:3] + long + short[3:]  # 6 short jobs of 2 rounds, 2 long ones of 8
    plans = deal_jobs(jobs, 2)
    work = [sum(int(j["spec"]["rounds"]) for j in p) for p in plans]
    assert work == [14, 14]
    for p in plans:  # each plan keeps the jobs' original order
        assert [jobs.index(j) for j in p] == sorted(jobs.index(j) for j in p)


def test_deal_jobs_never_makes_empty_plans(tmp_path):
    jobs = _jobs(tmp_path, "[0]")
    assert [len(p) for p in deal_jobs(jobs, 8)] == [1, 1]
    assert deal_jobs(jobs, 1) == [jobs]
    with pytest.raises(ValueError):
        deal_jobs(jobs, 0)


def test_runs_write_one_valid_plan_per_run(tmp_path):
    jobs = _jobs(tmp_path, "[0,1]")
    plan_path = write_plan(tmp_path / "plan.json", jobs, 6)
    runs = _runs(plan_path, jobs, 6, 3, tmp_path / "logs")
    assert [r.plan.name for r in runs] == ["plan.0.json", "plan.1.json", "plan.2.json"]
    assert [r.log.name for r in runs] == ["flwr.0.log", "flwr.1.log", "flwr.2.log"]
    for r in runs:
        plan = Plan.model_validate(json.loads(r.plan.read_text()))
        assert [e.spec.job_id for e in plan.jobs] == [j["spec"]["job_id"] for j in r.jobs]
    one = _runs(plan_path, jobs, 6, 1, tmp_path / "logs")
    assert [(r.plan, r.log.name) for r in one] == [(plan_path, "flwr.log")]
    # a resume's launch removes the dealt plans of the earlier one
    assert sorted(p.name for p in tmp_path.glob("plan*.json")) == ["plan.json"]
    two = _runs(plan_path, jobs, 6, 2, tmp_path / "logs")
    assert sorted(p.name for p in tmp_path.glob("plan*.json")) == ["plan.0.json", "plan.1.json", "plan.json"]
    assert len(two) == 2


# --------------------------------------------------------------------------- resources and input


def _runtime(**kw):
    base = {"client_cpus": 1.0, "client_gpus": 0.0, "ray_address": None}
    return types.SimpleNamespace(**{**base, **kw})


def test_federation_config_splits_the_cpus_between_runs():
    assert federation_config(6, _runtime(), 1, cpu_count=2) == (
        "num-supernodes=6 client-resources-num-cpus=1 client-resources-num-gpus=0.0")
    assert federation_config(6, _runtime(), 2, cpu_count=2).endswith(" init-args-num-cpus=1")
    assert federation_config(6, _runtime(), 4, cpu_count=64).endswith(" init-args-num-cpus=16")
    # a share below one client's CPUs would leave a run no actor
    assert federation_config(6, _runtime(client_cpus=2.0), 2, cpu_count=2).endswith(" init-args-num-cpus=2")
    assert "client-resources-num-gpus=0.25" in federation_config(6, _runtime(client_gpus=0.25), 2, cpu_count=8)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_check_concurrency_refuses_bad_values(bad, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="--jobs must be a whole number >= 1"):
        check_concurrency(bad, _runtime())


def test_check_concurrency_refuses_several_runs_on_a_shared_ray_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_concurrency(1, _runtime(ray_address="10.0.0.2:6379"))
    check_concurrency(3, _runtime())
    with pytest.raises(UserError, match="cannot share the Ray cluster at 10.0.0.2:6379"):
        check_concurrency(2, _runtime(ray_address="10.0.0.2:6379"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    with pytest.raises(UserError, match="127.0.0.1:6380"):
        check_concurrency(2, _runtime())


@pytest.mark.parametrize("command", [["run", str(DEMO)], ["sweep", str(DEMO), "--grid", "rounds=1,2"]])
def test_cli_refuses_jobs_0_with_one_error(command, tmp_path):
    result = CliRunner().invoke(app, [*command, "--jobs", "0", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--jobs'" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_run_scenario_refuses_before_writing(tmp_path, monkeypatch):
    from fedattr.launch.execute import run_scenario, run_sweep

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sc = load_scenario(DEMO, ['runtime.ray_address="127.0.0.1:6379"'])
    with pytest.raises(UserError, match="cannot share the Ray cluster"):
        run_scenario(sc, out_dir=tmp_path / "out", concurrency=2)
    with pytest.raises(UserError, match="--jobs must be"):
        run_sweep(sc, [({}, sc)], out_dir=tmp_path / "out", concurrency=0)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- failure reports


def test_failed_runs_name_their_jobs_and_logs(tmp_path):
    jobs = _jobs(tmp_path, "[0,1]")
    runs = [_Run(i, tmp_path / f"plan.{i}.json", part, tmp_path / f"flwr.{i}.log")
            for i, part in enumerate(deal_jobs(jobs, 2))]
    runs[0].log.write_text("INFO: ok\nValueError: client 3 sent nothing\n")
    runs[1].log.write_text("old try\n")
    runs[1].log_start = len("old try\n")
    with open(runs[1].log, "a") as fh:
        fh.write("RuntimeError: 1 of 2 job(s) failed\n")
    with pytest.raises(RunFailedError) as exc:
        _raise_failed_runs(runs, 2)
    msg = str(exc.value)
    assert msg.startswith("2 of 2 Flower runs failed")
    assert "Flower run 1 of 2 (plan.0.json) ended without finishing 2 job(s)" in msg
    assert "honest__s0" in msg and "attack__s1" in msg and "attack__s0" in msg and "honest__s1" in msg
    assert "ValueError: client 3 sent nothing" in msg and "RuntimeError: 1 of 2 job(s) failed" in msg
    assert str(runs[0].log) in msg and str(runs[1].log) in msg
    with pytest.raises(RunFailedError, match=r"Flower run 2 of 2 \(plan.1.json\).*RuntimeError"):
        _raise_failed_runs(runs[1:], 2)


# Equal results: tests/test_faults.py::test_sigkill_mid_run_leaves_nothing_and_a_rerun_matches_an_uninterrupted_concurrent_run
# runs a study with --jobs 2 beside one killed and resumed one job at a time, and compares every
# field of every round record (timings aside).


def test_ray_cluster_that_does_not_answer_is_refused(monkeypatch):
    import socket

    from fedattr.launch.simulation import check_ray_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_ray_cluster(_runtime())  # no cluster asked for
    check_ray_cluster(_runtime(ray_address="auto"))  # left to Ray
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_ray_cluster(_runtime(ray_address=f"127.0.0.1:{port}"))
    with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_ray_cluster(_runtime(ray_address=f"127.0.0.1:{port}"), timeout_s=1.0)


def test_the_ray_cluster_does_not_block_a_resume():
    """Where the clients ran does not change a result: a directory of another (or no) Ray address resumes."""
    from fedattr.launch.ownership import scenario_differences

    sc = load_scenario(DEMO, [])
    stored = sc.model_dump(mode="json")
    del stored["runtime"]["ray_address"]
    new = load_scenario(DEMO, ['runtime.ray_address="10.0.0.2:6379"']).model_dump(mode="json")
    assert scenario_differences(stored, new) == []
    other = load_scenario(DEMO, ["runtime.client_cpus=2"]).model_dump(mode="json")
    assert scenario_differences(stored, other) == ["runtime.client_cpus"]
