"""The typed protocol: replies, node settings, records and their validation on read."""

import json

import pytest
import torch

from fedattr.protocol import (
    ATTACK,
    COUNTERFACTUAL,
    COUNTERFACTUAL_METRICS,
    JobSpec,
    JobSummary,
    NodeSettings,
    RecordError,
    RoundRecord,
    make_reply,
    parse_reply,
    read_rounds,
    read_summary,
    split_testbed,
)
from fedattr.scenario import scenario_from_dict
from fedattr.scenario.plan import job_spec, plan_entry


def _state():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)}


def test_make_reply_and_parse_reply_round_trip_with_testbed_records():
    honest = {k: v + 1 for k, v in _state().items()}
    content = make_reply(_state(), num_examples=12, train_loss=0.25, partition_id=3, role="attacker",
                         label_histogram=[1, 2, 3], counterfactual_state=honest, counterfactual_num_examples=9,
                         attack_metrics={"attack": "latent", "synthetic": 4.0})
    assert set(content.keys()) == {"arrays", "metrics", "client", COUNTERFACTUAL, COUNTERFACTUAL_METRICS, ATTACK}
    testbed = split_testbed(content)
    assert set(content.keys()) == {"arrays", "metrics", "client"}  # what a strategy sees
    reply = parse_reply(content, testbed)
    assert (reply.partition_id, reply.role, reply.num_examples, reply.label_histogram) == (3, "attacker", 12, [1, 2, 3])
    assert torch.equal(reply.state["w"], _state()["w"])
    assert torch.equal(reply.counterfactual_state["w"], honest["w"])
    assert reply.counterfactual_num_examples == 9
    assert reply.attack_metrics == {"attack": "latent", "synthetic": 4.0}


def test_make_reply_refuses_an_unknown_role():
    with pytest.raises(ValueError, match="role"):
        make_reply(_state(), num_examples=1, train_loss=0.0, partition_id=0, role="spy", label_histogram=[])


def test_node_settings_come_from_node_config_then_environment():
    node = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 3, "role": "attacker",
                                          "data-dir": "/data"}, environ={"FEDATTR_CACHE_DIR": "/cache"})
    assert (node.partition_id, node.role, node.data_dir, node.cache_dir, node.device) == (2, "attacker", "/data",
                                                                                          "/cache", None)
    assert NodeSettings.from_node_config({"partition-id": 0}, environ={}).role is None
    with pytest.raises(ValueError, match="partition-id"):
        NodeSettings.from_node_config({}, environ={})
    with pytest.raises(ValueError, match="role"):
        NodeSettings.from_node_config({"partition-id": 0, "role": "boss"}, environ={})


def test_a_job_spec_names_no_path_of_the_launching_machine():
    scenario = scenario_from_dict({"data": {"data_dir": "/home/me/data"}, "num_clients": 3})
    spec = job_spec(scenario, scenario.arms[1], 4, job_id="x/attack__s4")
    assert spec.data.data_dir is None
    text = spec.to_json()
    assert "/home/me" not in text and "cache" not in text
    assert JobSpec.from_json(text) == spec
    entry = plan_entry(scenario, scenario.arms[0], 4, job_dir="/r/jobs/honest__s4", job_id="x/honest__s4")
    assert entry.server_data_dir == "/home/me/data"  # the server's own data, kept out of messages


def _record(**kw):
    base = {"arm": "honest", "seed": 0, "attacker_ids": [0], "round": 1, "clients": [0, 1],
            "values": {"loo": {0: 0.1, 1: -0.05}}, "test": {"accuracy": 0.5}}
    return RoundRecord.model_validate({**base, **kw})


def test_records_round_trip_through_json_with_int_keys(tmp_path):
    rec = _record()
    path = tmp_path / "rounds.jsonl"
    path.write_text(json.dumps(rec.model_dump(mode="json")) + "\n")
    (back,) = read_rounds(path)
    assert back.values == {"loo": {0: 0.1, 1: -0.05}}
    assert back.schema_version == rec.schema_version


def test_a_truncated_rounds_file_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "rounds.jsonl"
    good = json.dumps(_record().model_dump(mode="json"))
    path.write_text(good + "\n" + good[: len(good) // 2] + "\n")
    with pytest.raises(RecordError, match=r"rounds\.jsonl:2: not valid JSON"):
        read_rounds(path)


def test_a_record_of_the_wrong_shape_or_version_is_refused(tmp_path):
    path = tmp_path / "rounds.jsonl"
    path.write_text(json.dumps({"arm": "honest", "seed": "zero"}) + "\n")
    with pytest.raises(RecordError, match="invalid round record"):
        read_rounds(path)
    path.write_text(json.dumps({**_record().model_dump(mode="json"), "schema_version": 99}) + "\n")
    with pytest.raises(RecordError, match="schema_version 99"):
        read_rounds(path)


def test_summary_validation(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("{garbage")
    with pytest.raises(RecordError, match="summary.json: not valid JSON"):
        read_summary(path)
    ok = JobSummary(arm="a", seed=1, rounds=2, rounds_recorded=2, attacker_ids=[])
    path.write_text(ok.model_dump_json())
    assert read_summary(path).status == "finished"


def test_training_defaults_have_one_source():
    """The schema's [train] defaults are train_local's; the attacks read train_local's signature."""
    import inspect

    from fedattr.attacks.base import TRAIN_KEYS
    from fedattr.scenario.schema import TrainSpec
    from fedattr.learning.training import train_local

    sig = {k: p.default for k, p in inspect.signature(train_local).parameters.items()}
    t = TrainSpec()
    assert (t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (
        sig["epochs"], sig["batch_size"], sig["lr"], sig["momentum"], sig["weight_decay"])
    assert TRAIN_KEYS == {k: sig[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay")}


@pytest.mark.parametrize("patch,needle", [
    ({"attribution": {"evaluators": [{"name": "tmc", "params": {"stop": "x"}}]}}, "stop must be a table"),
    ({"attribution": {"evaluators": [{"name": "tmc", "params": {"stop": {"standard_eror": 0.01}}}]}},
     "did you mean 'standard_error'"),
    ({"attribution": {"evaluators": [{"name": "tmc", "params": {"truncation": "lots"}}]}}, "tmc"),
    ({"attribution": {"engine": "vmapp"}}, "did you mean 'vmap'"),
    ({"aggregation": {"strategy": "bulyan", "params": {"num_malicious_nodes": 3}}}, "4f + 3"),
    ({"detectors": [{"name": "krums"}]}, "did you mean 'krum'"),
    ({"arms": [{"name": "a", "attack": "latnt"}]}, "unknown attack"),
])
def test_every_component_is_checked_before_start_up(patch, needle):
    from fedattr.scenario.checks import check_components

    problems = check_components(scenario_from_dict({"num_clients": 10, **patch}))
    assert len(problems) == 1 and needle in problems[0], problems


def test_valid_components_pass_including_stopping_rules_and_round_game_evaluators():
    from fedattr.scenario.checks import check_components

    ok = scenario_from_dict({"num_clients": 8, "attribution": {"evaluators": [
        {"name": "gtg", "params": {"stop": {"standard_error": 0.01, "max_evaluations": 300}}},
        {"name": "cgsv"}]},
        "aggregation": {"strategy": "fedtrimmedavg", "params": {"beta": 0.2}},
        "detectors": [{"name": "norm"}, {"name": "foolsgold"}]})
    assert check_components(ok) == []
    surrogate = scenario_from_dict({"num_clients": 8, "attribution": {"evaluators": [
        {"name": "surrogate_shapley"}, {"name": "logit_surrogate_shapley"}]}})
    assert check_components(surrogate) == []
