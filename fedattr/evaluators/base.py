"""Evaluator base classes, the registry and the per-evaluator request accounting."""

from __future__ import annotations

import inspect
import time
from typing import Any, ClassVar, Sequence

import numpy as np

from fedattr.core.registry import Registry, init_params

from .game import Game
from .stopping import EstimatorState, StoppingRule

__all__ = ["EVALUATORS", "Evaluator", "MonteCarloEvaluator", "make_evaluator", "register", "BudgetExhausted"]

#: Registry name -> evaluator class.
EVALUATORS: Registry[type] = Registry("evaluator", set_name=True)


def register(name: str):
    """Class decorator adding an evaluator to ``EVALUATORS`` under ``name``."""
    return EVALUATORS.register(name)


def make_evaluator(name: str, **params) -> "Evaluator":
    """Instantiate the evaluator registered as ``name`` with ``params``; an unknown name or
    parameter is a :class:`~fedattr.core.registry.RegistryError` naming the closest valid one."""
    cls = EVALUATORS.check(name, params)
    if "stop" in params and params["stop"] is not None:
        from .stopping import stopping_from_config

        # Scenario files give stopping rules as tables; objects pass through.
        params = {**params, "stop": stopping_from_config(params["stop"])}
    return cls(**params)


class BudgetExhausted(Exception):
    """Raised inside an evaluator when a request would exceed its hard evaluation budget."""


class _Requests:
    """An evaluator's window on a game: counts the distinct coalitions it requests and enforces
    its hard budget; the values themselves come from the game's shared cache."""

    def __init__(self, game: Game, budget: int | None = None):
        self.game = game
        self.budget = budget
        self.requested: set[int] = set()
        self._cache_start = game.cache.n_evaluations

    @property
    def n_evaluations(self) -> int:
        return len(self.requested)

    @property
    def n_new_evaluations(self) -> int:
        return self.game.cache.n_evaluations - self._cache_start

    def affordable(self, masks: Sequence[int]) -> int:
        """How many leading ``masks`` can be requested without exceeding the budget."""
        if self.budget is None:
            return len(masks)
        seen, used = set(), len(self.requested)
        for k, m in enumerate(masks):
            m = int(m)
            if m not in self.requested and m not in seen:
                if used + 1 > self.budget:
                    return k
                seen.add(m)
                used += 1
        return len(masks)

    def values(self, masks: Sequence[int]) -> np.ndarray:
        masks = [int(m) for m in masks]
        new = set(masks) - self.requested
        if self.budget is not None and len(self.requested) + len(new) > self.budget:
            raise BudgetExhausted
        self.requested |= new
        return self.game.values(masks)

    def value(self, mask: int) -> float:
        return float(self.values([mask])[0])


class Evaluator:
    """Base class: ``fit(game, seed)`` computes one value per player of a round game.

    Subclasses implement ``_fit(game, requests, rng) -> ndarray``; the constructor only stores
    parameters.

    Attributes (after ``fit``)
    --------------------------
    values_ : ndarray
        One value per player, aligned with ``players_``.
    players_ : tuple
        ``game.players``.
    n_evaluations_ : int
        Distinct coalitions this evaluator requested (its cost if run alone).
    n_new_evaluations_ : int
        Coalitions it caused to be evaluated (cache misses; 0 if others evaluated them first).
    seconds_ : float
        Wall time of ``fit``.
    """

    name: ClassVar[str] = ""
    #: Whether the evaluator reads coalition values (False for geometry-only ones).
    uses_utility: ClassVar[bool] = True

    def fit(self, game: Game, seed: int | np.random.Generator | None = None) -> "Evaluator":
        """Compute the values of ``game``'s players; ``seed`` fixes any randomness."""
        t0 = time.perf_counter()
        self._t0 = t0
        rng = np.random.default_rng(seed)
        req = _Requests(game, self._budget())
        self._requests = req
        values = np.asarray(self._fit(game, req, rng), dtype=np.float64)
        if values.shape != (game.n,):
            raise RuntimeError(f"{type(self).__name__} produced shape {values.shape} for {game.n} players")
        self.values_ = values
        self.players_ = game.players
        self.n_evaluations_ = req.n_evaluations
        self.n_new_evaluations_ = req.n_new_evaluations
        self.seconds_ = time.perf_counter() - t0
        return self

    def _budget(self) -> int | None:
        return None

    def _fit(self, game: Game, req: _Requests, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def as_dict(self) -> dict:
        """``{player id: value}`` after ``fit``."""
        return dict(zip(self.players_, self.values_.tolist()))

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters and their current values."""
        return {p: getattr(self, p) for p in init_params(type(self))}

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__).parameters
        shown = [
            f"{k}={v!r}" for k, v in self.get_params().items()
            if sig[k].default is inspect.Parameter.empty or sig[k].default is not v and sig[k].default != v
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


class MonteCarloEvaluator(Evaluator):
    """Base of sampling evaluators: running means/variances per player and a stopping rule.

    Attributes (after ``fit``, besides :class:`Evaluator`'s)
    --------------------------------------------------------
    n_samples_ : int
        Completed samples used in the estimate.
    stderr_ : ndarray
        Standard error of each value.
    stop_ : StoppingRule
        The rule actually used (``stop`` or the default).
    budget_exhausted_ : bool
        Whether sampling ended because the hard evaluation budget ran out.
    """

    stop: StoppingRule | None = None

    def _default_stop(self) -> StoppingRule:
        raise NotImplementedError

    def _rule(self) -> StoppingRule:
        rule = self.stop if self.stop is not None else self._default_stop()
        self.stop_ = rule
        return rule

    def _budget(self) -> int | None:
        rule = self._rule()
        rule.reset()
        return rule.evaluation_budget

    def _state(self, req: _Requests, stats: "_RunningStats", n_permutations: int | None = None) -> EstimatorState:
        return EstimatorState(
            n_samples=stats.n_samples,
            n_evaluations=req.n_evaluations,
            elapsed=time.perf_counter() - self._t0,
            means=stats.means,
            stderr=stats.stderr(),
            history=stats.history,
            n_permutations=stats.n_samples if n_permutations is None else n_permutations,
        )


class _RunningStats:
    """Welford running mean and variance of per-player samples, with the history of means."""

    def __init__(self, n: int, keep_history: bool = True):
        self.n_samples = 0
        self.means = np.zeros(n)
        self._m2 = np.zeros(n)
        self.history: list[np.ndarray] = []
        self._keep = keep_history

    def add(self, x: np.ndarray) -> None:
        self.n_samples += 1
        delta = x - self.means
        self.means = self.means + delta / self.n_samples
        self._m2 += delta * (x - self.means)
        if self._keep:
            self.history.append(self.means)

    def stderr(self) -> np.ndarray:
        if self.n_samples < 2:
            return np.full(self.means.shape, np.inf)
        return np.sqrt(self._m2 / (self.n_samples - 1) / self.n_samples)
