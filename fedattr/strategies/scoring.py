"""Per-round attribution: build the round game from client states and run the evaluators.

Plain torch (no Flower): the strategy hands over state dicts keyed by partition id; this module
builds v_t(S) = U(w_t + FedAvg_S(g)) with ONE shared utility cache, runs every configured
evaluator on it, and, for attackers that also sent their honest update (testbed-only
counterfactual), scores the honest alternative in the same round game.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedattr.defenses import register_scoring_rules
from fedattr.evaluators import CumulativeValues, ModelUtility, RoundGame, make_evaluator


@dataclass
class RoundAttribution:
    """What one round's scoring produced."""

    values: dict[str, dict[int, float]]
    counterfactual_values: dict[str, dict[int, float]]
    evaluations: dict[str, int]
    seconds: dict[str, float]
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``[evaluator][attacker] -> {player: value}``: every player's value in the counterfactual
    #: game (the attacker's honest update in place of its sent one), for same-round rank changes.
    counterfactual_vectors: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)
    #: The coalition engine's work this round: ``engine`` (the strategy used), ``models``
    #: (parameter sets evaluated) and ``seconds`` (time inside the utility).
    utility: dict[str, Any] = field(default_factory=dict)


class RoundScorer:
    """Scores every client of a round with the configured evaluators on one shared game.

    Parameters
    ----------
    model : nn.Module
        A template of the global model (architecture only).
    x_val, y_val : Tensor
        The server's validation split.
    evaluators : list of (name, params)
        Registry names of ``fedattr.evaluators`` and their constructor parameters.
    utility : str
        ``accuracy``, ``neg_ce`` or ``balanced_accuracy``.
    val_subset : int or None
        Evaluate the utility on a fixed random subset of this many validation images.
    engine : str
        Coalition evaluation engine (``fedattr.evaluators.ENGINES``; ``auto`` picks the fastest
        that applies).
    device : str
        Where coalition models are evaluated.
    num_threads : int or None
        CPU threads used while evaluating coalitions (None = torch's default).
    seed : int
        Seed of the Monte-Carlo evaluators (combined with the round number).
    aggregate : callable, optional
        The coalition rule of the server's strategy (``fedattr.evaluators.aggregation``);
        None = FedAvg's weighted mean.
    public : (Tensor, Tensor), optional
        The public auxiliary split (images, labels), handed to every round game as
        ``public_data`` for scoring rules that train on public data (``reference_player``).
    """

    def __init__(self, model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, evaluators: list[tuple[str, dict]],
                 *, utility: str = "accuracy", val_subset: int | None = None, engine: str = "auto",
                 device: str | torch.device = "cpu", seed: int = 0, num_classes: int | None = None,
                 num_threads: int | None = None, aggregate: Any = None,
                 public: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.evaluators = [(name, dict(params)) for name, params in evaluators]
        self.public = public
        self.aggregate = aggregate
        self.seed = seed
        self.utility = ModelUtility(model, x_val, y_val, metric=utility, num_classes=num_classes,
                                    val_subset=val_subset, subset_seed=seed, engine=engine, device=device,
                                    num_threads=num_threads)
        register_scoring_rules()  # scenarios may name the robust-scoring evaluators
        # Fail at construction, not in round 1, on a bad evaluator name or parameter.
        for name, params in self.evaluators:
            make_evaluator(name, **params)

    def _game(self, global_state: dict, states: dict[int, dict], weights: dict[int, float]) -> RoundGame:
        pids = sorted(states)
        game = RoundGame.from_state_dicts(self.utility, global_state, [states[p] for p in pids],
                                          weights=[weights[p] for p in pids], players=pids,
                                          aggregate=self.aggregate)
        game.public_data = self.public
        return game

    def score(self, server_round: int, global_state: dict, states: dict[int, dict], weights: dict[int, float],
              counterfactuals: dict[int, dict] | None = None,
              counterfactual_weights: dict[int, float] | None = None) -> RoundAttribution:
        """Score one round; ``counterfactuals`` maps attacker ids to their honest states.

        ``counterfactual_weights`` are the example counts the honest replies would have reported
        (they differ from ``weights`` for attacks that over-report); by default the same.
        """
        game = self._game(global_state, states, weights)
        values: dict[str, dict[int, float]] = {}
        evaluations: dict[str, int] = {}
        seconds: dict[str, float] = {}
        extra: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        models0, utility_s0 = self.utility.n_models_, self.utility.seconds_
        for name, params in self.evaluators:
            ev = make_evaluator(name, **params).fit(game, seed=self.seed * 7919 + server_round)
            values[name] = {int(p): float(v) for p, v in zip(game.players, ev.values_)}
            evaluations[name] = int(ev.n_evaluations_)
            seconds[name] = float(ev.seconds_)
            extra[name] = {k: _scalar(getattr(ev, k)) for k in ("n_permutations_", "skipped_", "stderr_")
                           if hasattr(ev, k) and _scalar(getattr(ev, k)) is not None}
        evaluations["unique"] = int(game.cache.n_evaluations)
        cf_values: dict[str, dict[int, float]] = {name: {} for name, _ in self.evaluators}
        cf_vectors: dict[str, dict[int, dict[int, float]]] = {name: {} for name, _ in self.evaluators}
        for pid, honest_state in (counterfactuals or {}).items():
            if pid not in states:
                continue
            same_weight = (counterfactual_weights or {}).get(pid, weights[pid]) == weights[pid]
            if same_weight and all(torch.equal(honest_state[k], states[pid][k]) for k in honest_state):
                # Before its start round (or in a no-op arm) the attacker sent its honest update.
                for name in values:
                    cf_values[name][int(pid)] = values[name][int(pid)]
                    cf_vectors[name][int(pid)] = dict(values[name])
                continue
            alt, alt_weights = dict(states), dict(weights)
            alt[pid] = honest_state
            alt_weights[pid] = (counterfactual_weights or {}).get(pid, weights[pid])
            cf_game = self._game(global_state, alt, alt_weights)
            # Coalitions without the attacker are the same models in both games (every rule is a
            # function of the coalition's members only): reuse their values.
            bit = 1 << list(game.players).index(pid)
            cf_game.cache.prefill((m, v) for m, v in game.cache.items() if not m & bit)
            if cf_game.has_class_counts:
                cf_game.prefill_class_correct((m, c) for m, c in game.class_correct_items() if not m & bit)
            for name, params in self.evaluators:
                ev = make_evaluator(name, **params).fit(cf_game, seed=self.seed * 7919 + server_round)
                cf_values[name][int(pid)] = float(ev.values_[list(cf_game.players).index(pid)])
                cf_vectors[name][int(pid)] = {int(p): float(v) for p, v in zip(cf_game.players, ev.values_)}
            evaluations[f"counterfactual_{pid}_unique"] = int(cf_game.cache.n_evaluations)
        seconds["total"] = time.perf_counter() - t0
        utility = {"engine": self.utility.engine_.name, "models": int(self.utility.n_models_ - models0),
                   "seconds": float(self.utility.seconds_ - utility_s0)}
        return RoundAttribution(values, cf_values, evaluations, seconds, extra, cf_vectors, utility)


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return None


def ranks(values: dict[int, float]) -> dict[int, int]:
    """Rank 1 = highest value; ties broken by partition id for determinism."""
    order = sorted(values, key=lambda p: (-values[p], p))
    return {p: i + 1 for i, p in enumerate(order)}


class AttributionTotals:
    """Multi-round totals of every evaluator (one :class:`CumulativeValues` each) and inflation.

    ``cumulative[ev][pid]`` sums a client's per-round values; ``normalised[ev][pid]`` sums each
    round's values divided by that round's total absolute value; ``inflation[ev][pid]`` sums, for
    attackers that reported a counterfactual, value minus counterfactual value.
    """

    def __init__(self) -> None:
        self.per_evaluator: dict[str, CumulativeValues] = {}
        self.inflation: dict[str, dict[int, float]] = {}

    def update(self, attribution: RoundAttribution) -> None:
        """Add one round."""
        for ev, vals in attribution.values.items():
            self.per_evaluator.setdefault(ev, CumulativeValues()).update(list(vals), list(vals.values()))
        for ev, cf in attribution.counterfactual_values.items():
            infl = self.inflation.setdefault(ev, {})
            for pid, v_honest in cf.items():
                infl[pid] = infl.get(pid, 0.0) + attribution.values[ev][pid] - v_honest

    def _each(self, attribute: str) -> dict[str, dict]:
        """Per evaluator, one attribute of its CumulativeValues as a plain dict."""
        return {ev: dict(getattr(c, attribute)) for ev, c in self.per_evaluator.items()}

    @property
    def cumulative(self) -> dict[str, dict[int, float]]:
        return self._each("total_")

    @property
    def normalised(self) -> dict[str, dict[int, float]]:
        return self._each("normalised_")

    @property
    def per_participation(self) -> dict[str, dict[int, float]]:
        """Per evaluator: each client's cumulative value divided by the rounds it took part in."""
        return self._each("per_participation_")

    @property
    def participations(self) -> dict[str, dict[int, int]]:
        """Per evaluator: the rounds in which each client had a value (was sampled and scored)."""
        return self._each("rounds_present_")

    def ranks(self) -> dict[str, dict[int, int]]:
        """Rank of every client by cumulative value, per evaluator (1 = highest)."""
        return {ev: ranks(vals) for ev, vals in self.cumulative.items()}
