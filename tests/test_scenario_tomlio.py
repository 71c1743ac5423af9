"""fedattr.scenario.tomlio: files are read with one clear error per failure; TOML written with
tomli-w reads back to the same scenario."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedattr.scenario import ScenarioError, apply_overrides, load_scenario, scenario_from_dict, to_toml


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    """A scenario file with ``text``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


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


def test_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, 'name = "x"\n[partition\nalpha = 1\n')
    with pytest.raises(ScenarioError, match=r"TOML syntax error.*line 2"):
        load_scenario(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="scenario file not found: .*nope.toml"):
        load_scenario(tmp_path / "nope.toml")


def test_a_directory_is_not_a_scenario(tmp_path):
    with pytest.raises(ScenarioError, match="not a file"):
        load_scenario(tmp_path)
