"""fedattr.scenario.schema and .errors: shipped files load; bad values fail naming field and value."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedattr.scenario import (Scenario, ScenarioError, dump_resolved, load_scenario, scenario_from_dict, to_toml)

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
    assert scenario_from_dict(tomllib.loads(to_toml(sc))) == sc
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
    ("too many clients", "num_clients = 10001\n", ["num_clients", "10001", "10000"]),
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


def test_scenario_from_dict_rejects_a_non_table():
    with pytest.raises(ScenarioError, match="expected a table"):
        scenario_from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["../esc", "a/b", "it's", "\u00fc", ".hidden", "..", "a b", "x" * 101])
def test_a_scenario_name_is_a_safe_slug(name):
    with pytest.raises(ScenarioError, match=r"- name = "):
        scenario_from_dict({"name": name})


@pytest.mark.parametrize("name", ["demo", "claim-v1.2", "A_b-3", "9lives"])
def test_safe_names_are_kept(name):
    assert scenario_from_dict({"name": name}).name == name


# --------------------------------------------------------------------------- JSON schema, descriptions

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
    from fedattr.scenario import ArmSpec, EvaluatorSpec
    for cls in [*models(Scenario), ArmSpec, EvaluatorSpec]:
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"
