"""The aggregator registry: a Flower strategy and the coalition rule the round game uses with it.

Adding an aggregator is one entry here (plus, for a new rule, one class in
``fedattr/evaluators/aggregation.py``): the Flower strategy that aggregates the round, the rule
that aggregates every coalition of the round game the same way, and a check of its parameters
against the number of clients that runs before any process starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from fedattr.core.registry import Registry, did_you_mean, init_params
from fedattr.evaluators.aggregation import BulyanRule, CoordinateMedian, KrumSelect, TrimmedMean

#: Strategy arguments the pipeline sets itself (every node trains every round).
RESERVED = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_available_nodes",
            "min_evaluate_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
            "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn")


@dataclass(frozen=True)
class Aggregator:
    """One registry entry.

    ``strategy`` is an unmodified ``flwr.serverapp.strategy`` class; ``rule(params)`` returns the
    coalition rule (None = FedAvg's weighted mean, the game's fast path); ``check(params, n)``
    returns why ``params`` cannot work with ``n`` clients, or None.
    """

    strategy: type[Strategy]
    rule: Callable[[dict[str, Any]], Any]
    check: Callable[[dict[str, Any], int], str | None] = lambda params, n: None


def _check_trimmed(params: dict[str, Any], n: int) -> str | None:
    beta = float(params.get("beta", 0.2))
    if not 0.0 <= beta < 0.5:
        return f"beta = {beta}: must be in [0, 0.5)"
    if int(beta * n) == 0:
        return (f"beta = {beta} trims int({beta} * {n}) = 0 updates per side with {n} clients, so it is "
                f"FedAvg without weights; raise beta to at least {1 / n:.3g}")
    return None


def _check_krum(params: dict[str, Any], n: int) -> str | None:
    f = int(params.get("num_malicious_nodes", 0))
    m = int(params.get("num_nodes_to_select", 1))
    if f < 0 or n - f - 2 < 1:
        return f"num_malicious_nodes = {f}: Krum needs n - f - 2 >= 1 (n = {n} clients), so f <= {n - 3}"
    if not 1 <= m <= n:
        return f"num_nodes_to_select = {m}: must be in 1..{n}"
    return None


def _check_bulyan(params: dict[str, Any], n: int) -> str | None:
    f = int(params.get("num_malicious_nodes", 0))
    if f < 0 or n < 4 * f + 3:
        return (f"num_malicious_nodes = {f}: Bulyan needs at least 4f + 3 = {4 * f + 3} clients, the "
                f"scenario has {n} (largest f: {(n - 3) // 4})")
    return None


AGGREGATORS: Registry[Aggregator] = Registry("aggregator", {
    "fedavg": Aggregator(FedAvg, lambda p: None),
    "fedmedian": Aggregator(FedMedian, lambda p: CoordinateMedian()),
    "fedtrimmedavg": Aggregator(FedTrimmedAvg, lambda p: TrimmedMean(float(p.get("beta", 0.2))),
                                _check_trimmed),
    "krum": Aggregator(Krum, lambda p: KrumSelect(int(p.get("num_malicious_nodes", 0)), 1), _check_krum),
    "multikrum": Aggregator(MultiKrum, lambda p: KrumSelect(int(p.get("num_malicious_nodes", 0)),
                                                            int(p.get("num_nodes_to_select", 1))), _check_krum),
    "bulyan": Aggregator(Bulyan, lambda p: BulyanRule(int(p.get("num_malicious_nodes", 0))), _check_bulyan),
})


def check_aggregator(name: str, params: dict[str, Any], num_clients: int) -> str | None:
    """Why ``name`` with ``params`` cannot aggregate ``num_clients`` clients, or None."""
    if name not in AGGREGATORS:
        return AGGREGATORS.unknown(name)
    entry = AGGREGATORS[name]
    allowed = [p for p in init_params(entry.strategy) if p not in RESERVED]
    for key in params:
        if key not in allowed:
            return f"unknown parameter {key!r} of {name}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed) or 'none'}"
    return entry.check(dict(params), int(num_clients))


def build_aggregator(name: str, params: dict[str, Any], num_clients: int,
                     min_nodes: int | None = None, sampling: dict[str, Any] | None = None) -> tuple[Strategy, Any]:
    """The Flower strategy (every connected node trains every round) and its coalition rule.

    ``min_nodes`` (default ``num_clients``) is how many nodes a round needs connected to start,
    so that a federation that lost a node can go on when the scenario allows it. ``sampling``
    (``fraction_train``, ``min_train_nodes``, ``min_available_nodes``) replaces those defaults:
    the strategy then samples its clients each round.
    """
    problem = check_aggregator(name, params, num_clients)
    if problem:
        raise ValueError(f"aggregation: {problem}")
    entry = AGGREGATORS[name]
    m = num_clients if min_nodes is None else int(min_nodes)
    nodes = {"fraction_train": 1.0, "min_train_nodes": m, "min_available_nodes": m, **(sampling or {})}
    strategy = entry.strategy(fraction_evaluate=0.0, **nodes, **params)
    return strategy, entry.rule(dict(params))
