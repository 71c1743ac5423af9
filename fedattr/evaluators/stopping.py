"""Composable stopping rules for the Monte-Carlo evaluators.

A rule looks at an :class:`EstimatorState` after each sample (a permutation or a coalition
sample; GTG looks once per cycle of ``n`` permutations) and says whether to stop. Combine rules
with ``|`` (stop when any says so) and ``&`` (stop when all do). ``MaxEvaluations`` is also a hard
budget: an evaluator never requests more distinct coalitions than it allows, and drops a sample
it cannot finish within it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from fedattr.core.registry import Registry

__all__ = [
    "EstimatorState",
    "StoppingRule",
    "MaxEvaluations",
    "MaxSamples",
    "MaxPermutations",
    "MaxTime",
    "StandardError",
    "RelativeChange",
    "RankStability",
    "AnyRule",
    "AllRules",
]


@dataclass
class EstimatorState:
    """What a stopping rule may look at.

    Attributes
    ----------
    n_samples : int
        Completed samples (permutations or coalition samples).
    n_evaluations : int
        Distinct coalitions the evaluator has requested.
    elapsed : float
        Seconds since the evaluator started.
    means : ndarray
        Current estimates, one per player.
    stderr : ndarray
        Standard errors of the estimates (``inf`` where undefined).
    history : list of ndarray
        Estimates after each completed sample (``history[-1] is means``).
    n_permutations : int
        Permutations walked (twice ``n_samples`` with antithetic pairs; ``n_samples`` otherwise).
    """

    n_samples: int = 0
    n_evaluations: int = 0
    elapsed: float = 0.0
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stderr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history: list = field(default_factory=list)
    n_permutations: int = 0


def _arg(name: str, value, low: float, *, integer: bool = False):
    """``value`` as an int or float, or a ValueError naming ``name`` and the allowed range."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= low  # False for NaN
    if not ok:
        raise ValueError(f"{name} must be {kind} >= {low:g}, got {value!r}")
    return int(value) if integer else float(value)


class StoppingRule:
    """Base class: ``check(state) -> bool`` (True = stop); ``reset()`` before each fit."""

    def check(self, state: EstimatorState) -> bool:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what previous fits left behind (stateful rules)."""

    @property
    def evaluation_budget(self) -> int | None:
        """Hard cap on distinct coalitions this rule implies, or None."""
        return None

    def __or__(self, other: "StoppingRule") -> "StoppingRule":
        return AnyRule(self, other)

    def __and__(self, other: "StoppingRule") -> "StoppingRule":
        return AllRules(self, other)

    def __call__(self, state: EstimatorState) -> bool:
        return self.check(state)


class AnyRule(StoppingRule):
    """Stop when any of ``rules`` says so."""

    def __init__(self, *rules: StoppingRule):
        self.rules = tuple(r for rule in rules for r in (rule.rules if isinstance(rule, AnyRule) else (rule,)))

    def check(self, state):
        # Evaluate all, not short-circuit: stateful rules (RankStability) must see every check.
        return any([r.check(state) for r in self.rules])

    def reset(self):
        for r in self.rules:
            r.reset()

    @property
    def evaluation_budget(self):
        budgets = [b for b in (r.evaluation_budget for r in self.rules) if b is not None]
        return min(budgets) if budgets else None

    def __repr__(self):
        return " | ".join(repr(r) for r in self.rules)


class AllRules(StoppingRule):
    """Stop when all of ``rules`` say so."""

    def __init__(self, *rules: StoppingRule):
        self.rules = tuple(r for rule in rules for r in (rule.rules if isinstance(rule, AllRules) else (rule,)))

    def check(self, state):
        return all([r.check(state) for r in self.rules])

    def reset(self):
        for r in self.rules:
            r.reset()

    @property
    def evaluation_budget(self):
        budgets = [r.evaluation_budget for r in self.rules]
        return max(budgets) if budgets and all(b is not None for b in budgets) else None

    def __repr__(self):
        return "(" + " & ".join(repr(r) for r in self.rules) + ")"


class MaxEvaluations(StoppingRule):
    """Stop at ``n`` distinct coalitions requested by the evaluator (a hard budget)."""

    def __init__(self, n: int):
        self.n = _arg("n", n, 1, integer=True)

    def check(self, state):
        return state.n_evaluations >= self.n

    @property
    def evaluation_budget(self):
        return self.n

    def __repr__(self):
        return f"MaxEvaluations({self.n})"


class MaxSamples(StoppingRule):
    """Stop after ``n`` completed samples (permutations for permutation estimators)."""

    def __init__(self, n: int):
        self.n = _arg("n", n, 1, integer=True)

    def check(self, state):
        return state.n_samples >= self.n

    def __repr__(self):
        return f"{type(self).__name__}({self.n})"


class MaxPermutations(MaxSamples):
    """Stop after ``n`` permutations walked (antithetic pairs count as two)."""

    def check(self, state):
        return state.n_permutations >= self.n


class MaxTime(StoppingRule):
    """Stop once ``seconds`` of wall time have passed since the evaluator started."""

    def __init__(self, seconds: float):
        self.seconds = _arg("seconds", seconds, 0)

    def check(self, state):
        return state.elapsed >= self.seconds

    def __repr__(self):
        return f"MaxTime({self.seconds})"


class StandardError(StoppingRule):
    """Stop when every player's standard error is ``<= threshold`` after ``min_samples`` samples."""

    def __init__(self, threshold: float, min_samples: int = 30):
        self.threshold = _arg("threshold", threshold, 0)
        self.min_samples = _arg("min_samples", min_samples, 0, integer=True)

    def check(self, state):
        if state.n_samples < self.min_samples:
            return False
        return bool(state.stderr.size == 0 or np.max(state.stderr) <= self.threshold)

    def __repr__(self):
        return f"StandardError({self.threshold}, min_samples={self.min_samples})"


class RelativeChange(StoppingRule):
    """GTG/TMC convergence: stop when the estimates of the last ``window`` samples all lie within
    ``tolerance`` of the current ones, in mean relative change over players, after
    ``min_samples`` samples.

    The change of an earlier estimate ``m`` is ``mean_i |m_i - c_i| / (|c_i| + 1e-12)`` where
    ``c`` is the current estimate (as in the GTG-Shapley and Data-Shapley reference code).
    """

    def __init__(self, tolerance: float = 0.05, window: int = 10, min_samples: int = 30):
        self.tolerance = _arg("tolerance", tolerance, 0)
        self.window = _arg("window", window, 1, integer=True)
        self.min_samples = _arg("min_samples", min_samples, 0, integer=True)

    def check(self, state):
        if state.n_samples < max(self.min_samples, self.window) or len(state.history) < self.window:
            return False
        return relative_change(state.history, self.window) <= self.tolerance

    def __repr__(self):
        return f"RelativeChange({self.tolerance}, window={self.window}, min_samples={self.min_samples})"


def relative_change(history, window: int) -> float:
    """Largest mean relative change of the last ``window`` estimates against the latest one."""
    recent = np.asarray(history[-window:], dtype=np.float64)
    last = recent[-1]
    if last.size == 0:
        return 0.0
    return float(np.max(np.mean(np.abs(recent - last) / (np.abs(last) + 1e-12), axis=1)))


class RankStability(StoppingRule):
    """Stop when the players' ranking has not changed over the last ``window`` checks, after
    ``min_samples`` samples."""

    def __init__(self, window: int = 10, min_samples: int = 30):
        self.window = _arg("window", window, 1, integer=True)
        self.min_samples = _arg("min_samples", min_samples, 0, integer=True)
        self.reset()

    def reset(self):
        self._last: tuple | None = None
        self._unchanged = 0

    def check(self, state):
        ranking = tuple(np.argsort(-np.asarray(state.means), kind="stable").tolist())
        self._unchanged = self._unchanged + 1 if ranking == self._last else 1
        self._last = ranking
        return state.n_samples >= self.min_samples and self._unchanged >= self.window

    def __repr__(self):
        return f"RankStability(window={self.window}, min_samples={self.min_samples})"


#: Scenario names of the stopping rules (``stop = {standard_error = 0.01, max_evaluations = 500}``).
RULES: Registry[type[StoppingRule]] = Registry("stopping rule", {
    "max_evaluations": MaxEvaluations,
    "max_samples": MaxSamples,
    "max_permutations": MaxPermutations,
    "max_time": MaxTime,
    "standard_error": StandardError,
    "relative_change": RelativeChange,
    "rank_stability": RankStability,
})


def stopping_from_config(config) -> StoppingRule:
    """A stopping rule from a scenario table: ``{rule = arg}`` pairs combined with ``|``.

    Each value is the rule's first argument (``standard_error = 0.01``) or a table of its
    keyword arguments (``relative_change = {tolerance = 0.05, window = 10}``). The key
    ``combine = "all"`` combines with ``&`` instead (stop only when every rule says so).
    A StoppingRule passes through. Anything else is a ``ValueError`` that names the problem.
    """
    if isinstance(config, StoppingRule):
        return config
    if not isinstance(config, dict) or not config:
        raise ValueError(f"stop must be a table of stopping rules, e.g. {{standard_error = 0.01, "
                         f"max_evaluations = 500}}; got {config!r} (rules: {', '.join(RULES)})")
    cfg = dict(config)
    combine = cfg.pop("combine", "any")
    if combine not in ("any", "all"):
        raise ValueError(f"stop.combine = {combine!r}: must be 'any' or 'all'")
    rules = []
    for name, arg in cfg.items():
        if name not in RULES:
            raise ValueError(f"stop.{name}: {RULES.unknown(name)}")
        cls = RULES[name]
        try:
            if isinstance(arg, dict):
                rule = RULES.make(name, **arg)
            elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
                rule = cls(arg)
            else:
                raise ValueError(f"expected a number or a table of arguments, got {arg!r}")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stop.{name}: {exc}") from None
        rules.append(rule)
    if len(rules) == 1:
        return rules[0]
    return AnyRule(*rules) if combine == "any" else AllRules(*rules)
