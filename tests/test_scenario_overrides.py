"""fedattr.scenario.overrides: the --set language (dotted keys, list selectors, attack.<param>)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedattr.scenario import ScenarioError, apply_overrides, expand_grid, load_scenario

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    """A scenario file with ``text``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_overrides_set_scalars_lists_and_sections(tmp_path):
    path = write(tmp_path, "[partition]\nalpha = 0.5\n")
    sc = load_scenario(path, ["train.lr=0.1", "partition.alpha=0.1", "seeds=[0,1,2]",
                              "model=vgg11", "runtime.device=cuda", "data.pool_size=2000",
                              "arms.1.counterfactual=false"])
    assert sc.train.lr == 0.1 and sc.partition.alpha == 0.1 and sc.seeds == [0, 1, 2]
    assert sc.model == "vgg11" and sc.runtime.device == "cuda" and sc.data.pool_size == 2000
    assert sc.arms[1].counterfactual is False


def test_overrides_select_list_elements_by_name_index_and_star(tmp_path):
    path = write(tmp_path, "")  # arms and evaluators come from the defaults
    sc = load_scenario(path, ["arms.attack.params.synthetic_fraction=0.5",
                              "arms.0.start_round=2", "arms.*.params.note=x",
                              "attribution.evaluators.shapley.params={budget=10}"])
    assert sc.arms[1].params == {"synthetic_fraction": 0.5, "note": "x"}
    assert sc.arms[0].start_round == 2 and sc.arms[0].params == {"note": "x"}
    assert sc.attribution.evaluators[2].params == {"budget": 10}


def test_attack_prefix_sets_params_of_every_non_honest_arm(tmp_path):
    path = write(tmp_path, '[[arms]]\nname = "honest"\n[[arms]]\nname = "a"\nattack = "latent"\n'
                           '[[arms]]\nname = "n"\nattack = "noise_floor"\n')
    sc = load_scenario(path, ["attack.synthetic_fraction=0.1"])
    assert [a.params for a in sc.arms] == [{}, {"synthetic_fraction": 0.1},
                                           {"synthetic_fraction": 0.1}]


def test_override_can_append_and_replace_whole_elements(tmp_path):
    sc = load_scenario(write(tmp_path, ""),
                       ['arms.2={name="noise", attack="noise_floor"}',
                        'attribution.evaluators=[{name="loo"}]'])
    assert [a.name for a in sc.arms] == ["honest", "attack", "noise"]
    assert [e.name for e in sc.attribution.evaluators] == ["loo"]


def test_override_values_are_toml_with_a_string_fallback():
    data = apply_overrides({}, ["a=1", "b=0.5", "c=true", "d=[1,2]", "e=hello world", "f="])
    assert data == {"a": 1, "b": 0.5, "c": True, "d": [1, 2], "e": "hello world", "f": ""}


def test_overrides_accept_a_mapping_and_do_not_mutate_the_input():
    raw = {"train": {"lr": 0.5}}
    out = apply_overrides(raw, {"train.lr": "0.1", "rounds": 3})
    assert out == {"train": {"lr": 0.1}, "rounds": 3} and raw == {"train": {"lr": 0.5}}


@pytest.mark.parametrize("override,needle", [
    ("train.lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("train..lr=1", "empty segment"),
    ("arms.nobody.start_round=2", "no element named 'nobody'"),
    ("arms.7.start_round=2", "index 7 is out of range"),
    ("train.lr.x=1", "non-table"),
    ("attack=1", "attack.<param>"),
])
def test_bad_override_keys(tmp_path, override, needle):
    with pytest.raises(ScenarioError, match=None) as info:
        load_scenario(write(tmp_path, ""), [override])
    assert needle in str(info.value)


def test_bad_override_values_are_reported_with_the_key(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, ""), ["partition.alpha=-2", "train.lr=fast"])
    message = str(info.value)
    assert "--set partition.alpha, train.lr" in message
    assert "partition.alpha = -2" in message and "train.lr = 'fast'" in message


def test_attack_prefix_skips_arms_that_do_not_use_the_parameter(tmp_path):
    path = write(tmp_path, '[[arms]]\nname = "honest"\n'
                           '[[arms]]\nname = "a"\nattack = "latent"\nparams = {synthetic_fraction = 0.25}\n'
                           '[[arms]]\nname = "n"\nattack = "noise_floor"\n'
                           '[[arms]]\nname = "r"\nattack = "random_real"\n'
                           'params = {synthetic_fraction = 0.25, refresh_every = 2}\n')
    sc = load_scenario(path, ["attack.synthetic_fraction=0.1"])
    assert [a.params.get("synthetic_fraction") for a in sc.arms] == [None, 0.1, None, 0.1]
    assert sc.arms[3].params["refresh_every"] == 2


def test_core_scenario_sweeps_the_synthetic_fraction_of_the_injecting_arms():
    sc = load_scenario(ROOT / "scenarios" / "core_mnist5k.toml")
    (_, point), = expand_grid(sc, {"attack.synthetic_fraction": ["0.05"]})
    assert {a.name: a.params.get("synthetic_fraction") for a in point.arms} == {
        "honest": None, "attack": 0.05, "attack_local": 0.05, "noise_floor": None,
        "random_real": 0.05, "targeted_real": 0.05}


def test_attack_prefix_needs_a_non_honest_arm(tmp_path):
    with pytest.raises(ScenarioError, match="no arm with a non-honest attack"):
        load_scenario(write(tmp_path, '[[arms]]\nname = "honest"\n'), ["attack.x=1"])
