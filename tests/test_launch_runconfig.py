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
