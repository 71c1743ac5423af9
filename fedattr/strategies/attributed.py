"""AttributedStrategy: per-round marginal-utility attribution around any Flower strategy.

The attribution studied in "On the Fragility of Data Attribution When Learning Is Distributed"
(ICML 2026): every round, every client's update is valued in the round game
v_t(S) = U(w_t + agg_S(g)) on the server's validation split, where agg is the wrapped strategy's
own rule. Like Flower's differential-privacy wrappers (``dp_fixed_clipping.py``), this strategy
wraps another one instead of subclassing it; the wrapped strategy aggregates, unmodified.

One round is a chain of steps, each a small object or function:

1. screen  (``screen.screen_replies``): reject and record replies that cannot be aggregated;
   strip testbed-only records;
2. detect  (``detect.DetectorStep``): every detector observes the updates (state across rounds)
   and flags clients; detectors in ``filter`` mode drop their flagged clients;
3. aggregate: the wrapped Flower strategy's ``aggregate_train`` on the kept replies;
4. score   (``fedattr.strategies.scoring.RoundScorer``): the evaluators on the round game, whose
   coalitions are aggregated by the same rule as step 3;
5. record  (``fedattr.protocol.RoundRecord``): one typed record per round, written once the
   central evaluation of w_{t+1} is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedattr.strategies.scoring import AttributionTotals, RoundScorer
from fedattr.protocol import RoundRecord
from fedattr.strategies.detect import DetectorStep
from fedattr.strategies.screen import screen_replies


class AttributedStrategy(Strategy):
    """Wrap a Flower strategy: screen, detect, aggregate with it, score, record.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Aggregates the round (FedAvg, FedMedian, FedTrimmedAvg, Krum, ...), unmodified.
    scorer : RoundScorer
        Runs the evaluators on the round game; its ``aggregate`` rule must be the strategy's.
    central_evaluate : callable
        ``central_evaluate(arrays) -> {"accuracy": ..., "loss": ...}`` on the test split.
    record_round : callable
        Receives each finished round's :class:`RoundRecord`.
    detectors : DetectorStep, optional
        The round's detectors (none by default).
    job_info : dict
        ``arm``, ``seed``, ``attacker_ids`` (and anything else) copied into every record.
    min_clients : int
        Valid replies a round needs; rounds with fewer are recorded as short.

    Attributes
    ----------
    totals : AttributionTotals
        Cumulative values, normalised values, ranks and counterfactual inflation so far.
    rejected : list of dict
        Every rejected reply of the job, with its round.
    short_rounds : list of int
        Rounds with fewer than ``min_clients`` valid replies.
    missing_total : int
        Replies that never arrived (node gone or round timeout), over the job.
    """

    def __init__(self, strategy: Strategy, scorer: RoundScorer, *,
                 central_evaluate: Callable[[ArrayRecord], dict[str, float]],
                 record_round: Callable[[RoundRecord], None], detectors: DetectorStep | None = None,
                 job_info: dict[str, Any] | None = None, min_clients: int = 1):
        super().__init__()
        self.strategy = strategy
        self.scorer = scorer
        self.central_evaluate = central_evaluate
        self.record_round = record_round
        self.detectors = detectors or DetectorStep([])
        self.job_info = dict(job_info or {})
        self.min_clients = int(min_clients)
        self.totals = AttributionTotals()
        self.rejected: list[dict] = []
        self.short_rounds: list[int] = []
        self.missing_total = 0
        self._global: ArrayRecord | None = None
        self._sent = 0
        self._pending: dict | None = None
        self._round_start = time.perf_counter()

    @property
    def weighted_by_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    def summary(self) -> None:
        """Log the wrapped strategy's settings and the attribution settings."""
        log(INFO, "\t├──> Attribution: %s; detectors: %s", [n for n, _ in self.scorer.evaluators],
            self.detectors.names or "none")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember w_t (the game's empty coalition); the wrapped strategy configures."""
        self._global = arrays
        self._round_start = time.perf_counter()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent = len(messages)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, detect, aggregate with the wrapped strategy, score; the record waits for evaluate."""
        t_train = time.perf_counter() - self._round_start
        replies = list(replies)
        missing = max(0, self._sent - len(replies))
        self.missing_total += missing
        reference = {k: v.numpy() for k, v in self._global.items()}
        screened = screen_replies(replies, reference, self.weighted_by_key)
        for r in screened.rejected:
            log(WARNING, "Rejected reply of partition %s in round %s: %s", r["partition_id"], server_round, r["reason"])
        self.rejected.extend({"round": server_round, **r} for r in screened.rejected)
        if missing:
            log(WARNING, "Round %s: %d of %d nodes did not reply in time", server_round, missing, self._sent)
        accepted = screened.replies
        global_state = self._global.to_torch_state_dict()
        detections, filtered = self.detectors.observe(server_round, global_state, accepted, self.scorer.utility.layout)
        kept = [(pid, msg) for pid, msg, _ in screened.accepted if pid not in filtered]
        if len(kept) < self.min_clients:
            self.short_rounds.append(server_round)
            log(WARNING, "Round %s: %d valid replies, fewer than min_clients = %d", server_round, len(kept),
                self.min_clients)
        t0 = time.perf_counter()
        arrays, metrics = self.strategy.aggregate_train(server_round, [m for _, m in kept])
        t_agg = time.perf_counter() - t0
        record: dict[str, Any] = {
            **self.job_info, "round": server_round, "clients": [p for p, _ in kept],
            "rejected": screened.rejected, "missing": missing, "detectors": detections,
            "filtered": sorted(filtered),
        }
        if arrays is None or not kept:
            log(WARNING, "Round %s: nothing was aggregated; the global model is unchanged", server_round)
            self._pending = {**record, "timings": {"train_s": t_train, "aggregate_s": t_agg}}
            return arrays, metrics
        kept_replies = {pid: accepted[pid] for pid, _ in kept}
        states = {p: r.state for p, r in kept_replies.items()}
        weights = {p: float(r.num_examples) for p, r in kept_replies.items()}
        counterfactuals = {p: r.counterfactual_state for p, r in kept_replies.items()
                           if r.counterfactual_state is not None}
        cf_weights = {p: float(r.counterfactual_num_examples) for p, r in kept_replies.items()
                      if r.counterfactual_num_examples is not None}
        scored = self.scorer.score(server_round, global_state, states, weights, counterfactuals, cf_weights)
        self.totals.update(scored)
        record.update({
            "roles": {p: r.role for p, r in kept_replies.items()},
            "num_examples": weights,
            "label_histograms": {p: r.label_histogram for p, r in kept_replies.items()},
            "values": scored.values,
            "counterfactual_values": {ev: v for ev, v in scored.counterfactual_values.items() if v},
            "counterfactual_vectors": {ev: v for ev, v in scored.counterfactual_vectors.items() if v},
            "attack_metrics": {p: r.attack_metrics for p, r in kept_replies.items() if r.attack_metrics},
            "cumulative": self.totals.cumulative,
            "cumulative_normalised": self.totals.normalised,
            "ranks": self.totals.ranks(),
            "evaluator_info": {k: v for k, v in scored.extra.items() if v},
            "utility_evaluations": scored.evaluations,
            "timings": {"train_s": t_train, "aggregate_s": t_agg, "detect_s": self.detectors.seconds,
                        "attribution_s": scored.seconds.pop("total"), "evaluators_s": scored.seconds,
                        "utility": scored.utility},
        })
        self._pending = record
        log(INFO, "Round %s attribution: %s", server_round,
            {ev: {p: round(v, 4) for p, v in vals.items()} for ev, vals in scored.values.items()})
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Delegated to the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegated to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """``evaluate_fn`` for ``Strategy.start``: central test metrics, then the round is recorded."""
        test = self.central_evaluate(arrays)
        if server_round > 0 and self._pending is not None:
            pending = self._pending
            pending.setdefault("timings", {})["round_s"] = time.perf_counter() - self._round_start
            self.record_round(RoundRecord.model_validate({**pending, "test": test}))
            self._pending = None
        return MetricRecord({k: float(v) for k, v in test.items()})
