"""Evaluators computed from a fixed set of coalitions: marginal, LOO, exact semivalues, least core."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betaln

from .game import matrix_to_masks
from .base import Evaluator, MonteCarloEvaluator, _RunningStats, register, BudgetExhausted
from .stopping import MaxSamples, StandardError, StoppingRule

__all__ = [
    "IndividualMarginal",
    "LeaveOneOut",
    "ExactShapley",
    "ExactBanzhaf",
    "BetaShapley",
    "LeastCore",
    "semivalue_from_table",
    "shapley_weights",
    "banzhaf_weights",
    "beta_weights",
]

MAX_EXACT_PLAYERS = 14


def _popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a).astype(np.int64)
    return np.array([int(x).bit_count() for x in a], dtype=np.int64)


def shapley_weights(n: int) -> np.ndarray:
    """Weight of one coalition ``S`` of size ``s`` of the other ``n-1`` players: ``s!(n-s-1)!/n!``."""
    return np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])


def banzhaf_weights(n: int) -> np.ndarray:
    """``2^-(n-1)`` for every coalition of the other players."""
    return np.full(n, 2.0 ** -(n - 1))


def beta_weights(n: int, alpha: float, beta: float) -> np.ndarray:
    """Beta Shapley (Kwon & Zou 2022) weight of a coalition of size ``s`` of the other players:
    ``B(s + beta, n - 1 - s + alpha) / B(alpha, beta)`` (``alpha = beta = 1`` is Shapley;
    ``alpha > beta`` favours small coalitions, e.g. the paper's Beta(16, 1))."""
    s = np.arange(n, dtype=np.float64)
    return np.exp(betaln(s + beta, n - 1 - s + alpha) - betaln(alpha, beta))


def semivalue_from_table(v: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``phi_i = sum_{S in N minus i} weights[|S|] (v[S + i] - v[S])`` from a full table of ``2^n`` values."""
    v = np.asarray(v, dtype=np.float64)
    n = int(v.shape[0]).bit_length() - 1
    masks = np.arange(1 << n, dtype=np.int64)
    sizes = _popcount(masks)
    phi = np.zeros(n)
    for i in range(n):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = np.dot(weights[sizes[without]], v[without | (1 << i)] - v[without])
    return phi


def _all_values(game, req, max_players: int, who: str) -> np.ndarray:
    if game.n > max_players:
        raise ValueError(
            f"{who} enumerates all 2^n coalitions and is limited to n <= {max_players} players "
            f"(got n={game.n}); use a Monte-Carlo evaluator (tmc, gtg, banzhaf_msr) instead"
        )
    # One request for the whole table: the cache evaluates every miss in one batched call.
    return req.values(range(1 << game.n))


@register("individual")
class IndividualMarginal(Evaluator):
    """Individual marginal utility ``v({i}) - v(empty) = U(w_t + g_i) - U(w_t)`` (n + 1 coalitions)."""

    def __init__(self):
        pass

    def _fit(self, game, req, rng):
        v = req.values([0] + [1 << i for i in range(game.n)])
        return v[1:] - v[0]


@register("loo")
class LeaveOneOut(Evaluator):
    """Leave-one-out ``v(N) - v(N minus i)`` (n + 1 coalitions)."""

    def __init__(self):
        pass

    def _fit(self, game, req, rng):
        full = game.full_mask
        v = req.values([full] + [full ^ (1 << i) for i in range(game.n)])
        return v[0] - v[1:]


@register("shapley")
class ExactShapley(Evaluator):
    """Exact Shapley values from all ``2^n`` coalitions (refuses ``n > max_players``).

    Parameters
    ----------
    max_players : int
        Largest ``n`` accepted (default 14, i.e. 16384 coalitions).
    """

    def __init__(self, max_players: int = MAX_EXACT_PLAYERS):
        self.max_players = max_players

    def _fit(self, game, req, rng):
        if game.n == 0:
            return np.zeros(0)
        return semivalue_from_table(_all_values(game, req, self.max_players, "exact Shapley"), shapley_weights(game.n))


@register("banzhaf")
class ExactBanzhaf(Evaluator):
    """Exact Banzhaf values ``2^-(n-1) sum_{S in N minus i} [v(S + i) - v(S)]`` from all ``2^n`` coalitions.

    Parameters
    ----------
    max_players : int
        Largest ``n`` accepted (default 14).
    """

    def __init__(self, max_players: int = MAX_EXACT_PLAYERS):
        self.max_players = max_players

    def _fit(self, game, req, rng):
        if game.n == 0:
            return np.zeros(0)
        return semivalue_from_table(_all_values(game, req, self.max_players, "exact Banzhaf"), banzhaf_weights(game.n))


@register("beta_shapley")
class BetaShapley(MonteCarloEvaluator):
    """Beta(alpha, beta) Shapley semivalue (Kwon & Zou 2022), exact or Monte-Carlo.

    The weight of a coalition ``S`` of the other players is ``B(|S| + beta, n - 1 - |S| + alpha) /
    B(alpha, beta)``; Beta(1, 1) is the Shapley value.

    Parameters
    ----------
    alpha, beta : float
        Beta parameters (the paper recommends Beta(16, 1) or Beta(4, 1) for noisy data).
    method : {"exact", "montecarlo"}
        ``exact`` enumerates all ``2^n`` coalitions (``n <= max_players``). ``montecarlo`` draws,
        per sample and for every player ``i``, ``t ~ Beta(beta, alpha)`` and a coalition ``S`` of
        the others each in with probability ``t``; the mean of ``v(S + i) - v(S)`` is unbiased.
    stop : StoppingRule, optional
        For ``montecarlo``; default ``StandardError(0.002, min_samples=30) | MaxSamples(300)``.
    max_players : int
        Largest ``n`` for ``exact``.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, method: str = "exact",
                 stop: StoppingRule | None = None, max_players: int = MAX_EXACT_PLAYERS):
        self.alpha = alpha
        self.beta = beta
        self.method = method
        self.stop = stop
        self.max_players = max_players

    def _default_stop(self):
        return StandardError(0.002, min_samples=30) | MaxSamples(300)

    def _budget(self):
        if self.method == "exact":
            return None
        return super()._budget()

    def _fit(self, game, req, rng):
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError("alpha and beta must be positive")
        n = game.n
        if self.method == "exact":
            if n == 0:
                return np.zeros(0)
            v = _all_values(game, req, self.max_players, "exact Beta Shapley")
            return semivalue_from_table(v, beta_weights(n, self.alpha, self.beta))
        if self.method != "montecarlo":
            raise ValueError(f"method must be 'exact' or 'montecarlo', got {self.method!r}")
        stop = self.stop_
        stats = _RunningStats(n)
        self.budget_exhausted_ = False
        while n:
            t = rng.beta(self.beta, self.alpha, size=n)
            member = rng.random((n, n)) < t[:, None]
            member[np.arange(n), np.arange(n)] = False
            masks = []
            for i, s in enumerate(matrix_to_masks(member)):
                masks += [s, s | (1 << i)]
            try:
                v = req.values(masks)
            except BudgetExhausted:
                self.budget_exhausted_ = True
                break
            stats.add(v[1::2] - v[0::2])
            if stop.check(self._state(req, stats)):
                break
        self.n_samples_ = stats.n_samples
        self.stderr_ = stats.stderr()
        return stats.means


@register("least_core")
class LeastCore(Evaluator):
    """A least-core allocation of the round gain, by linear programming over all ``2^n`` coalitions.

    With ``v'(S) = v(S) - v(empty)``, solve ``min e`` s.t. ``sum_N x = v'(N)`` and
    ``sum_S x + e >= v'(S)`` for every non-empty proper ``S`` (scipy HiGHS). The least core may
    hold many allocations; this is the one the solver returns (deterministic).

    Parameters
    ----------
    max_players : int
        Largest ``n`` accepted (default 14).

    Attributes
    ----------
    subsidy_ : float
        The optimal ``e`` (negative when the core is non-empty with slack).
    """

    def __init__(self, max_players: int = MAX_EXACT_PLAYERS):
        self.max_players = max_players

    def _fit(self, game, req, rng):
        from scipy.optimize import linprog

        n = game.n
        if n == 0:
            self.subsidy_ = 0.0
            return np.zeros(0)
        v = _all_values(game, req, self.max_players, "least core")
        v = v - v[0]
        if n == 1:
            self.subsidy_ = 0.0
            return v[1:].copy()
        masks = np.arange(1, (1 << n) - 1, dtype=np.int64)
        member = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
        a_ub = -np.hstack([member, np.ones((member.shape[0], 1))])
        b_ub = -v[masks]
        a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
        c = np.zeros(n + 1)
        c[-1] = 1.0
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[v[-1]],
                      bounds=[(None, None)] * (n + 1), method="highs")
        if not res.success:
            raise RuntimeError(f"least-core LP failed: {res.message}")
        self.subsidy_ = float(res.x[-1])
        return res.x[:n]
