"""The round no client can take over (fedattr.strategies: identity, weights, bounded waits) and the
wrapper in any Flower app, without a Flower runtime (a fake Grid and messages built by hand)."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedattr.protocol import make_reply
from fedattr.report import load_results
from fedattr.strategies import AttributedStrategy, IdentityBinder, RoundFailure, WeightPolicy, screen_replies

IN, CLASSES = 12, 3


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def _val(n: int = 60, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _states(k: int, seed: int = 2) -> tuple[dict, list[dict]]:
    w = {n: t.detach().clone() for n, t in _model().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    return w, [{n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in w.items()} for _ in range(k)]


def _sent(node: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=node, message_type="train")


def _reply(state: dict, n: float, node: int, pid: int | None = None) -> Message:
    """A fedattr reply claiming ``pid``, or (pid None) a stock ClientApp's arrays + metrics."""
    if pid is None:
        content = RecordDict({"arrays": ArrayRecord(state),
                              "metrics": MetricRecord({"num-examples": n, "train_loss": 0.1})})
    else:
        content = make_reply(state, num_examples=1, train_loss=0.1, partition_id=pid, role="benign",
                             label_histogram=[1, 1, 1])
        content.metric_records["metrics"]["num-examples"] = n
    return Message(content=content, reply_to=_sent(node))


def _error(node: int) -> Message:
    return Message(error=Error(code=0, reason="Node Unavailable"), reply_to=_sent(node))


class FakeGrid:
    """The part of a Grid the strategy's sampling reads: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)
        self.calls = 0

    def get_node_ids(self):
        self.calls += 1
        return list(self.nodes)


def _strategy(k: int = 3, **kw) -> AttributedStrategy:
    x, y = _val()
    fedavg = kw.pop("flower", None) or FedAvg(fraction_evaluate=0.0, min_available_nodes=k, min_train_nodes=k)
    return AttributedStrategy(fedavg, model=_model(), x_val=x, y_val=y, evaluators=["loo"], **kw)


def _round(strategy: AttributedStrategy, w: dict, server_round: int, grid: FakeGrid, replies_for):
    messages = list(strategy.configure_train(server_round, ArrayRecord(w), ConfigRecord(), grid))
    sent = [m.metadata.dst_node_id for m in messages]
    return sent, strategy.aggregate_train(server_round, replies_for(sent))


# ----------------------------------------------------------------------------- identity


def test_an_impostor_that_replies_first_never_displaces_its_victim():
    w, (victim, impostor, other) = _states(3)
    ref = {k: v.numpy() for k, v in w.items()}
    binder = IdentityBinder(num_partitions=3)
    # round 1: each node claims its own partition and is bound to it
    first = screen_replies([_reply(victim, 10, 100, 0), _reply(impostor, 10, 200, 1), _reply(other, 10, 300, 2)],
                           ref, identities=binder)
    assert [(p, r.node_id) for p, _, r in first.accepted] == [(0, 100), (1, 200), (2, 300)]
    # round 2: node 200 claims the victim's id and arrives first; the victim keeps its place
    second = screen_replies([_reply(impostor, 10, 200, 0), _reply(victim, 10, 100, 0), _reply(other, 10, 300, 2)],
                            ref, identities=binder)
    assert {p: r.node_id for p, _, r in second.accepted} == {0: 100, 2: 300}
    assert torch.equal(second.replies[0].state["0.weight"], victim["0.weight"])
    (rej,) = second.rejected
    assert (rej["node_id"], rej["partition_id"], rej["claimed_partition_id"]) == (200, 1, 0)
    assert "bound to partition 1" in rej["reason"]


def test_a_contested_first_claim_goes_to_nobody_in_any_order_and_a_known_node_list_decides_it():
    w, (victim, impostor) = _states(2)
    ref = {k: v.numpy() for k, v in w.items()}
    for order in ([_reply(impostor, 10, 200, 0), _reply(victim, 10, 100, 0)],
                  [_reply(victim, 10, 100, 0), _reply(impostor, 10, 200, 0)]):
        out = screen_replies(order, ref, identities=IdentityBinder(2))
        assert out.accepted == [] and {r["node_id"] for r in out.rejected} == {100, 200}
        assert all("claimed by 2 unbound nodes" in r["reason"] for r in out.rejected)
    known = IdentityBinder(2, known={100: 0, 200: 1})
    out = screen_replies([_reply(impostor, 10, 200, 0), _reply(victim, 10, 100, 0)], ref, identities=known)
    assert [(p, r.node_id) for p, _, r in out.accepted] == [(0, 100)]
    assert out.rejected[0]["node_id"] == 200 and out.rejected[0]["partition_id"] == 1


def test_claims_out_of_range_and_error_replies_are_tied_to_node_and_partition():
    w, (a, b, c) = _states(3)
    ref = {k: v.numpy() for k, v in w.items()}
    binder = IdentityBinder(3, known={300: 2})
    out = screen_replies([_reply(a, 10, 100, 0), _reply(b, 10, 200, 7), _reply(c, 10, 400, -1), _error(300)],
                         ref, identities=binder)
    assert [p for p, _, _ in out.accepted] == [0]
    why = {r["node_id"]: r for r in out.rejected}
    assert "out of range" in why[200]["reason"] and why[200]["partition_id"] is None
    assert "out of range" in why[400]["reason"]
    assert why[300]["partition_id"] == 2 and "Node Unavailable" in why[300]["reason"]
    # a node sends one reply per round
    again = screen_replies([_reply(a, 10, 100, 0), _reply(a, 10, 100, 0)], ref, identities=binder)
    assert len(again.accepted) == 1 and "second reply" in again.rejected[0]["reason"]


# ----------------------------------------------------------------------------- weights


def test_an_overreported_count_is_capped_before_aggregation_and_scoring_and_both_are_recorded():
    w, states = _states(4)
    records = []
    strategy = _strategy(4, on_round=records.append, num_partitions=4)
    strategy._global = ArrayRecord(w)
    claims = [1.5e12, 40, 50, 60]  # partition 0 claims 10^9 times its data
    arrays, _ = strategy.aggregate_train(1, [_reply(states[p], claims[p], 100 + p, p) for p in range(4)])
    (rec,) = records
    cap = 4 * 55.0  # 4x the median claim
    assert rec.claimed_num_examples == {0: 1.5e12, 1: 40, 2: 50, 3: 60}
    assert rec.num_examples == {0: cap, 1: 40, 2: 50, 3: 60}
    used = [cap, 40, 50, 60]
    got = arrays.to_torch_state_dict()
    for k in w:
        expected = sum(u * states[p][k] for p, u in enumerate(used)) / sum(used)
        assert torch.allclose(got[k], expected, atol=1e-6)
    # honest claims are under the cap: used as claimed
    assert WeightPolicy().apply({0: 10, 1: 34.5, 2: 10}) == {0: 10, 1: 34.5, 2: 10}
    assert WeightPolicy(None).apply({0: 1e300, 1: 1}) == {0: 1e300, 1: 1}
    with pytest.raises(ValueError, match="max_weight_ratio"):
        WeightPolicy(0.5)


# ----------------------------------------------------------------------------- bounded waits


def test_a_round_waits_for_absent_nodes_at_most_the_timeout_and_records_them_missing():
    w, states = _states(3)
    strategy = _strategy(3, num_partitions=3, round_timeout_s=0.5, min_clients=2)
    full = FakeGrid([100, 200, 300])
    _, (arrays, _) = _round(strategy, w, 1, full, lambda sent: [_reply(states[(n // 100) - 1], 10, n, n // 100 - 1)
                                                               for n in sent])
    assert strategy.rounds_[0].clients == [0, 1, 2] and strategy.rounds_[0].missing_partitions == []
    assert strategy.identities.bindings_ == {100: 0, 200: 1, 300: 2}
    # node 300 is gone: Flower's own sampling would wait forever for min_available_nodes = 3
    gone = FakeGrid([100, 200])
    t0 = time.monotonic()
    sent, _ = _round(strategy, w, 2, gone, lambda sent: [_reply(states[(n // 100) - 1], 10, n) for n in sent])
    assert 0.4 < time.monotonic() - t0 < 5
    assert sorted(sent) == [100, 200]
    assert strategy.strategy.min_available_nodes == 3  # lowered for the sampling only
    r2 = strategy.rounds_[1]
    assert r2.clients == [0, 1] and r2.missing == 1 and r2.missing_partitions == [2]
    # a node sent a message that never answers (past the reply timeout) is missing as well
    with pytest.raises(RoundFailure, match="round 3: 1 valid replies, fewer than min_clients = 2"):
        _round(strategy, w, 3, full, lambda sent: [_reply(states[0], 10, 100)])
    assert strategy.failure.record.missing_partitions == [1, 2]


def test_a_node_silent_last_round_is_not_waited_for_again_and_rejoins_when_connected():
    w, states = _states(3)
    strategy = _strategy(3, num_partitions=3, round_timeout_s=2.0, min_clients=2)
    answer = lambda sent: [_reply(states[(n // 100) - 1], 10, n, n // 100 - 1) for n in sent]  # noqa: E731
    _round(strategy, w, 1, FakeGrid([100, 200, 300]), answer)
    gone = FakeGrid([100, 200])
    t0 = time.monotonic()
    _round(strategy, w, 2, gone, answer)  # the first round without node 300: one bounded wait
    assert time.monotonic() - t0 > 1.9 and strategy.rounds_[1].missing_partitions == [2]
    t0 = time.monotonic()
    _round(strategy, w, 3, gone, answer)  # still gone: not waited for again
    assert time.monotonic() - t0 < 1.0 and strategy.rounds_[2].missing_partitions == [2]
    _round(strategy, w, 4, FakeGrid([100, 200, 300]), answer)  # back: in the round at once
    assert strategy.rounds_[3].clients == [0, 1, 2] and strategy.rounds_[3].missing_partitions == []


def test_fewer_connected_nodes_than_min_clients_fails_the_round_with_its_reason():
    w, _ = _states(3)
    strategy = _strategy(3, num_partitions=3, round_timeout_s=0.2, min_clients=3)
    with pytest.raises(RoundFailure, match=r"round 1: 2 nodes connected .* fewer than min_clients = 3") as exc:
        strategy.configure_train(1, ArrayRecord(w), ConfigRecord(), FakeGrid([100, 200]))
    assert exc.value.record.missing_partitions == [0, 1, 2]  # nothing bound yet: every partition


# ----------------------------------------------------------------------------- any Flower app


def test_stock_client_replies_get_stable_player_indices_and_typed_records():
    w, states = _states(3)
    seen = []
    strategy = _strategy(3, on_round=seen.append, central_evaluate=lambda arrays: {"accuracy": 0.5})
    grid = FakeGrid([900, 500, 700])
    for rnd, order in ((1, [900, 500, 700]), (2, [700, 900, 500])):  # arrival order does not matter
        _round(strategy, w, rnd, grid, lambda sent, order=order: [_reply(states[[500, 700, 900].index(n)], 10 + n, n)
                                                                  for n in order])
    assert [r.round for r in strategy.rounds_] == [1, 2] and seen == strategy.rounds_
    for rec in strategy.rounds_:
        assert rec.node_ids == {0: 500, 1: 700, 2: 900} and rec.clients == [0, 1, 2]
        assert rec.roles == {0: "benign", 1: "benign", 2: "benign"} and rec.label_histograms == {}
        assert set(rec.values["loo"]) == {0, 1, 2} and rec.test == {"accuracy": 0.5}
        assert (rec.arm, rec.seed, rec.attacker_ids) == ("run", 0, [])


def test_out_dir_results_are_read_by_fedattr_report(tmp_path):
    w, states = _states(3)

    class Loop(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            if not messages or messages[0].metadata.message_type != "train":
                return []
            return [_reply(states[[1, 2, 3].index(m.metadata.dst_node_id)], 20, m.metadata.dst_node_id)
                    for m in messages]

    strategy = _strategy(3, out_dir=tmp_path / "res", central_evaluate=lambda arrays: {"accuracy": 0.5})
    strategy.start(grid=Loop([1, 2, 3]), initial_arrays=ArrayRecord(w), num_rounds=2)
    results = load_results(tmp_path / "res")
    (job,) = results.jobs.values()
    assert job.status == "finished" and [r.round for r in job.rounds] == [1, 2]
    assert job.rounds[-1].values["loo"].keys() == {0, 1, 2}


def test_a_round_in_which_every_reply_is_rejected_stops_with_a_clear_error():
    w, states = _states(2)
    strategy = _strategy(2)
    strategy._global = ArrayRecord(w)
    nan = {k: v.clone() for k, v in states[0].items()}
    nan["0.weight"][0, 0] = float("nan")
    with pytest.raises(RoundFailure, match="0 valid replies, fewer than min_clients = 1"):
        strategy.aggregate_train(1, [_reply(nan, 10, 1), _error(2)])
    assert len(strategy.failure.record.rejected) == 2


def test_bad_input_is_one_clear_error_before_round_one():
    x, y = _val()
    with pytest.raises(ValueError, match="unknown evaluator|shapely"):
        AttributedStrategy(FedAvg(), model=_model(), x_val=x, y_val=y, evaluators=["shapely"])
    with pytest.raises(ValueError, match="utility = 'f1'"):
        AttributedStrategy(FedAvg(), model=_model(), x_val=x, y_val=y, utility="f1")
    with pytest.raises(TypeError, match="on_round must be callable"):
        AttributedStrategy(FedAvg(), model=_model(), x_val=x, y_val=y, on_round="print")
    with pytest.raises(ValueError, match="give a scorer, or model, x_val and y_val"):
        AttributedStrategy(FedAvg())
    other = nn.Sequential(nn.Linear(IN, 5), nn.ReLU(), nn.Linear(5, CLASSES))
    strategy = AttributedStrategy(FedMedian(), model=_model(), x_val=x, y_val=y)
    grid = FakeGrid([1, 2])
    with pytest.raises(ValueError, match="does not match initial_arrays: '0.weight' has shape"):
        strategy.start(grid=grid, initial_arrays=ArrayRecord(other.state_dict()), num_rounds=1)
    assert grid.calls == 0  # nothing was sent


def test_the_superlinks_error_reply_for_a_dead_node_is_tied_to_that_nodes_partition():
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    w, states = _states(3)
    strategy = _strategy(3, num_partitions=3, round_timeout_s=1, min_clients=2)
    grid = FakeGrid([100, 200, 300])

    def send(sent_messages):
        for m in sent_messages:  # what Flower's Grid does when it pushes a message
            m.metadata.__dict__["_message_id"] = m.object_id
        return sent_messages

    messages = send(list(strategy.configure_train(1, ArrayRecord(w), ConfigRecord(), grid)))
    strategy.aggregate_train(1, [_reply(states[m.metadata.dst_node_id // 100 - 1], 10, m.metadata.dst_node_id,
                                        m.metadata.dst_node_id // 100 - 1) for m in messages])
    messages = send(list(strategy.configure_train(2, ArrayRecord(w), ConfigRecord(), grid)))
    to_300 = next(m for m in messages if m.metadata.dst_node_id == 300)
    dead = create_message_error_unavailable_res_message(to_300.metadata, "node_unavail")
    assert dead.metadata.src_node_id != 300  # the SuperLink answers, not the node
    strategy.aggregate_train(2, [_reply(states[0], 10, 100), _reply(states[1], 10, 200), dead])
    r2 = strategy.rounds_[1]
    assert r2.clients == [0, 1] and r2.missing_partitions == [] and r2.missing == 0
    (rej,) = r2.rejected
    assert (rej.node_id, rej.partition_id) == (300, 2) and "Node Unavailable" in rej.reason
