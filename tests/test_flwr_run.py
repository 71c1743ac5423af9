"""`flwr run .` the Flower way: flat run-config keys, paths relative to the app, fast failures, the FAB.

The fast tests call the ServerApp's run-config functions; the slow ones submit the app with a real
`flwr run` to a simulation SuperLink of their own.
"""

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from fedattr import server_app
from fedattr.core.errors import UserError
from fedattr.launch.processes import project_root
from fedattr.results.store import read_json, read_jsonl
from fedattr.scenario import ScenarioError

REPO = project_root()
FLWR = str(Path(sys.executable).parent / "flwr")
TINY = "tests/compose/tiny.toml"  # relative to the app directory, as a user writes it


def test_app_directory_is_the_editable_source_tree():
    assert server_app.editable_source() == REPO
    assert server_app.app_dirs()[0] == REPO
    assert server_app.resolve_in_app(TINY, "scenario") == REPO / TINY
    assert server_app.resolve_in_app(str(REPO / TINY), "scenario") == REPO / TINY


def test_flat_keys_override_the_scenario():
    s = server_app.scenario_from_run_config({
        "scenario": "scenarios/demo.toml", "num-server-rounds": 2, "seed": 3, "attack": "latent",
        "evaluators": "loo, shapley", "set": "train.lr=0.1; rounds=3"})
    assert s.name == "demo" and s.num_clients == 6
    assert s.rounds == 3  # `set` comes after the flat keys
    assert s.seeds == [3] and s.train.lr == 0.1
    assert [(a.name, a.attack) for a in s.arms] == [("honest", "honest"), ("attack", "latent")]
    assert s.arms[1].params["synthetic_fraction"] == 0.25  # the scenario's own arm, parameters kept
    assert [e.name for e in s.attribution.evaluators] == ["loo", "shapley"]


def test_unset_flat_keys_keep_the_scenario():
    s = server_app.scenario_from_run_config({"scenario": "scenarios/demo.toml", "num-server-rounds": 0,
                                             "seed": -1, "attack": "", "evaluators": ""})
    assert s.rounds == 4 and s.seeds == [0, 1, 2, 3] and len(s.arms) == 2
    assert [e.name for e in s.attribution.evaluators] == ["individual", "loo", "shapley"]


def test_attack_key_adds_an_arm_or_keeps_only_honest():
    flip = server_app.scenario_from_run_config({"scenario": TINY, "attack": "label_flip"})
    assert [(a.name, a.attack) for a in flip.arms] == [("honest", "honest"), ("label-flip", "label_flip")]
    honest = server_app.scenario_from_run_config({"scenario": "scenarios/demo.toml", "attack": "honest"})
    assert [a.attack for a in honest.arms] == ["honest"]


@pytest.mark.parametrize("cfg, message", [
    ({"evaluators": "lo"}, "did you mean 'loo'"),
    ({"evaluators": "loo;shapley"}, "is not an evaluator name"),
    ({"attack": "nope"}, "unknown attack"),
    ({"scenario": "nope.toml"}, f"looked in {REPO / 'nope.toml'}"),
    ({"seed": -3}, "seed = -3"),
    ({"num-server-rounds": -1}, "num-server-rounds = -1"),
    ({"set": "rounds=0"}, "rounds = 0"),
])
def test_bad_run_config_is_one_clear_error(cfg, message):
    with pytest.raises((ScenarioError, UserError)) as err:
        server_app.scenario_from_run_config(cfg)
    assert message in str(err.value)


def test_results_default_to_the_app_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(server_app, "editable_source", lambda: tmp_path)
    scenario = server_app.scenario_from_run_config({"scenario": str(REPO / TINY)})
    plan = server_app.plan_from_run_config(scenario, {})
    out = Path(plan.results_dir)
    assert out.parent == tmp_path / "results" and out.name.startswith("tiny-")
    assert (out / "plan.json").exists() and read_json(out / "scenario.json")["name"] == "tiny"
    relative = server_app.plan_from_run_config(scenario, {"out-dir": "mine/run1"})
    assert Path(relative.results_dir) == tmp_path / "mine" / "run1"
    assert [Path(j.dir).parent for j in relative.jobs] == [tmp_path / "mine" / "run1" / "jobs"]


class InMemoryGrid:
    """Stands for Flower's simulation grid (the check looks at the class name): ``have`` nodes."""

    def __init__(self, have: int):
        self.have = have

    def get_node_ids(self):
        return list(range(self.have))


class HttpGrid(InMemoryGrid):
    """Stands for a deployment's grid."""


def test_simulation_with_too_few_supernodes_fails_within_seconds():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r'--federation-config "num-supernodes=6"'):
        server_app.check_simulation_nodes(InMemoryGrid(2), 6)
    assert time.monotonic() - t0 < 5
    server_app.check_simulation_nodes(InMemoryGrid(6), 6)  # enough: returns
    t0 = time.monotonic()
    server_app.check_simulation_nodes(HttpGrid(0), 6)  # a deployment waits in wait_for_nodes instead
    assert time.monotonic() - t0 < 1


def test_fab_packs_only_what_the_app_runs(tmp_path):
    env = {"FLWR_HOME": str(tmp_path / "flwr_home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    proc = subprocess.run([FLWR, "build", "--app", str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    assert "fedattr/server_app.py" in names and "fedattr/client_app.py" in names
    assert "scenarios/demo.toml" in names
    stray = [n for n in names if n.split("/")[0] not in {"fedattr", "scenarios", "pyproject.toml", ".info"}]
    assert stray == []  # no tests, docs, benchmarks, examples or results
    # Flower stores the sources uncompressed (about 1 MB of them); a dataset, a model file or a
    # results directory would be several MB more.
    assert fab.stat().st_size < 2_000_000


# ----------------------------------------------------------------------------- real `flwr run .`

def _flwr_ls(env: dict, conn: str) -> list[dict]:
    ls = subprocess.run([FLWR, "ls", conn, "--format", "json"], env=env, capture_output=True, text=True,
                        timeout=120)
    return json.loads(ls.stdout[ls.stdout.index("{"):])["runs"]


def _flwr_log(env: dict, conn: str, run_id) -> str:
    return subprocess.run([FLWR, "log", str(run_id), conn, "--show"], env=env, capture_output=True, text=True,
                          timeout=120).stdout


@pytest.mark.slow
def test_flwr_run_dot_with_flat_keys_writes_results(tmp_path):
    from fedattr.launch.simulation import simulation_superlink

    out = tmp_path / "out"
    with simulation_superlink(tmp_path / "flwr_home", tmp_path / "superlink.log") as (conn, env):
        proc = subprocess.run(
            [FLWR, "run", str(REPO), conn, "--run-config",
             f"scenario='{TINY}' num-server-rounds=1 evaluators='individual,loo' out-dir='{out}'",
             "--federation-config", "num-supernodes=3 client-resources-num-cpus=1", "--stream"],
            env=env, capture_output=True, text=True, timeout=400)
        runs = _flwr_ls(env, conn)
        log = _flwr_log(env, conn, runs[0]["run-id"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert [r["status"] for r in runs] == ["finished:completed"], log[-4000:]
    rounds = read_jsonl(out / "jobs" / "honest__s0" / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1]
    assert set(rounds[0]["values"]) == {"individual", "loo"}
    assert set(rounds[0]["values"]["loo"]) == {"0", "1", "2"}
    assert read_json(out / "jobs" / "honest__s0" / "summary.json")["status"] == "finished"


@pytest.mark.slow
def test_flwr_run_dot_with_too_few_supernodes_fails_fast_and_flower_says_failed(tmp_path):
    """Flower's default local simulation has 2 SuperNodes; the tiny scenario needs 3."""
    from fedattr.launch.simulation import simulation_superlink

    out = tmp_path / "out"
    with simulation_superlink(tmp_path / "flwr_home", tmp_path / "superlink.log") as (conn, env):
        t0 = time.monotonic()
        proc = subprocess.run([FLWR, "run", str(REPO), conn, "--run-config", f"scenario='{TINY}' out-dir='{out}'",
                               "--stream"], env=env, capture_output=True, text=True, timeout=400)
        wall = time.monotonic() - t0
        runs = _flwr_ls(env, conn)
        log = _flwr_log(env, conn, runs[0]["run-id"])
    text = proc.stdout + proc.stderr + log
    assert [r["status"] for r in runs] == ["finished:failed"]
    assert '--federation-config "num-supernodes=3"' in text
    assert not out.exists()  # nothing written for a run that could not start
    assert wall < 90, wall  # SuperLink start-up and the simulation's, not node-wait-s
