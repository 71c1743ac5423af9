"""The attributed round (screen -> detect -> aggregate -> score -> record) and the client replies,
without a Flower runtime (messages built by hand)."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency
from flwr.supercore.task_identity import TaskIdentity

from fedattr.attacker_app import attacker_train
from fedattr.strategies.scoring import RoundScorer
from fedattr.client_app import benign_train
from fedattr.learning.models import build_model
from fedattr.protocol import COUNTERFACTUAL, JobSpec, NodeSettings, make_reply
from fedattr.strategies import AttributedStrategy, DetectorStep, build_aggregator, check_train_reply
from fedattr.learning.task import Job
from fedattr.learning.training import evaluate


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reply(state, n, pid, role="benign"):
    content = make_reply(state, num_examples=n, train_loss=0.5, partition_id=pid, role=role,
                         label_histogram=[n] + [0] * 9)
    sent = Message(content=RecordDict(), dst_node_id=100 + pid, message_type="train")
    return Message(content=content, reply_to=sent)


def test_check_train_reply_rejects_what_cannot_be_aggregated():
    model = build_model("cnn")
    ref = {k: v.numpy() for k, v in model.state_dict().items()}
    good = _state(model)
    assert check_train_reply(_reply(good, 10, 0).content, ref) is None
    bad = copy.deepcopy(good)
    bad["classifier.1.weight"][0, 0] = float("nan")
    assert "non-finite" in check_train_reply(_reply(bad, 10, 0).content, ref)
    wrong_shape = dict(good, **{"classifier.1.bias": torch.zeros(3)})
    assert "shape" in check_train_reply(_reply(wrong_shape, 10, 0).content, ref)
    wrong_dtype = dict(good, **{"classifier.1.bias": good["classifier.1.bias"].double()})
    assert "dtype" in check_train_reply(_reply(wrong_dtype, 10, 0).content, ref)
    missing = {k: v for k, v in good.items() if k != "classifier.1.bias"}
    assert "keys" in check_train_reply(_reply(missing, 10, 0).content, ref)
    zero = _reply(good, 1, 0).content
    zero["metrics"]["num-examples"] = 0
    assert "num-examples" in check_train_reply(zero, ref)


@pytest.fixture()
def round_setup(splits):
    torch.manual_seed(0)
    base = build_model("cnn")
    w_t = _state(base)
    states = []
    for pid in range(3):
        m = build_model("cnn")
        m.load_state_dict(w_t)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        states.append(_state(m))
    return w_t, states


def test_aggregate_train_rejects_bad_replies_aggregates_the_rest_and_scores_them(splits, round_setup):
    w_t, states = round_setup
    x_val, y_val = splits.x_val[:200], splits.y_val[:200]
    records = []
    scorer = RoundScorer(build_model("cnn"), x_val, y_val, [("individual", {}), ("loo", {}), ("shapley", {})])
    fedavg, _ = build_aggregator("fedavg", {}, 3)
    strategy = AttributedStrategy(fedavg, scorer, central_evaluate=lambda arrays: {"accuracy": 0.5, "loss": 1.0},
                                  on_round=records.append,
                                  job_info={"arm": "honest", "seed": 0, "attacker_ids": []}, min_clients=3)
    strategy._global = ArrayRecord(w_t)
    nan_state = copy.deepcopy(states[2])
    nan_state["features.1.weight"][0] = float("nan")
    replies = [_reply(states[1], 30, 1), _reply(states[0], 10, 0), _reply(nan_state, 20, 9), _reply(states[2], 20, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    strategy.evaluate(1, arrays)
    (record,) = [r.model_dump() for r in records]
    assert record["clients"] == [0, 1, 2]
    assert [(r["partition_id"], "non-finite" in r["reason"]) for r in record["rejected"]] == [(9, True)]
    weights = {0: 10, 1: 30, 2: 20}
    expected = {k: sum(weights[p] * states[p][k] for p in range(3)) / 60 for k in w_t}
    got = arrays.to_torch_state_dict()
    for k in w_t:
        assert torch.allclose(got[k], expected[k], atol=1e-6)

    def acc(state):
        m = build_model("cnn")
        m.load_state_dict(state)
        return evaluate(m, x_val, y_val)["accuracy"]

    def fedavg(pids):
        tot = sum(weights[p] for p in pids)
        return {k: w_t[k] + sum(weights[p] * (states[p][k] - w_t[k]) for p in pids) / tot for k in w_t}

    u0, u_all = acc(w_t), acc(fedavg([0, 1, 2]))
    for p in range(3):
        assert record["values"]["individual"][p] == pytest.approx(acc(states[p]) - u0, abs=1e-9)
        rest = [q for q in range(3) if q != p]
        assert record["values"]["loo"][p] == pytest.approx(u_all - acc(fedavg(rest)), abs=1e-9)
    assert sum(record["values"]["shapley"].values()) == pytest.approx(u_all - u0, abs=1e-9)
    assert record["utility_evaluations"] == {"individual": 4, "loo": 4, "shapley": 8, "unique": 8}
    assert record["test"] == {"accuracy": 0.5, "loss": 1.0}
    assert strategy.totals.cumulative["loo"] == record["values"]["loo"]


def _tiny_job(attack="scaling", params=None, counterfactual=True):
    return Job(JobSpec.model_validate({
        "job_id": "t/1", "scenario_name": "t", "arm": "attack", "seed": 0, "num_clients": 3, "attacker_ids": [0],
        "rounds": 1, "model": "cnn",
        "data": {"dataset": "mnist5k", "data_dir": None, "val_size": 200, "test_size": 200, "aux_size": 300,
                 "pool_size": 600, "split_seed": 0},
        "partition": {"kind": "iid"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
        "attack": {"name": attack, "params": {"factor": 3.0} if params is None else params, "start_round": 1,
                   "counterfactual": counterfactual},
        "device": "cpu",
    }))


def test_attacker_reply_passes_flowers_reply_validation_beside_a_benign_one(tmp_path):
    job = _tiny_job()
    node = NodeSettings(partition_id=0, cache_dir=str(tmp_path))
    torch.manual_seed(0)
    w_t = _state(job.build_model())
    attacker = attacker_train(ArrayRecord(w_t), job, node, 1)
    state, n, loss = benign_train(job, NodeSettings(partition_id=1), 1, ArrayRecord(w_t))
    benign = make_reply(state, num_examples=n, train_loss=loss, partition_id=1, role="benign",
                        label_histogram=[0] * 10)
    # Scaling by 3: the sent update is exactly 3x the counterfactual (honest) update.
    sent = attacker["arrays"].to_torch_state_dict()
    honest = attacker[COUNTERFACTUAL].to_torch_state_dict()
    k = "classifier.1.weight"
    assert torch.allclose(sent[k] - w_t[k], 3 * (honest[k] - w_t[k]), atol=1e-6)
    assert attacker["testbed.counterfactual-metrics"]["num-examples"] == len(job.partition(0)[1])
    ref = {k: v.numpy() for k, v in w_t.items()}
    assert check_train_reply(attacker, ref) is None
    # What the strategy aggregates (testbed records stripped) passes Flower's own validation.
    for name in [k for k in attacker.keys() if k.startswith("testbed.")]:
        del attacker[name]
    validate_message_reply_consistency([attacker, benign], "num-examples", check_arrayrecord=True)
    assert set(attacker["metrics"].keys()) == set(benign["metrics"].keys())


def test_honest_arm_sends_no_counterfactual(tmp_path):
    job = _tiny_job("honest", {})
    w_t = _state(job.build_model())
    reply = attacker_train(ArrayRecord(w_t), job, NodeSettings(partition_id=0, cache_dir=str(tmp_path)), 1)
    assert COUNTERFACTUAL not in reply.array_records
    state, _, _ = benign_train(job, NodeSettings(partition_id=0), 1, ArrayRecord(w_t))
    got = reply["arrays"].to_torch_state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)  # honest attacker == benign client
    assert np.isclose(reply["metrics"]["num-examples"], len(job.partition(0)[1]))


def test_counterfactual_uses_the_honest_example_count(splits, round_setup):
    """Over-reporting: same weights sent, but the honest reply would have reported fewer examples."""
    w_t, states = round_setup
    x_val, y_val = splits.x_val[:200], splits.y_val[:200]
    scorer = RoundScorer(build_model("cnn"), x_val, y_val, [("loo", {})])
    sd = dict(enumerate(states))
    over = scorer.score(1, w_t, sd, {0: 50.0, 1: 10.0, 2: 10.0}, {0: states[0]}, {0: 10.0})
    fair = scorer.score(1, w_t, sd, {0: 10.0, 1: 10.0, 2: 10.0})
    assert over.counterfactual_values["loo"][0] == pytest.approx(fair.values["loo"][0], abs=1e-12)
    same = scorer.score(1, w_t, sd, {0: 10.0, 1: 10.0, 2: 10.0}, {0: states[0]})
    assert same.counterfactual_values["loo"][0] == same.values["loo"][0]
    assert "counterfactual_0_unique" not in same.evaluations  # identical update: nothing re-scored


@pytest.mark.parametrize("name,params", [("fedavg", {}), ("fedmedian", {}), ("fedtrimmedavg", {"beta": 0.2}),
                                         ("krum", {"num_malicious_nodes": 1}),
                                         ("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),
                                         ("bulyan", {"num_malicious_nodes": 1})])
def test_grand_coalition_is_the_model_the_wrapped_strategy_produced(splits, name, params):
    """The round game aggregates coalitions with the wrapped Flower strategy's own rule."""
    torch.manual_seed(1)
    n = 7
    w_t = _state(build_model("cnn"))
    states = []
    for pid in range(n):
        m = build_model("cnn")
        m.load_state_dict(w_t)
        with torch.no_grad():
            for p in m.parameters():
                p.add_((0.02 + 0.03 * pid) * torch.randn_like(p))
        states.append(_state(m))
    x_val, y_val = splits.x_val[:300], splits.y_val[:300]
    flower, rule = build_aggregator(name, params, n)
    scorer = RoundScorer(build_model("cnn"), x_val, y_val, [("loo", {})], utility="neg_ce", aggregate=rule)
    records = []
    strategy = AttributedStrategy(flower, scorer, central_evaluate=lambda a: {"accuracy": 0.0},
                                  on_round=records.append,
                                  job_info={"arm": "honest", "seed": 0, "attacker_ids": []}, min_clients=n)
    strategy._global = ArrayRecord(w_t)
    arrays, _ = strategy.aggregate_train(1, [_reply(states[p], 10 + 5 * p, p) for p in range(n)])
    produced = arrays.to_torch_state_dict()
    game = scorer._game(w_t, dict(enumerate(states)), {p: 10.0 + 5 * p for p in range(n)})
    grand = game.aggregate(game.full_mask)
    flat = scorer.utility.layout.flatten(produced).to(grand.dtype)
    assert torch.allclose(grand, flat, atol=1e-6, rtol=0)
    m = build_model("cnn")
    m.load_state_dict(produced)
    direct = float(scorer.utility(flat[None])[0])
    assert game.value(game.full_mask) == pytest.approx(direct, abs=1e-6)
    if name != "fedavg":  # the rule matters: FedAvg's weighted mean gives another model
        fedavg_game = RoundScorer(build_model("cnn"), x_val, y_val, [("loo", {})], utility="neg_ce")._game(
            w_t, dict(enumerate(states)), {p: 10.0 + 5 * p for p in range(n)})
        assert not torch.allclose(fedavg_game.aggregate(fedavg_game.full_mask), grand, atol=1e-6)


@pytest.mark.parametrize("name,params,needle", [
    ("bulyan", {"num_malicious_nodes": 2}, "4f + 3"),
    ("fedtrimmedavg", {"beta": 0.1}, "trims"),
    ("krum", {"num_malicious_nodes": 5}, "n - f - 2"),
    ("fedmedian", {"bta": 0.1}, "unknown parameter"),
    ("fedmedain", {}, "did you mean 'fedmedian'"),
])
def test_invalid_aggregator_settings_are_one_clear_error(name, params, needle):
    from fedattr.strategies import check_aggregator

    problem = check_aggregator(name, params, 7)
    assert problem is not None and needle in problem


def test_a_detector_in_filter_mode_keeps_a_flagged_update_out_of_aggregation_and_attribution(splits, round_setup):
    w_t, _ = round_setup
    gen = torch.Generator().manual_seed(3)
    # Five benign updates of one scale (norms within a few per cent), one 50x larger.
    states = [{k: w_t[k] + 0.05 * torch.randn(w_t[k].shape, generator=gen) for k in w_t} for _ in range(5)]
    huge = {k: w_t[k] + 50 * (states[0][k] - w_t[k]) for k in w_t}
    x_val, y_val = splits.x_val[:200], splits.y_val[:200]
    fedavg, _ = build_aggregator("fedavg", {}, 6)
    scorer = RoundScorer(build_model("cnn"), x_val, y_val, [("loo", {})])
    records = []
    strategy = AttributedStrategy(fedavg, scorer, central_evaluate=lambda a: {"accuracy": 0.0},
                                  on_round=records.append, detectors=DetectorStep([("norm", {}, "filter")]),
                                  job_info={"arm": "honest", "seed": 0, "attacker_ids": [5]}, min_clients=3)
    strategy._global = ArrayRecord(w_t)
    replies = [_reply(states[p], 10, p) for p in range(5)] + [_reply(huge, 10, 5, "attacker")]
    arrays, _ = strategy.aggregate_train(1, replies)
    strategy.evaluate(1, arrays)
    (record,) = records
    assert record.filtered == [5]
    assert record.detectors["norm"].flags[5] is True
    assert record.detectors["norm"].ranks[5] == 1
    assert record.clients == [0, 1, 2, 3, 4]
    assert 5 not in record.values["loo"]
    got = arrays.to_torch_state_dict()
    k = "classifier.1.weight"
    expected = sum(states[p][k] for p in range(5)) / 5
    assert torch.allclose(got[k], expected, atol=1e-6)
