"""fedattr.scenario.grid: grid items and their cartesian expansion into validated scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedattr.scenario import Scenario, ScenarioError, expand_grid, load_scenario, parse_grid


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    """A scenario file with ``text``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_grid_splits_on_top_level_commas_only():
    grid = parse_grid(["partition.alpha=0.1,0.5", "seeds=[0,1],[2]",
                       'arms.attack.params={a=1,b="x,y"},{a=2}'])
    assert grid == {"partition.alpha": ["0.1", "0.5"], "seeds": ["[0,1]", "[2]"],
                    "arms.attack.params": ['{a=1,b="x,y"}', "{a=2}"]}


@pytest.mark.parametrize("item,needle", [("alpha", "expected key=v1,v2"),
                                         ("a=", "empty value"), ("a=1,,2", "empty value")])
def test_parse_grid_errors(item, needle):
    with pytest.raises(ScenarioError, match=needle):
        parse_grid([item])


def test_parse_grid_rejects_a_repeated_key():
    with pytest.raises(ScenarioError, match="given twice"):
        parse_grid(["a=1", "a=2"])


def test_expand_grid_is_the_cartesian_product_in_order():
    base = Scenario()
    points = expand_grid(base, {"partition.alpha": ["0.1", "0.5"],
                                "attack.synthetic_fraction": ["0.1", "0.25", "0.5"]})
    assert len(points) == 6
    assert points[0][0] == {"partition.alpha": "0.1", "attack.synthetic_fraction": "0.1"}
    assert points[1][0] == {"partition.alpha": "0.1", "attack.synthetic_fraction": "0.25"}
    assert [(p.partition.alpha, p.arms[1].params["synthetic_fraction"]) for _, p in points] == \
        [(0.1, 0.1), (0.1, 0.25), (0.1, 0.5), (0.5, 0.1), (0.5, 0.25), (0.5, 0.5)]
    assert all(p.arms[0].params == {} for _, p in points)  # honest arm untouched
    assert base.partition.alpha == 0.5  # the base scenario is not modified


def test_expand_grid_keeps_earlier_overrides(tmp_path):
    sc = load_scenario(write(tmp_path, ""), ["train.lr=0.2"])
    (_, point), = expand_grid(sc, {"rounds": ["7"]})
    assert point.train.lr == 0.2 and point.rounds == 7


def test_empty_grid_is_one_point():
    assert expand_grid(Scenario(), {}) == [({}, Scenario())]


def test_expand_grid_names_the_bad_point_and_field():
    with pytest.raises(ScenarioError) as info:
        expand_grid(Scenario(), {"partition.alpha": ["0.1", "-1"]})
    assert "partition.alpha=-1" in str(info.value) and "greater than 0" in str(info.value)
    with pytest.raises(ScenarioError, match="partition.alpah.*unknown key"):
        expand_grid(Scenario(), {"partition.alpah": ["0.1"]})
    with pytest.raises(ScenarioError, match="grid point arms.x.y=1.*no element named 'x'"):
        expand_grid(Scenario(), {"arms.x.y": ["1"]})
    with pytest.raises(ScenarioError, match="non-empty list"):
        expand_grid(Scenario(), {"rounds": []})
