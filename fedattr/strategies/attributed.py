"""AttributedStrategy: per-round marginal-utility attribution around any Flower strategy.

The attribution studied in "On the Fragility of Data Attribution When Learning Is Distributed"
(ICML 2026): every round, every client's update is valued in the round game
v_t(S) = U(w_t + agg_S(g)) on the server's validation split, where agg is the wrapped strategy's
own rule. Like Flower's differential-privacy wrappers (``dp_fixed_clipping.py``), this strategy
wraps another one instead of subclassing it; the wrapped strategy aggregates, unmodified.

One round is a chain of steps, each a small object or function:

0. sample  (``configure_train``): wait at most ``round_timeout_s`` for the expected nodes (less
   those silent the round before: a dead node costs one wait, not one a round), then
   go on with those connected (the wrapped strategy samples among them; with ``sample_seed``,
   over the nodes in partition order under a per-round seed, so the sample is reproducible);
1. screen  (``screen.screen_replies``): reject and record replies that cannot be aggregated or
   whose identity is refused (``identity.IdentityBinder``); cap the claimed example counts
   (``weights.WeightPolicy``); strip testbed-only records;
2. detect  (``detect.DetectorStep``): every detector observes the updates (state across rounds)
   and flags clients; detectors in ``filter`` mode drop their flagged clients;
3. aggregate: the wrapped Flower strategy's ``aggregate_train`` on the kept replies;
4. score   (``fedattr.strategies.scoring.RoundScorer``): the evaluators on the round game, whose
   coalitions are aggregated by the same rule as step 3;
5. record  (``fedattr.protocol.RoundRecord``): one typed record per round, made in
   ``aggregate_train`` (with the central evaluation of w_{t+1} when one is given).

A round with fewer than ``min_clients`` connected nodes or valid replies raises
:class:`RoundFailure` (the job stops with its reason; Flower marks the run failed).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedattr.protocol import RoundRecord, client_identity
from fedattr.strategies.detect import DetectorStep
from fedattr.strategies.identity import IdentityBinder
from fedattr.strategies.scoring import AttributionTotals, RoundScorer
from fedattr.strategies.screen import screen_replies, sender
from fedattr.strategies.weights import DEFAULT_MAX_RATIO, WeightPolicy

#: What a record holds when the caller gives no ``job_info``.
DEFAULT_JOB_INFO = {"arm": "run", "seed": 0, "attacker_ids": []}


def keep_dtypes(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` with every array in the dtype of the same key in ``reference`` (the model sent).

    Flower's averaging strategies return integer buffers (BatchNorm's ``num_batches_tracked``) as
    floats; sent back as such, the next round's honest replies (integers again) would no longer
    match the global model. Integer arrays are rounded, then cast; arrays already in their dtype
    are kept as they are.
    """
    if all(arr.numpy().dtype == reference[k].dtype for k, arr in arrays.items() if k in reference):
        return arrays
    out = OrderedDict()
    for key, arr in arrays.items():
        values = arr.numpy()
        want = reference[key].dtype if key in reference else values.dtype
        if values.dtype != want:
            values = np.asarray(np.rint(values) if np.issubdtype(want, np.integer) else values).astype(want)
        out[key] = Array(values)
    return ArrayRecord(out)


class RoundFailure(RuntimeError):
    """A round that cannot go on (too few nodes or valid replies); ``record`` says what it saw."""

    def __init__(self, reason: str, record: RoundRecord):
        super().__init__(reason)
        self.reason = reason
        self.record = record


class AttributedStrategy(Strategy):
    """Wrap a Flower strategy: screen, detect, aggregate with it, score, record.

    Every round, each accepted client's update is valued in the round game
    v_t(S) = U(w_t + agg_S(g)) on the validation data, agg being the wrapped strategy's rule.
    A client is a player: its reply's ``partition-id`` claim checked against its Flower node's
    binding, or (a stock ClientApp's reply, ``arrays`` + ``metrics`` with ``num-examples``) a
    stable index given to its node.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Aggregates the round (FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, or a
        subclass of one), unmodified.
    scorer : RoundScorer, optional
        Runs the evaluators on the round game; its ``aggregate`` rule must be the strategy's.
        Without it, give ``model``, ``x_val`` and ``y_val``.
    model : torch.nn.Module, optional
        The global model's architecture; its parameters must match the replies' arrays.
    x_val, y_val : torch.Tensor, optional
        The server's validation split (the utility of the round game).
    evaluators : sequence of str or (str, dict)
        ``fedattr.evaluators`` registry names, with parameters where needed. Default ``("loo",)``.
    utility : {"accuracy", "neg_ce", "balanced_accuracy"}
        The round game's utility on the validation split.
    central_evaluate : callable, optional
        ``central_evaluate(arrays) -> {"accuracy": ..., "loss": ...}``: test metrics of the
        aggregated model, stored in each record's ``test``.
    on_round : callable, optional
        Receives each finished round's :class:`~fedattr.protocol.RoundRecord`.
    out_dir : str or Path, optional
        Also write the records as fedattr results (``fedattr report OUT_DIR`` reads them).
    detectors : DetectorStep, optional
        The round's detectors (none by default).
    job_info : dict, optional
        ``arm``, ``seed``, ``attacker_ids`` (and anything else) copied into every record.
    min_clients : int
        Valid replies (and connected nodes) a round needs; with fewer, :class:`RoundFailure`.
    num_partitions : int, optional
        The clients are partitions ``0 .. num_partitions - 1``: claims outside are refused and
        absent ones recorded as missing.
    node_partitions : dict of int -> int, optional
        Flower node id -> partition id, where the server knows it before round 1.
    round_timeout_s : float, optional
        Longest wait for the expected nodes (``num_partitions``, else the wrapped strategy's
        ``min_available_nodes``) before a round goes on with those connected. None: wait as the
        wrapped strategy does.
    max_weight_ratio : float or None
        A reply's example count is capped at this many times the round's median claim
        (default 4); None: no cap.
    sample_seed : int, optional
        Make the wrapped strategy's client sampling (``fraction_train`` < 1) a function of
        (``sample_seed``, round) over the partition ids: before round 1 a ``query`` message asks
        every unbound node for its partition (its claim, bound like a reply's), then each round
        the strategy samples from the nodes in partition order with Python's ``random`` seeded
        by (``sample_seed``, round). Each round's game is over the sampled clients that replied,
        and only they count as missing when they do not. None: the strategy samples as it does.

    Attributes
    ----------
    rounds_ : list of RoundRecord
        Every finished round, in order.
    totals : AttributionTotals
        Cumulative values, normalised values, ranks and counterfactual inflation so far.
    identities : IdentityBinder
        The node -> partition bindings (``identities.bindings_``).
    rejected : list of dict
        Every rejected reply of the job, with its round.
    missing_total : int
        Expected clients that never replied (node gone, not connected, or past the timeout).
    failure : RoundFailure or None
        The failure that stopped the job, if one did.

    Examples
    --------
    In a ServerApp, around any strategy and with any stock ClientApp::

        from fedattr import AttributedStrategy
        from flwr.serverapp.strategy import FedAvg

        strategy = AttributedStrategy(FedAvg(), model=Net(), x_val=x_val, y_val=y_val,
                                      evaluators=["loo", "shapley"], on_round=print)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                                num_rounds=3)
        strategy.rounds_[-1].values["shapley"]   # {player: value} of the last round
    """

    def __init__(self, strategy: Strategy, scorer: RoundScorer | None = None, *,
                 model: torch.nn.Module | None = None, x_val: torch.Tensor | None = None,
                 y_val: torch.Tensor | None = None, evaluators: Sequence[str | tuple[str, dict]] = ("loo",),
                 utility: str = "accuracy",
                 central_evaluate: Callable[[ArrayRecord], dict[str, float]] | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None, out_dir: str | Path | None = None,
                 detectors: DetectorStep | None = None, job_info: dict[str, Any] | None = None,
                 min_clients: int = 1, num_partitions: int | None = None,
                 node_partitions: dict[int, int] | None = None, round_timeout_s: float | None = None,
                 max_weight_ratio: float | None = DEFAULT_MAX_RATIO, sample_seed: int | None = None):
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}")
        for name, fn in (("central_evaluate", central_evaluate), ("on_round", on_round)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if int(min_clients) < 1:
            raise ValueError(f"min_clients = {min_clients}: must be >= 1")
        if round_timeout_s is not None and not float(round_timeout_s) > 0:
            raise ValueError(f"round_timeout_s = {round_timeout_s}: must be > 0, or None")
        self.strategy = strategy
        self.scorer = scorer if scorer is not None else _build_scorer(strategy, model, x_val, y_val, evaluators,
                                                                      utility)
        self.central_evaluate = central_evaluate
        self.on_round = on_round
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.detectors = detectors or DetectorStep([])
        self.job_info = {**DEFAULT_JOB_INFO, **dict(job_info or {})}
        self.min_clients = int(min_clients)
        self.num_partitions = None if num_partitions is None else int(num_partitions)
        self.round_timeout_s = None if round_timeout_s is None else float(round_timeout_s)
        self.sample_seed = None if sample_seed is None else int(sample_seed)
        self.weights = WeightPolicy(max_weight_ratio)
        self.identities = IdentityBinder(self.num_partitions, node_partitions)
        self.totals = AttributionTotals()
        self.rounds_: list[RoundRecord] = []
        self.rejected: list[dict] = []
        self.missing_total = 0
        self.failure: RoundFailure | None = None
        self._global: ArrayRecord | None = None
        self._sent: list[Message] = []
        self._sampled: list[int] | None = None
        self._silent = 0  # expected clients that did not reply last round
        self._round_start = time.perf_counter()
        self._recorder = None
        self._evaluated: tuple[ArrayRecord, dict[str, float]] | None = None

    @property
    def weighted_by_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    def summary(self) -> None:
        """Log the wrapped strategy's settings and the attribution settings."""
        log(INFO, "\t├──> Attribution: %s; detectors: %s; weight cap: %s x median", [n for n, _ in self.scorer.evaluators],
            self.detectors.names or "none", self.weights.max_ratio)
        self.strategy.summary()

    # ------------------------------------------------------------------ start: checks before round 1

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Check the model against ``initial_arrays``, then run Flower's loop (``Strategy.start``)."""
        problem = _state_mismatch(self.scorer.utility._template_state, initial_arrays)
        if problem:
            raise ValueError(f"the attribution model does not match initial_arrays: {problem}")
        if self.out_dir is None:
            return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                 evaluate_fn)
        self._recorder = _open_results(self.out_dir, self.job_info, num_rounds, self.scorer, self._players())
        t0 = time.perf_counter()
        initial = dict(self.central_evaluate(initial_arrays)) if self.central_evaluate is not None else {}
        try:
            result = super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                   evaluate_fn)
        except RoundFailure as exc:
            self._write_summary(num_rounds, initial, time.perf_counter() - t0, exc)
            raise
        self._write_summary(num_rounds, initial, time.perf_counter() - t0, None)
        return result

    def _players(self) -> int:
        bound = self.identities.bindings_.values()
        return max(self.num_partitions or 0, max(bound, default=-1) + 1, self._expected_nodes(), 2)

    def _write_summary(self, num_rounds: int, initial: dict[str, float], wall_s: float,
                       failure: RoundFailure | None) -> None:
        from fedattr.protocol import JobSummary

        _open_results(self.out_dir, self.job_info, num_rounds, self.scorer, self._players(), start=False)
        last = self.rounds_[-1].test if self.rounds_ and failure is None else None
        summary = JobSummary(
            status="failed" if failure else "finished", failure_reason=failure.reason if failure else None,
            arm=str(self.job_info["arm"]), seed=int(self.job_info["seed"]), rounds=int(num_rounds),
            rounds_recorded=len(self.rounds_), attacker_ids=list(self.job_info.get("attacker_ids") or []),
            initial_test=initial, final_test=last, cumulative=self.totals.cumulative,
            cumulative_per_participation=self.totals.per_participation, participations=self.totals.participations,
            cumulative_normalised=self.totals.normalised, ranks=self.totals.ranks(),
            counterfactual_inflation=self.totals.inflation, rejected=self.rejected,
            rejected_count=len(self.rejected), missing_count=self.missing_total,
            failed_round=failure.record.model_dump(mode="json") if failure else None, wall_s=wall_s)
        self._recorder.write_summary(summary.model_dump(mode="json"))

    # ------------------------------------------------------------------ step 0: bounded node wait

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember w_t (the game's empty coalition); wait boundedly for nodes; the wrapped strategy samples."""
        self._global = arrays
        self._round_start = time.perf_counter()
        self._evaluated = None
        self._sampled = None
        if self.sample_seed is not None:
            messages = self._configure_sampled(server_round, arrays, config, grid)
        elif self.round_timeout_s is None:
            messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        else:
            nodes = wait_for_nodes(grid, self._nodes_to_wait_for(), self.round_timeout_s)
            if len(nodes) < self.min_clients:
                self._fail(server_round, [], [], self._missing(set(), []),
                           f"{len(nodes)} nodes connected after waiting {self.round_timeout_s:.0f} s, fewer than "
                           f"min_clients = {self.min_clients}")
            with _minimums_at_most(self.strategy, len(nodes)):
                messages = list(self.strategy.configure_train(server_round, arrays, config, _Nodes(grid, nodes)))
        # Flower gives each message its id when it sends it: read them in aggregate_train.
        self._sent = messages
        return messages

    def _configure_sampled(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> list[Message]:
        """The wrapped strategy's sample, drawn from the nodes in partition order under a per-round seed."""
        timeout = float("inf") if self.round_timeout_s is None else self.round_timeout_s
        nodes = wait_for_nodes(grid, self._nodes_to_wait_for(), timeout)
        if len(nodes) < self.min_clients:
            self._fail(server_round, [], [], self._missing(set(), []),
                       f"{len(nodes)} nodes connected after waiting {timeout:.0f} s, fewer than "
                       f"min_clients = {self.min_clients}")
        unbound = [n for n in nodes if self.identities.partition_of(n) is None]
        if unbound:
            self._ask_partitions(grid, unbound)
            self._round_start = time.perf_counter()  # the round's training time starts after the question
        # Flower's node ids are random per run: ordered by partition, the seeded sample picks the
        # same partitions in every run (nodes that did not say theirs come last, by node id).
        bound = sorted((n for n in nodes if self.identities.partition_of(n) is not None),
                       key=self.identities.partition_of)
        ordered = bound + sorted(n for n in nodes if self.identities.partition_of(n) is None)
        with _minimums_at_most(self.strategy, len(ordered)), _seeded_random(self.sample_seed, server_round):
            messages = list(self.strategy.configure_train(server_round, arrays, config, _Nodes(grid, ordered)))
        self._sampled = sorted(p for p in (self.identities.partition_of(int(m.metadata.dst_node_id))
                                           for m in messages) if p is not None)
        log(INFO, "Round %s: %d sampled clients (partitions %s)", server_round, len(messages), self._sampled)
        return messages

    def _ask_partitions(self, grid: Grid, nodes: list[int]) -> None:
        """Bind ``nodes`` to the partitions they claim in reply to a ``query`` (claims decided as replies' are)."""
        timeout = self.round_timeout_s or 600.0
        queries = [Message(content=RecordDict({}), dst_node_id=int(n), message_type=MessageType.QUERY) for n in nodes]
        t0 = time.perf_counter()
        replies = list(grid.send_and_receive(queries, timeout=timeout))
        claims = []
        for reply in replies:
            if reply.has_error():
                continue
            pid, _ = client_identity(reply.content)
            if pid is not None:
                claims.append((int(reply.metadata.src_node_id), pid))
        accepted, refused = self.identities.resolve(claims)
        for node, pid in accepted.items():
            self.identities.bind(node, pid)
        log(INFO, "Asked %d nodes for their partition in %.1f s: %d bound, %d refused, %d without an answer",
            len(nodes), time.perf_counter() - t0, len(accepted), len(refused), len(nodes) - len(claims))

    def _nodes_to_wait_for(self) -> int:
        """The expected nodes less those silent last round: a dead node costs one bounded wait, not
        one a round; a node that comes back is in the round as soon as it is connected."""
        return max(self._expected_nodes() - self._silent, 1)

    def _expected_nodes(self) -> int:
        if self.num_partitions is not None:
            return self.num_partitions
        return max(int(getattr(self.strategy, "min_available_nodes", 1)), len(self.identities.bindings_), 1)

    # ------------------------------------------------------------------ steps 1-5

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, detect, aggregate with the wrapped strategy, score and record the round."""
        t_train = time.perf_counter() - self._round_start
        replies = list(replies)
        reference = {k: v.numpy() for k, v in self._global.items()}
        # With sampling, a round expects only the partitions it sampled.
        expected_before = self.identities.expected() if self._sampled is None else set(self._sampled)
        senders = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in self._sent if m.metadata.message_id}
        screened = screen_replies(replies, reference, self.weighted_by_key, identities=self.identities,
                                  weights=self.weights, senders=senders)
        for r in screened.rejected:
            log(WARNING, "Rejected reply of partition %s (node %s) in round %s: %s", r["partition_id"], r["node_id"],
                server_round, r["reason"])
        self.rejected.extend({"round": server_round, **r} for r in screened.rejected)
        accepted = screened.replies
        missing_partitions = self._missing(set(accepted), screened.rejected, expected_before)
        replied = {sender(m, senders) for m in replies}
        missing = max(len(missing_partitions), len({int(m.metadata.dst_node_id) for m in self._sent} - replied))
        self.missing_total += missing
        self._silent = missing
        if missing:
            log(WARNING, "Round %s: %d expected clients did not reply (partitions %s)", server_round, missing,
                missing_partitions)
        global_state = self._global.to_torch_state_dict()
        detections, filtered = self.detectors.observe(server_round, global_state, accepted, self.scorer.utility.layout)
        kept = [(pid, msg) for pid, msg, _ in screened.accepted if pid not in filtered]
        kept_replies = {pid: accepted[pid] for pid, _ in kept}
        record: dict[str, Any] = {
            **self.job_info, "round": server_round, "clients": [p for p, _ in kept],
            "rejected": screened.rejected, "missing": missing, "missing_partitions": missing_partitions,
            "detectors": detections, "filtered": sorted(filtered),
            "node_ids": {p: r.node_id for p, r in kept_replies.items()},
            "roles": {p: r.role for p, r in kept_replies.items()},
            "claimed_num_examples": {p: r.claimed_num_examples for p, r in kept_replies.items()},
        }
        if self._sampled is not None:
            record["sampled"] = list(self._sampled)
        if len(kept) < self.min_clients:
            self._fail(server_round, screened.rejected, [p for p, _ in kept], missing_partitions,
                       f"{len(kept)} valid replies, fewer than min_clients = {self.min_clients} "
                       f"({len(screened.rejected)} rejected, {missing} missing)", record)
        t0 = time.perf_counter()
        arrays, metrics = self.strategy.aggregate_train(server_round, [m for _, m in kept])
        t_agg = time.perf_counter() - t0
        if arrays is None:
            self._fail(server_round, screened.rejected, [p for p, _ in kept], missing_partitions,
                       f"the wrapped strategy aggregated nothing from {len(kept)} valid replies", record)
        arrays = keep_dtypes(arrays, reference)
        states = {p: r.state for p, r in kept_replies.items()}
        weights = {p: float(r.num_examples) for p, r in kept_replies.items()}
        counterfactuals = {p: r.counterfactual_state for p, r in kept_replies.items()
                           if r.counterfactual_state is not None}
        cf_weights = {p: float(r.counterfactual_num_examples) for p, r in kept_replies.items()
                      if r.counterfactual_num_examples is not None}
        scored = self.scorer.score(server_round, global_state, states, weights, counterfactuals, cf_weights)
        self.totals.update(scored)
        record.update({
            "num_examples": weights,
            "label_histograms": {p: r.label_histogram for p, r in kept_replies.items() if r.label_histogram},
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
        log(INFO, "Round %s attribution: %s", server_round,
            {ev: {p: round(v, 4) for p, v in vals.items()} for ev, vals in scored.values.items()})
        test: dict[str, float] = {}
        if self.central_evaluate is not None:
            test = dict(self.central_evaluate(arrays))
            self._evaluated = (arrays, test)
        record["timings"]["round_s"] = time.perf_counter() - self._round_start
        self._emit(RoundRecord.model_validate({**record, "test": test}))
        return arrays, metrics

    def _missing(self, accepted: set[int], rejected: list[dict], expected: set[int] | None = None) -> list[int]:
        """Expected partitions with neither an accepted nor a rejected reply this round."""
        expected = self.identities.expected() if expected is None else expected
        heard = set(accepted)
        for r in rejected:
            pid = r["partition_id"] if r["partition_id"] is not None else r.get("claimed_partition_id")
            if pid is not None:
                heard.add(pid)
        return sorted(expected - heard)

    def _emit(self, record: RoundRecord) -> None:
        self.rounds_.append(record)
        if self._recorder is not None:
            self._recorder.append_round(record.model_dump(mode="json"))
        if self.on_round is not None:
            self.on_round(record)

    def _fail(self, server_round: int, rejected: list[dict], clients: list[int], missing_partitions: list[int],
              reason: str, record: dict[str, Any] | None = None) -> None:
        base = record or {**self.job_info, "round": server_round, "clients": clients, "rejected": rejected,
                          "missing": len(missing_partitions), "missing_partitions": missing_partitions}
        failed = RoundRecord.model_validate({**base, "clients": clients})
        reason = f"round {server_round}: {reason}" + (f"; missing partitions {missing_partitions}"
                                                      if missing_partitions else "")
        log(WARNING, "Stopping: %s", reason)
        self.failure = RoundFailure(reason, failed)
        raise self.failure

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Delegated to the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegated to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """An ``evaluate_fn`` for ``Strategy.start``: ``central_evaluate`` of ``arrays`` (computed once per round)."""
        if self.central_evaluate is None:
            raise ValueError("evaluate needs central_evaluate")
        if self._evaluated is not None and self._evaluated[0] is arrays:
            test = self._evaluated[1]
        else:
            test = self.central_evaluate(arrays)
        return MetricRecord({k: float(v) for k, v in test.items()})


# ---------------------------------------------------------------------------------- helpers

def wait_for_nodes(grid: Grid, n: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """The connected node ids once ``n`` are connected, or whatever is connected after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(int(i) for i in grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() >= deadline:
            if len(nodes) < n:
                log(WARNING, "%d of %d expected nodes connected after %.0f s; the round goes on with them",
                    len(nodes), n, timeout_s)
            return nodes
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


class _Nodes:
    """A Grid whose node list is fixed to the nodes present after the bounded wait."""

    def __init__(self, grid: Grid, nodes: list[int]):
        self._grid, self._nodes = grid, list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@contextmanager
def _seeded_random(seed: int, server_round: int):
    """Python's ``random`` (Flower's sampler) seeded by (seed, round) for one call, then restored."""
    saved = random.getstate()
    random.seed(f"fedattr-sample:{int(seed)}:{int(server_round)}")
    try:
        yield
    finally:
        random.setstate(saved)


@contextmanager
def _minimums_at_most(strategy: Strategy, k: int):
    """Lower the wrapped strategy's node minimums to ``k`` for one call, so its sampling never waits."""
    saved = {a: getattr(strategy, a) for a in ("min_available_nodes", "min_train_nodes") if hasattr(strategy, a)}
    try:
        for a, v in saved.items():
            setattr(strategy, a, min(int(v), max(int(k), 0)))
        yield
    finally:
        for a, v in saved.items():
            setattr(strategy, a, v)


def _state_mismatch(state: dict[str, torch.Tensor], arrays: ArrayRecord) -> str | None:
    keys = list(arrays.keys())
    if set(keys) != set(state):
        missing, extra = sorted(set(state) - set(keys)), sorted(set(keys) - set(state))
        return f"keys missing from the arrays {missing[:3]}, extra in the arrays {extra[:3]}"
    for k in keys:
        shape = tuple(arrays[k].numpy().shape)
        if shape != tuple(state[k].shape):
            return f"{k!r} has shape {shape} in the arrays and {tuple(state[k].shape)} in the model"
    return None


def _build_scorer(strategy: Strategy, model, x_val, y_val, evaluators, utility: str) -> RoundScorer:
    from fedattr.evaluators.utility import METRICS

    if model is None or x_val is None or y_val is None:
        raise ValueError("give a scorer, or model, x_val and y_val to build one")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(utility, str) or utility not in METRICS:
        raise ValueError(f"utility = {utility!r}: must be one of {', '.join(METRICS)}")
    if isinstance(evaluators, str):
        evaluators = [evaluators]
    specs = [(e, {}) if isinstance(e, str) else (str(e[0]), dict(e[1])) for e in evaluators]
    if not specs:
        raise ValueError("evaluators is empty: name at least one (e.g. 'loo')")
    return RoundScorer(model, torch.as_tensor(x_val), torch.as_tensor(y_val), specs, utility=utility,
                       aggregate=coalition_rule(strategy))


def coalition_rule(strategy: Strategy) -> Any:
    """The round game's coalition rule for ``strategy`` (its class or nearest registered base)."""
    from fedattr.strategies.aggregators import AGGREGATORS

    by_class = {entry.strategy: entry for entry in AGGREGATORS.values()}
    for cls in type(strategy).__mro__:
        if cls in by_class:
            params = {p: getattr(strategy, p) for p in ("beta", "num_malicious_nodes", "num_nodes_to_select")
                      if hasattr(strategy, p)}
            return by_class[cls].rule(params)
    known = ", ".join(e.strategy.__name__ for e in AGGREGATORS.values())
    raise ValueError(f"no coalition rule for {type(strategy).__name__}: wrap one of {known} (or a subclass), "
                     f"or pass a RoundScorer with the rule")


def _open_results(out_dir: Path, job_info: dict[str, Any], num_rounds: int, scorer: RoundScorer,
                  num_clients: int, start: bool = True):
    """A fedattr results directory for one job: scenario.json and the job's recorder."""
    from fedattr.results.store import JobRecorder, atomic_write_json, job_name
    from fedattr.scenario import scenario_from_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    arm, seed = str(job_info["arm"]), int(job_info["seed"])
    scenario = scenario_from_dict({
        "name": "run", "description": "attribution recorded by AttributedStrategy in a Flower app",
        "seeds": [seed], "rounds": int(num_rounds), "num_clients": int(num_clients),
        "attacker_ids": list(job_info.get("attacker_ids") or []), "arms": [{"name": arm, "attack": "honest"}],
        "attribution": {"evaluators": [{"name": n, "params": p} for n, p in scorer.evaluators]}})
    atomic_write_json(out_dir / "scenario.json", scenario.model_dump(mode="json"))
    recorder = JobRecorder(out_dir / "jobs" / job_name(arm, seed))
    if start:
        recorder.start()
    return recorder
