"""fedattr.scenario.plan: one entry per (arm, seed), seeds outermost; sweep points interleaved by
seed; every results and job directory inside the chosen output directory."""

from pathlib import Path

import pytest

from fedattr.core.errors import UserError
from fedattr.scenario import Scenario, load_scenario
from fedattr.scenario.plan import default_results_dir, interleave, scenario_jobs

DEMO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.toml"


def test_scenario_jobs_are_seed_major(tmp_path):
    sc = load_scenario(DEMO, ["seeds=[0,1]"])
    jobs = scenario_jobs(sc, tmp_path / "r")
    assert [(j["spec"]["arm"], j["spec"]["seed"]) for j in jobs] == [
        ("honest", 0), ("attack", 0), ("honest", 1), ("attack", 1)]


def test_sweep_points_are_interleaved_seed_by_seed(tmp_path):
    sc = load_scenario(DEMO, ["seeds=[0,1,2]"])
    short = load_scenario(DEMO, ["seeds=[0]"])
    points = [scenario_jobs(sc, tmp_path / "p000"), scenario_jobs(short, tmp_path / "p001"),
              scenario_jobs(sc, tmp_path / "p002")]
    order = [(Path(j["dir"]).parent.parent.name, j["spec"]["arm"], j["spec"]["seed"]) for j in interleave(points)]
    assert len(order) == 6 + 2 + 6 and len(set(order)) == len(order)
    # every point's first job comes before any point's second one
    assert order[:3] == [("p000", "honest", 0), ("p001", "honest", 0), ("p002", "honest", 0)]
    # seed 0 of every point (both arms) before any seed 1; the short point drops out after
    assert {(p, a, s) for p, a, s in order[:6]} == {(p, a, 0) for p in ("p000", "p001", "p002")
                                                   for a in ("honest", "attack")}
    assert order[6:8] == [("p000", "honest", 1), ("p002", "honest", 1)]


def test_results_land_under_output_dir(tmp_path):
    sc = load_scenario(DEMO, [f'output_dir="{tmp_path / "out"}"', "name=demo.v2"])
    out = default_results_dir(sc)
    assert out.parent == (tmp_path / "out").resolve() and out.name.startswith("demo.v2-")
    assert all(Path(j["dir"]).parent == out / "jobs" for j in scenario_jobs(sc, out))


@pytest.mark.parametrize("name", ["../esc", "../../etc", "a/../../b", "/abs"])
def test_a_name_that_leaves_output_dir_is_refused_even_unvalidated(tmp_path, name):
    # the schema refuses such names; the plan does not rely on it
    sc = Scenario.model_construct(**{**load_scenario(DEMO).__dict__, "name": name,
                                     "output_dir": str(tmp_path / "out")})
    with pytest.raises(UserError, match="outside"):
        default_results_dir(sc)
    assert not any(tmp_path.iterdir())  # nothing created anywhere
