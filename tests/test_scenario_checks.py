"""fedattr.scenario.checks: every name and parameter a scenario gives is checked before start-up,
and `fedattr scenario check` reports each problem naming the field (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import UserError
from fedattr.scenario import scenario_from_dict
from fedattr.scenario.checks import check_components, check_scenario, registries

TINY = """
name = "tiny"
seeds = [0]
num_clients = 3
attacker_ids = [0]
rounds = 1
[data]
dataset = "mnist5k"
[partition]
kind = "iid"
[[attribution.evaluators]]
name = "loo"
[[arms]]
name = "honest"
attack = "honest"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checks") / "tiny.toml"
    path.write_text(TINY)
    return path


def test_registries_list_every_kind():
    reg = registries()
    assert {"shapley", "gtg", "tmc", "loo"} <= set(reg["evaluators"])
    assert {"latent", "pixel", "noise_floor", "targeted_real", "label_flip"} <= set(reg["attacks"])
    assert "fedavg" in reg["aggregators"] and "mnist5k" in reg["datasets"]


@pytest.mark.parametrize("patch,needle", [
    ({"model": "alexnet"}, "model = 'alexnet'"),
    ({"attribution": {"evaluators": [{"name": "shapley", "params": {"budget": 3}}]}}, "attribution.evaluators.0 (shapley)"),
    ({"arms": [{"name": "a", "attack": "latent", "params": {"bogus": 1}}]}, "arms.0 (a)"),
    ({"arms": [{"name": "a", "attack": "teleport"}]}, "teleport"),
    ({"arms": [{"name": "a", "attack": "label_flp"}]}, "did you mean 'label_flip'"),
    ({"num_clients": 16, "data": {"pool_size": 1600}, "attribution": {"evaluators": [{"name": "shapley"}]}},
     "at most 14 clients"),
    ({"aggregation": {"strategy": "fedmedian"}, "attribution": {"evaluators": [{"name": "logit_surrogate_shapley"}]}},
     "attribution.evaluators.0 (logit_surrogate_shapley): needs aggregation.strategy = 'fedavg'"),
])
def test_check_scenario_names_the_field(patch, needle):
    with pytest.raises(UserError) as err:
        check_scenario(scenario_from_dict(patch), resources=False, data=False)
    assert "invalid scenario components" in str(err.value) and needle in str(err.value)


def test_every_problem_is_listed_at_once():
    problems = check_components(scenario_from_dict({
        "model": "alexnet", "attribution": {"evaluators": [{"name": "tmc", "params": {"truncation": "abc"}}]},
        "arms": [{"name": "a", "attack": "label_flip", "params": {"mapping": {"0": 10}}}]}))
    assert len(problems) == 3, problems


def test_a_valid_scenario_has_no_problem():
    assert check_components(scenario_from_dict({"num_clients": 4, "arms": [
        {"name": "honest"}, {"name": "flip", "attack": "label_flip", "params": {"mapping": {"9": 0}}}],
        "attribution": {"evaluators": [{"name": "tmc", "params": {"truncation": 0.01, "stop": {
            "max_time": 0, "relative_change": {"window": 5}}}}]}})) == []


def test_footprint_components_need_the_public_split_before_a_run():
    spec = {"num_clients": 4, "detectors": [{"name": "footprint"}],
            "attribution": {"evaluators": [{"name": "shapley"}, {"name": "footprint_class"}]}}
    without = check_components(scenario_from_dict({**spec, "data": {"aux_size": 0}}))
    assert [p.split(":")[0] for p in without] == ["detectors.0 (footprint)",
                                                  "attribution.evaluators.1 (footprint_class)"]
    assert all("data.aux_size > 0" in p for p in without)
    assert check_components(scenario_from_dict({**spec, "data": {"aux_size": 300}})) == []


# (id, --set override, what the message must name); each fails `scenario check` with exit 2
PARAMETERS = [
    ("tmc truncation not a number", 'attribution.evaluators=[{name="tmc",params={truncation="abc"}}]',
     "attribution.evaluators.0.params.truncation = 'abc': must be float | None"),
    ("gtg threshold not a number", 'attribution.evaluators=[{name="gtg",params={eps_round="x"}}]',
     "params.eps_round = 'x'"),
    ("label_flip mapping outside the classes", 'arms=[{name="a",attack="label_flip",params={mapping={9=12}}}]',
     "mapping uses classes [12] outside 0..9"),
    ("label_flip shift of the wrong type", 'arms=[{name="a",attack="label_flip",params={shift="x"}}]', "shift"),
    ("duplication without copies", 'arms=[{name="a",attack="duplication",params={copies=0}}]', "copies must be >= 1"),
    ("negative time budget", 'attribution.evaluators=[{name="tmc",params={stop={max_time=-1}}}]',
     "stop.max_time: seconds must be a number >= 0, got -1"),
    ("empty convergence window", 'attribution.evaluators=[{name="gtg",params={stop={relative_change={window=0}}}}]',
     "stop.relative_change: window must be an integer >= 1"),
    ("standard error not a number",
     'attribution.evaluators=[{name="banzhaf_msr",params={stop={standard_error={threshold="abc"}}}}]',
     "stop.standard_error: threshold must be a number >= 0"),
    ("fractional evaluation budget", 'attribution.evaluators=[{name="tmc",params={stop={max_evaluations=2.5}}}]',
     "stop.max_evaluations: n must be an integer >= 1"),
    ("withheld class outside the dataset", "partition.withhold_classes=[12]", "partition.withhold_classes = [12]"),
]


def _check(path: Path, *overrides: str):
    args = ["scenario", "check", str(path)]
    for o in overrides:
        args += ["--set", o]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("override,needle", [c[1:] for c in PARAMETERS], ids=[c[0] for c in PARAMETERS])
def test_scenario_check_names_the_bad_parameter(tiny, override, needle):
    result = _check(tiny, override)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.output and "UFuncTypeError" not in result.output


@pytest.mark.parametrize("name", ["../esc", "a/b", "it's", "ü-dir", ".hidden", "..", "a\\b"])
def test_scenario_check_refuses_a_name_that_is_not_a_safe_slug(tiny, name):
    result = _check(tiny, "name=" + json.dumps(name))  # a JSON string is a TOML basic string
    assert result.exit_code == 2, result.output
    assert f"name = {name!r}" in result.stderr and "not start with '.'" in result.stderr


def test_scenario_check_passes_a_good_scenario(tiny):
    result = _check(tiny, 'arms=[{name="a",attack="label_flip",params={mapping={9=0}}}]', "name=claim-v1.2_x")
    assert result.exit_code == 0, result.output
    assert "ok: claim-v1.2_x" in result.stderr
