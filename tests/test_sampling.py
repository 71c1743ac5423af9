"""Client sampling (cross-device): scenario keys, reproducible samples, the round game over the
sampled clients, and cumulative values as totals and per participation."""

from __future__ import annotations

import random

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedattr.core.errors import UserError
from fedattr.evaluators import CumulativeValues
from fedattr.protocol import CLIENT, PARTITION_ID
from fedattr.scenario import ScenarioError, scenario_from_dict
from fedattr.scenario.checks import sampling_problems
from fedattr.scenario.plan import plan_entry
from fedattr.strategies import AttributedStrategy
from fedattr.strategies.aggregators import build_aggregator
from fedattr.strategies.scoring import AttributionTotals, RoundAttribution

N = 12


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


# ------------------------------------------------------------------ cumulative values


def test_a_client_sampled_in_two_of_four_rounds_has_total_rate_and_count():
    a, b = 0.25, -0.0625
    cum = CumulativeValues()
    cum.update([0, 1], [a, 1.0])
    cum.update([1, 2], [2.0, 3.0])
    cum.update([0, 2], [b, 4.0])
    cum.update([1, 2], [5.0, 6.0])
    assert cum.total_[0] == a + b
    assert cum.rounds_present_[0] == 2
    assert cum.per_participation_[0] == (a + b) / 2
    assert cum.rounds_present_[1] == 3 and cum.per_participation_[1] == (1.0 + 2.0 + 5.0) / 3
    assert cum.as_array("per_participation", [0, 2]).tolist() == [(a + b) / 2, (3.0 + 4.0 + 6.0) / 3]


def test_attribution_totals_report_participations_and_rates_per_evaluator():
    totals = AttributionTotals()
    for vals in ({0: 0.5, 1: 1.0}, {1: 3.0, 2: 2.0}, {0: 1.5, 2: 4.0}, {1: 2.0, 2: 0.0}):
        totals.update(RoundAttribution({"loo": vals}, {}, {}, {}))
    assert totals.participations == {"loo": {0: 2, 1: 3, 2: 3}}
    assert totals.cumulative["loo"][0] == 2.0
    assert totals.per_participation["loo"] == {0: 1.0, 1: 2.0, 2: 2.0}


# ------------------------------------------------------------------ scenario keys


def _scenario(**over):
    data = {"name": "s", "num_clients": N, "attacker_ids": [], "arms": [{"name": "honest"}], **over}
    return scenario_from_dict(data)


def test_no_sampling_section_means_every_client():
    sc = _scenario()
    assert not sc.sampling.active and sc.sampling.sample_size(N) == N
    entry = plan_entry(sc, sc.arms[0], 0, job_dir="/tmp/x", job_id="j")
    assert not entry.sampling.active


def test_sampling_keys_set_the_sample_size_as_flower_does():
    sc = _scenario(sampling={"fraction_train": 0.25})
    assert sc.sampling.active and sc.sampling.sample_size(N) == 3
    assert _scenario(sampling={"fraction_train": 0.1, "min_train_nodes": 4}).sampling.sample_size(N) == 4
    assert plan_entry(sc, sc.arms[0], 0, job_dir="/tmp/x", job_id="j").sampling.fraction_train == 0.25


@pytest.mark.parametrize("section, words", [
    ({"fraction_train": 0.0}, ["sampling.fraction_train"]),
    ({"fraction_train": 1.5}, ["sampling.fraction_train"]),
    ({"fraction_train": "0.1"}, ["sampling.fraction_train"]),
    ({"fraction_trian": 0.1}, ["fraction_trian", "fraction_train"]),
])
def test_bad_sampling_keys_are_one_clear_error(section, words):
    with pytest.raises(ScenarioError) as err:
        _scenario(sampling=section)
    for w in words:
        assert w in str(err.value)


def test_sampling_checks_name_the_field_and_the_limit():
    assert sampling_problems(_scenario(sampling={"fraction_train": 0.5})) == []
    too_many = sampling_problems(_scenario(sampling={"fraction_train": 0.5, "min_train_nodes": N + 1}))
    assert too_many == [f"sampling.min_train_nodes = {N + 1}: must be <= num_clients ({N})"]
    mc = sampling_problems(_scenario(sampling={"fraction_train": 0.25}, runtime={"min_clients": 4}))
    assert len(mc) == 1 and "runtime.min_clients = 4" in mc[0] and "set it <= 3" in mc[0]
    bulyan = _scenario(sampling={"fraction_train": 0.5}, aggregation={"strategy": "bulyan",
                                                                         "params": {"num_malicious_nodes": 2}})
    assert any("6 sampled clients" in p and "Bulyan" in p for p in sampling_problems(bulyan))


def test_check_scenario_refuses_a_sample_smaller_than_min_clients():
    from fedattr.scenario.checks import check_scenario

    with pytest.raises(UserError, match="runtime.min_clients"):
        check_scenario(_scenario(sampling={"fraction_train": 0.25}, runtime={"min_clients": 5}),
                       resources=False, data=False)


def test_build_aggregator_passes_the_sampling_keys_to_the_flower_strategy():
    strategy, _ = build_aggregator("fedavg", {}, N, sampling={"fraction_train": 0.25, "min_train_nodes": 2,
                                                              "min_available_nodes": N})
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (0.25, 2, N)
    full, _ = build_aggregator("fedavg", {}, N)
    assert (full.fraction_train, full.min_train_nodes, full.min_available_nodes) == (1.0, N, N)


# ------------------------------------------------------------------ the strategy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


class _Federation:
    """A grid of N nodes with random ids (as Flower's), each answering queries with its partition."""

    def __init__(self, rng_seed: int, liar: tuple[int, int] | None = None):
        rng = random.Random(rng_seed)
        self.partition = {rng.getrandbits(63) + 1: pid for pid in range(N)}
        self.liar = liar  # (true partition, claimed partition)
        self.queries = 0

    def get_node_ids(self):
        return list(self.partition)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            assert m.metadata.message_type == "query"
            self.queries += 1
            pid = self.partition[m.metadata.dst_node_id]
            if self.liar and pid == self.liar[0]:
                pid = self.liar[1]
            replies.append(Message(content=RecordDict({CLIENT: ConfigRecord({PARTITION_ID: pid})}), reply_to=m))
        return replies

    def reply(self, sent: Message, model: nn.Module) -> Message:
        pid = self.partition[sent.metadata.dst_node_id]
        torch.manual_seed(100 + pid)
        state = {k: v + 0.01 * torch.randn(v.shape) for k, v in model.state_dict().items()}
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 10}),
                              CLIENT: ConfigRecord({PARTITION_ID: pid})})
        return Message(content=content, reply_to=sent)


def _run(fed: _Federation, seed: int | None, rounds: int = 3, drop: int | None = None) -> AttributedStrategy:
    torch.manual_seed(1)
    x_val, y_val = torch.randn(20, 1, 2, 2), torch.randint(0, 3, (20,))
    strategy = AttributedStrategy(
        FedAvg(fraction_train=0.25, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=N),
        model=_model(), x_val=x_val, y_val=y_val, evaluators=["loo"], num_partitions=N, min_clients=2,
        round_timeout_s=5, sample_seed=seed)
    arrays = ArrayRecord(_model().state_dict())
    for server_round in range(1, rounds + 1):
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(), fed))
        replies = [fed.reply(m, _model()) for m in sent
                   if not (drop is not None and fed.partition[m.metadata.dst_node_id] == drop)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
    return strategy


def test_the_sample_is_a_function_of_seed_and_round_over_partitions_not_node_ids():
    first, second = _run(_Federation(1), seed=7), _run(_Federation(2), seed=7)
    samples = [rec.model_extra["sampled"] for rec in first.rounds_]
    assert samples == [rec.model_extra["sampled"] for rec in second.rounds_]
    assert all(len(s) == 3 for s in samples) and len({tuple(s) for s in samples}) > 1
    other = [rec.model_extra["sampled"] for rec in _run(_Federation(1), seed=8).rounds_]
    assert other != samples


def test_the_partitions_are_asked_once_and_the_sampling_restores_pythons_random():
    fed = _Federation(3)
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    _run(fed, seed=0)
    assert fed.queries == N  # one query per node, before round 1 only
    assert random.random() == expected_next


def test_each_round_game_has_only_its_sampled_clients_and_only_they_can_be_missing():
    strategy = _run(_Federation(4), seed=3, rounds=3)
    for rec in strategy.rounds_:
        assert sorted(rec.values["loo"]) == rec.model_extra["sampled"] == rec.clients
        assert rec.missing == 0 and rec.missing_partitions == []
    dropped_round = strategy.rounds_[0].model_extra["sampled"][0]
    lossy = _run(_Federation(4), seed=3, rounds=1, drop=dropped_round)
    rec = lossy.rounds_[0]
    assert rec.missing == 1 and rec.missing_partitions == [dropped_round]
    assert dropped_round not in rec.values["loo"]


def test_cumulative_counts_only_the_rounds_a_client_was_sampled_in():
    strategy = _run(_Federation(5), seed=11, rounds=4)
    counts: dict[int, int] = {}
    totals: dict[int, float] = {}
    for rec in strategy.rounds_:
        for pid, v in rec.values["loo"].items():
            counts[pid] = counts.get(pid, 0) + 1
            totals[pid] = totals.get(pid, 0.0) + v
    assert strategy.totals.participations["loo"] == counts
    for pid, c in counts.items():
        assert strategy.totals.per_participation["loo"][pid] == pytest.approx(totals[pid] / c, abs=1e-15)


def test_two_nodes_claiming_one_partition_in_the_query_are_both_left_unbound():
    # The node of partition 0 claims partition 1: the two claims of partition 1 collide and both
    # are refused (as for replies), so neither node is bound and both come last in sampling order.
    fed = _Federation(6, liar=(0, 1))
    strategy = _run(fed, seed=2, rounds=1)
    bound = set(strategy.identities.bindings_.values())
    assert 0 not in bound and 1 not in bound
    assert len(strategy.identities.bindings_) == N - 2


# ------------------------------------------------------------------ the report


def _job(values_by_round: list[dict[int, float]]):
    from fedattr.protocol import RoundRecord
    from fedattr.report.reader import JobResult

    rounds, total = [], {}
    for r, vals in enumerate(values_by_round, 1):
        for p, v in vals.items():
            total[p] = total.get(p, 0.0) + v
        rounds.append(RoundRecord.model_validate({
            "arm": "honest", "seed": 0, "attacker_ids": [], "round": r, "clients": sorted(vals),
            "values": {"loo": vals}, "cumulative": {"loo": dict(total)}, "sampled": sorted(vals)}))
    return JobResult("honest", 0, rounds, None, len(rounds))


def test_the_report_counts_participations_and_divides_the_total_by_them():
    from fedattr.report.summary import participations, per_participation

    a, b = 0.5, 0.25
    job = _job([{0: a, 1: 1.0}, {1: 2.0, 2: 3.0}, {0: b, 2: 1.0}, {1: 4.0, 2: 2.0}])
    assert participations(job, "loo") == {"0": 2, "1": 3, "2": 3}
    rates = per_participation(job, "loo")
    assert rates["0"] == (a + b) / 2 and rates["1"] == 7.0 / 3 and rates["2"] == 2.0
    assert job.cumulative("loo")["0"] == a + b


# ------------------------------------------------------------------ a real `flwr run .`


@pytest.mark.slow
def test_flwr_run_samples_the_partitions_seed_and_round_determine(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from fedattr.launch.processes import project_root
    from fedattr.launch.simulation import simulation_superlink
    from fedattr.results.store import read_json, read_jsonl

    flwr = str(Path(sys.executable).parent / "flwr")
    out = tmp_path / "out"
    with simulation_superlink(tmp_path / "flwr_home", tmp_path / "superlink.log") as (conn, env):
        proc = subprocess.run(
            [flwr, "run", str(project_root()), conn, "--run-config",
             f"scenario='tests/compose/tiny.toml' num-server-rounds=3 seed=5 evaluators='loo' out-dir='{out}' "
             "set='num_clients=4; attacker_ids=[]; sampling.fraction_train=0.5'",
             "--federation-config", "num-supernodes=4 client-resources-num-cpus=1", "--stream"],
            env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rounds = read_jsonl(out / "jobs" / "honest__s5" / "rounds.jsonl")
    # The nodes in partition order, sampled by Python's random seeded by (seed, round): the same
    # draw over the partition ids 0..3, whatever Flower's node ids were.
    expected = []
    for server_round in (1, 2, 3):
        random.seed(f"fedattr-sample:5:{server_round}")
        expected.append(sorted(random.sample(range(4), 2)))
    assert [r["sampled"] for r in rounds] == expected
    assert [sorted(int(p) for p in r["values"]["loo"]) for r in rounds] == expected
    summary = read_json(out / "jobs" / "honest__s5" / "summary.json")
    counts = {int(p): c for p, c in summary["participations"]["loo"].items()}
    assert counts == {p: sum(p in s for s in expected) for p in range(4) if any(p in s for s in expected)}
