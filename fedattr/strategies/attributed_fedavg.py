"""AttributedFedAvg: Federated Averaging that scores every client every round.

FedAvg as in McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS 2017, https://arxiv.org/abs/1602.05629), plus per-round
marginal-utility attribution of each client's update on the server's validation split, as
studied in "On the Fragility of Data Attribution When Learning Is Distributed" (ICML 2026).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedattr.attribution import AttributionLedger, RoundScorer
from fedattr.strategies.validation import check_train_reply
from fedattr.task import ATTACK_METRICS_KEY, COUNTERFACTUAL_KEY


class AttributedFedAvg(FedAvg):
    """FedAvg that scores every client's update each round and records the round.

    Each round it turns the replies into updates keyed by partition id, rejects (and records)
    replies that could not be aggregated safely, aggregates the rest through ``FedAvg``, runs
    the configured evaluators on the round game v_t(S) = U(w_t + FedAvg_S(g)), and hands one
    record per round to ``record_round`` once the central evaluation of w_{t+1} is known.

    Parameters
    ----------
    scorer : RoundScorer
        Builds the round game and runs the evaluators (one shared utility cache).
    central_evaluate : callable
        ``central_evaluate(arrays) -> {"accuracy": float, "loss": float}`` on the test split.
    record_round : callable
        Receives each finished round's record (a JSON-able dict).
    num_classes : int
        Number of classes (for label histograms).
    job_info : dict
        Fields copied into every record (e.g. ``arm``, ``seed``, ``attacker_ids``).
    **fedavg_kwargs
        Passed to ``flwr.serverapp.strategy.FedAvg``.
    """

    def __init__(self, scorer: RoundScorer, central_evaluate: Callable[[ArrayRecord], dict[str, float]],
                 record_round: Callable[[dict], None], *, num_classes: int, job_info: dict[str, Any] | None = None,
                 **fedavg_kwargs: Any):
        super().__init__(**fedavg_kwargs)
        self.scorer = scorer
        self.central_evaluate = central_evaluate
        self.record_round = record_round
        self.num_classes = num_classes
        self.job_info = dict(job_info or {})
        self.ledger = AttributionLedger()
        self.rejected: list[dict] = []
        self._global: ArrayRecord | None = None
        self._pending: dict | None = None
        self._round_start = time.perf_counter()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Remember w_t (the game's empty coalition) and configure as FedAvg does."""
        self._global = arrays
        self._round_start = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def _screen(self, server_round: int, replies: Iterable[Message]) -> tuple[list[tuple[int, Message]], dict, dict, list[dict]]:
        reference = {k: v.numpy() for k, v in self._global.items()}
        accepted: dict[int, Message] = {}
        counterfactuals, attack_metrics, rejected = {}, {}, []
        for msg in replies:
            if msg.has_error():
                rejected.append({"node_id": msg.metadata.src_node_id, "partition_id": None,
                                 "reason": f"error reply: {msg.error.reason}"})
                continue
            content = msg.content
            client = content.config_records.get("client")
            pid = client.get("partition-id") if client is not None else None
            if not isinstance(pid, int):
                reason = "no partition-id in the reply's 'client' ConfigRecord"
            elif pid in accepted:
                reason = f"duplicate partition-id {pid}"
            else:
                reason = check_train_reply(content, reference, self.weighted_by_key)
            if reason is not None:
                rejected.append({"node_id": msg.metadata.src_node_id, "partition_id": pid, "reason": reason})
                log(WARNING, "Rejected reply of partition %s in round %s: %s", pid, server_round, reason)
                continue
            # Testbed-only records never reach aggregation: the aggregated reply is benign-shaped.
            if COUNTERFACTUAL_KEY in content.array_records:
                counterfactuals[pid] = content.array_records[COUNTERFACTUAL_KEY].to_torch_state_dict()
                del content[COUNTERFACTUAL_KEY]
            if ATTACK_METRICS_KEY in content.config_records:
                attack_metrics[pid] = dict(content.config_records[ATTACK_METRICS_KEY])
                del content[ATTACK_METRICS_KEY]
            accepted[pid] = msg
        # A fixed order makes the floating-point sum of FedAvg, and so the run, reproducible.
        return sorted(accepted.items()), counterfactuals, attack_metrics, rejected

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen replies, aggregate with FedAvg, score the round."""
        t_train = time.perf_counter() - self._round_start
        accepted, counterfactuals, attack_metrics, rejected = self._screen(server_round, list(replies))
        self.rejected.extend({"round": server_round, **r} for r in rejected)
        t0 = time.perf_counter()
        arrays, metrics = super().aggregate_train(server_round, [m for _, m in accepted])
        t_agg = time.perf_counter() - t0
        record: dict[str, Any] = {**self.job_info, "round": server_round, "clients": [p for p, _ in accepted],
                                  "rejected": rejected}
        if arrays is None:
            log(WARNING, "Round %s: no reply could be aggregated; the global model is unchanged", server_round)
            self._pending = {**record, "values": {}, "timings": {"train_s": t_train, "aggregate_s": t_agg}}
            return arrays, metrics
        states = {p: m.content["arrays"].to_torch_state_dict() for p, m in accepted}
        weights = {p: float(m.content[next(iter(m.content.metric_records))][self.weighted_by_key]) for p, m in accepted}
        hists = {p: list(m.content["client"]["label-histogram"]) for p, m in accepted}
        roles = {p: str(m.content["client"]["role"]) for p, m in accepted}
        # An honest reply would have reported the local example count (over-reporting attacks differ).
        cf_weights = {p: float(m["local_count"]) for p, m in attack_metrics.items()
                      if p in counterfactuals and isinstance(m.get("local_count"), (int, float))}
        scored = self.scorer.score(server_round, self._global.to_torch_state_dict(), states, weights,
                                   counterfactuals, cf_weights)
        self.ledger.update(scored)
        record.update({
            "roles": roles,
            "num_examples": weights,
            "label_histograms": hists,
            "values": scored.values,
            "counterfactual_values": {ev: v for ev, v in scored.counterfactual_values.items() if v},
            "attack_metrics": attack_metrics,
            "cumulative": self.ledger.cumulative,
            "cumulative_normalised": self.ledger.normalised,
            "ranks": self.ledger.ranks(),
            "evaluator_info": {k: v for k, v in scored.extra.items() if v},
            "utility_evaluations": scored.evaluations,
            "timings": {"train_s": t_train, "aggregate_s": t_agg, "attribution_s": scored.seconds.pop("total"),
                        "evaluators_s": scored.seconds},
        })
        self._pending = record
        log(INFO, "Round %s attribution: %s", server_round,
            {ev: {p: round(v, 4) for p, v in vals.items()} for ev, vals in scored.values.items()})
        return arrays, metrics

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """``evaluate_fn`` for ``Strategy.start``: central test metrics, then the round is recorded."""
        test = self.central_evaluate(arrays)
        if server_round > 0 and self._pending is not None:
            record = {**self._pending, "test": test}
            record.setdefault("timings", {})["round_s"] = time.perf_counter() - self._round_start
            self.record_round(_deep_copy(record))
            self._pending = None
        return MetricRecord({k: float(v) for k, v in test.items()})


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
