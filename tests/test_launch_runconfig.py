"""fedattr.launch.runconfig: values reach ``flwr run --run-config`` whole, and add no keys."""

from __future__ import annotations

import pytest
from flwr.common.config import parse_config_args

from fedattr.launch.runconfig import run_config_args

HOSTILE = [
    "/tmp/x/it's here/ü dir/plan.json",
    '/tmp/a "quoted" dir/plan.json',
    "/tmp/p' other='x/plan.json",           # would add a key to a key=value string
    "/tmp/new\nline = 1/plan.json",
    "/tmp/back\\slash/ tab\there/plan.json",
]


@pytest.mark.parametrize("plan", HOSTILE)
def test_flower_reads_back_exactly_the_given_value(tmp_path, plan):
    args = run_config_args(tmp_path / "it's a dir ü" / "run_config.toml", {"plan": plan})
    assert args[0] == "--run-config" and len(args) == 2
    # what `flwr run` does with the argument (flwr.common.config.parse_config_args)
    assert parse_config_args(args[1:]) == {"plan": plan}


def test_the_key_value_string_form_is_what_breaks():
    """Why a file: Flower's key=value parser cuts a quoted path at its quote and takes in new keys."""
    plan = "/tmp/p' other='x/plan.json"
    assert parse_config_args([f"plan='{plan}'"]) != {"plan": plan}


def test_the_file_name_must_end_in_toml(tmp_path):
    with pytest.raises(ValueError, match=r"\.toml"):
        run_config_args(tmp_path / "run_config.txt", {"plan": "/p.json"})


TINY = {
    "name": "tiny", "seeds": [0], "num_clients": 3, "attacker_ids": [0], "rounds": 2, "model": "cnn",
    "data": {"dataset": "mnist5k", "val_size": 200, "test_size": 200, "aux_size": 300, "pool_size": 600},
    "partition": {"kind": "dirichlet", "alpha": 0.5, "min_partition_size": 20},
    "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "attribution": {"evaluators": [{"name": "loo"}]},
    "arms": [{"name": "honest", "attack": "honest"}],
}


@pytest.mark.slow
def test_a_run_into_a_hostile_path_finishes_and_shows_each_round_live(tmp_path):
    """`--out "x/it's here/ü dir"` reaches the ServerApp whole; piped output has one line per round."""
    import os
    import subprocess
    import sys

    import tomli_w

    from fedattr.protocol import read_rounds

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(tomli_w.dumps(TINY))
    out = tmp_path / "x" / "it's here" / "ü dir"
    env = dict(os.environ, FEDATTR_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fedattr.cli.app", "run", str(scenario), "--out", str(out),
                           "--no-report"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = read_rounds(out / "jobs" / "honest__s0" / "rounds.jsonl")
    assert [r.round for r in rounds] == [1, 2]
    lines = proc.stderr.splitlines()
    assert f"log: {out / 'logs' / 'flwr.log'}" in lines
    shown = [ln for ln in lines if "honest__s0 round " in ln]  # job ids are <results dir>/<arm>__s<seed>
    assert [ln.split("  ")[0] for ln in shown] == ["ü dir/honest__s0 round 1/2", "ü dir/honest__s0 round 2/2"]
    assert f"acc {rounds[-1].test['accuracy']:.4f}" in shown[-1]
    # nothing outside the results and cache directories
    assert {p.name for p in tmp_path.iterdir()} <= {"tiny.toml", "x", "cache"}
