"""fedattr.scenario.tomlio: TOML written with tomli-w reads back to the same scenario."""

from __future__ import annotations

import tomllib

from fedattr.scenario import apply_overrides, scenario_from_dict, to_toml


def test_to_toml_round_trips_awkward_values():
    sc = scenario_from_dict({
        "description": 'quote " unicode \u00fc backslash \\ newline \n end',
        "arms": [{"name": "a", "attack": "latent", "params": {
            "a b": [1, {"x": 1.5}], "nested": {"k": "v"}, "inf": float("inf"), "flag": True}}],
        "attribution": {"evaluators": [{"name": "tmc", "params": {"budget": 100}}]}})
    assert scenario_from_dict(tomllib.loads(to_toml(sc))) == sc
    dated = apply_overrides({}, ["arms.0={name='d', params={day=2024-01-02}}"])
    sc = scenario_from_dict(dated)
    assert scenario_from_dict(tomllib.loads(to_toml(sc))) == sc
