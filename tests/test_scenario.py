"""Scenario schema: shipped files load, bad files fail with messages naming field and value."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedattr.scenario.schema import (Scenario, ScenarioError, apply_overrides,
                              dump_resolved, expand_grid, load_scenario, parse_grid,
                              scenario_from_dict, schema_text)

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_FILES = sorted((ROOT / "scenarios").glob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    """A scenario file with ``text``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- good files


def test_the_scenarios_directory_holds_the_expected_files():
    names = {p.stem for p in SCENARIO_FILES}
    assert {"demo", "core_mnist5k", "fashion_mnist_vgg", "svhn_vgg", "cifar10_wrn"} <= names


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_round_trips(path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert scenario_from_dict(tomllib.loads(sc.to_toml())) == sc
    # Studies compare against an honest arm, except: claim.toml (its honest arm runs in
    # claim_controls.toml on the same seeds), defenses_baselines.toml (read with claim and
    # claim_controls, whose honest arm it shares), regime.toml (same-round counterfactual
    # inflation only) and scale100.toml (cost only).
    if path.stem not in ("claim", "defenses_baselines", "regime", "scale100"):
        assert sc.honest_arm() is not None


def test_demo_scenario_is_the_documented_one():
    """make demo: the claim regime (a coverage gap by construction) at demo size, with error bars."""
    sc = load_scenario(ROOT / "scenarios" / "demo.toml")
    assert (sc.data.dataset, sc.num_clients, sc.model, sc.rounds) == ("mnist5k", 6, "cnn", 4)
    assert len(sc.seeds) >= 3  # a confidence interval needs seeds
    assert (sc.partition.kind, sc.partition.withhold_classes) == ("dirichlet", [8, 9])
    assert [e.name for e in sc.attribution.evaluators] == ["individual", "loo", "shapley"]
    assert [(a.name, a.attack) for a in sc.arms] == [("honest", "honest"), ("attack", "latent")]


def test_core_scenario_is_the_issue_measurement():
    sc = load_scenario(ROOT / "scenarios" / "core_mnist5k.toml")
    assert sc.data.dataset == "mnist5k" and sc.num_clients == 10
    assert sc.partition.alpha == 0.1 and len(sc.seeds) == 10
    assert [a.name for a in sc.arms] == ["honest", "attack", "attack_local", "noise_floor",
                                         "random_real", "targeted_real"]
    local = next(a for a in sc.arms if a.name == "attack_local")
    assert local.attack == "latent" and local.params["generator_source"] == "local"
    attack = next(a for a in sc.arms if a.name == "attack")
    assert attack.attack == "latent" and attack.params["synthetic_fraction"] == 0.25
    assert {"individual", "loo"} <= {e.name for e in sc.attribution.evaluators}


def test_paper_like_scenarios_use_the_right_models():
    models = {p.stem: load_scenario(p).model for p in SCENARIO_FILES}
    assert models["fashion_mnist_vgg"] == "cnn"
    assert models["svhn_vgg"] == "vgg11"
    assert models["cifar10_wrn"] == "wrn16_4"


def test_to_toml_round_trips_awkward_values():
    sc = scenario_from_dict({
        "description": 'quote " unicode \u00fc backslash \\ newline \n end',
        "arms": [{"name": "a", "attack": "latent", "params": {
            "a b": [1, {"x": 1.5}], "nested": {"k": "v"}, "inf": float("inf"), "flag": True}}],
        "attribution": {"evaluators": [{"name": "tmc", "params": {"budget": 100}}]}})
    assert scenario_from_dict(tomllib.loads(sc.to_toml())) == sc
    dated = apply_overrides({}, ["arms.0={name='d', params={day=2024-01-02}}"])
    sc = scenario_from_dict(dated)
    assert scenario_from_dict(tomllib.loads(sc.to_toml())) == sc


def test_an_empty_file_gives_every_default(tmp_path):
    sc = load_scenario(write(tmp_path, ""))
    assert sc == Scenario()
    assert sc.seeds == [0] and sc.num_clients == 10 and sc.attacker_ids == [0]
    assert sc.data.pool_size is None and sc.partition.seed is None
    assert [a.name for a in sc.arms] == ["honest", "attack"]
    assert sc.runtime.backend == "simulation" and sc.output_dir == "results"


def test_dump_resolved_fills_every_default_and_validates_back():
    d = dump_resolved(Scenario())
    assert d["train"] == {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.0,
                          "weight_decay": 0.0}
    assert d["attribution"]["evaluators"][0] == {"name": "individual", "params": {}}
    json.dumps(d)  # JSON-ready
    assert scenario_from_dict(d) == Scenario()


def test_attacker_ids_may_be_empty(tmp_path):
    assert load_scenario(write(tmp_path, "attacker_ids = []")).attacker_ids == []


# --------------------------------------------------------------------------- bad files

BAD = [
    ("unknown key", "[partition]\nalpah = 0.1\n", ["partition.alpah", "unknown key", "'alpha'"]),
    ("unknown top-level key", "roundz = 3\n", ["roundz", "unknown key", "'rounds'"]),
    ("wrong type", 'num_clients = "ten"\n', ["num_clients", "'ten'", "integer"]),
    ("float for int", "rounds = 2.5\n", ["rounds", "2.5", "integer"]),
    ("bool for int", "rounds = true\n", ["rounds", "True"]),
    ("alpha out of range", "[partition]\nalpha = -1.0\n", ["partition.alpha", "-1.0",
                                                          "greater than 0"]),
    ("bad literal", '[partition]\nkind = "shards"\n', ["partition.kind", "'shards'", "dirichlet"]),
    ("attacker id too big", "attacker_ids = [10]\n", ["attacker_ids", "[10]", "0..9"]),
    ("attacker id duplicate", "attacker_ids = [1, 1]\n", ["attacker_ids", "unique"]),
    ("too many clients", "num_clients = 257\n", ["num_clients", "257", "256"]),
    ("duplicate arm names", '[[arms]]\nname = "x"\n[[arms]]\nname = "x"\n',
     ["arms", "duplicate arm name 'x'"]),
    ("arm without name", '[[arms]]\nattack = "latent"\n', ["arms.0.name", "required"]),
    ("arm name not path-safe", '[[arms]]\nname = "a/b"\n', ["arms.0.name", "'a/b'", "letters"]),
    ("unknown arm key", '[[arms]]\nname = "a"\nattak = "latent"\n',
     ["arms.0.attak", "'attack'"]),
    ("duplicate seeds", "seeds = [1, 1]\n", ["seeds", "duplicate seed 1"]),
    ("no seeds", "seeds = []\n", ["seeds", "[]", "at least 1"]),
    ("duplicate evaluators", '[[attribution.evaluators]]\nname = "loo"\n'
     '[[attribution.evaluators]]\nname = "loo"\n',
     ["attribution.evaluators", "duplicate evaluator name 'loo'"]),
    ("start after the end", 'rounds = 2\n[[arms]]\nname = "a"\nstart_round = 3\n',
     ["arms.0.start_round", "3", "rounds (2)"]),
    ("val subset too big", "[attribution]\nval_subset = 5000\n",
     ["attribution.val_subset", "5000", "data.val_size (1000)"]),
    ("bad device", '[runtime]\ndevice = "tpu"\n', ["runtime.device", "'tpu'", "cuda"]),
]


@pytest.mark.parametrize("text,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_scenarios_name_the_field_and_value(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "pydantic" not in message  # no raw pydantic dump (urls, error types)


def test_several_errors_are_listed_together(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, "rounds = 0\nnum_clients = 1\n"))
    lines = str(info.value).splitlines()
    assert any(l.strip().startswith("- rounds = 0") for l in lines)
    assert any(l.strip().startswith("- num_clients = 1") for l in lines)


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


def test_scenario_from_dict_rejects_a_non_table():
    with pytest.raises(ScenarioError, match="expected a table"):
        scenario_from_dict([1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- overrides


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


# --------------------------------------------------------------------------- grids


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


# --------------------------------------------------------------------------- schema, names


def test_schema_text_lists_every_field_with_its_description():
    text = schema_text()
    for name in Scenario.model_fields:
        assert name in text
    for needle in ["partition.alpha: float = 0.5", "(> 0)", '"iid" | "dirichlet"',
                   "[[arms]]", "start_round: int = 1", "data.pool_size: int | None = None",
                   "Dirichlet concentration"]:
        assert needle in text, needle


def test_json_schema_has_every_section():
    schema = Scenario.model_json_schema()
    assert {"data", "partition", "train", "attribution", "arms", "aggregation",
            "runtime"} <= set(schema["properties"])
    json.dumps(schema)


def test_every_field_is_documented():
    def models(cls):
        yield cls
        for info in cls.model_fields.values():
            sub = getattr(info.annotation, "model_fields", None)
            if sub is not None:
                yield from models(info.annotation)
    from fedattr.scenario.schema import ArmSpec, EvaluatorSpec
    for cls in [*models(Scenario), ArmSpec, EvaluatorSpec]:
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"


