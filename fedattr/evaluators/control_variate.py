"""Control-variate Shapley: the surrogate's exact values plus a sampled real-minus-surrogate residual."""

from __future__ import annotations

import time

import numpy as np

from .base import BudgetExhausted, MonteCarloEvaluator, _RunningStats, register
from .sampling import antithetic_mean, draw_permutations, walk_permutations
from .stopping import EstimatorState, MaxPermutations, RelativeChange, StoppingRule
from .logit_surrogate import (
    DEFAULT_LOGIT_ANCHOR,
    DEFAULT_PAIR_RIDGE,
    LogitSurrogateGame,
    _check_anchor,
    _logit_surrogate,
)
from .surrogate import MAX_EXACT_SURROGATE_PLAYERS, SurrogateGame, _calibrated_surrogate

__all__ = ["ControlVariateShapley", "SURROGATE_KINDS"]

#: The surrogates ``cv_shapley`` can use as its control variate.
SURROGATE_KINDS = ("logit", "taylor")


@register("cv_shapley")
class ControlVariateShapley(MonteCarloEvaluator):
    """Shapley values as ``phi(v~) + phi(v - v~)``, with ``v~`` a surrogate of the round game.

    ``phi(v~)`` is computed exactly on the surrogate (enumerated up to ``max_exact_players``);
    ``phi(v - v~)`` is estimated from uniform random permutations of the real game: each walk
    requests its prefixes through the shared cache, and the sample is the real marginals minus
    the surrogate's marginals on the same prefixes. Without truncation the estimator is
    unbiased whatever the surrogate; the closer the surrogate, the smaller its variance (zero
    when the surrogate equals the game).

    Parameters
    ----------
    surrogate_kind : {"logit", "taylor"}
        ``"logit"``: the logit-linear surrogate (:class:`LogitSurrogateGame`, ``n + 2`` real
        forwards, shared through the cache); ``"taylor"``: the second-order expansion
        (:class:`SurrogateGame`, a gradient and ``n`` Hessian-vector products).
    anchor, n_pairs, pair_ridge :
        The logit surrogate's anchoring (``"grand"``, ``"clients"``, ``"both"``, ``"loo"``,
        ``"pairs"``) and its pairs, as in :class:`LogitSurrogateShapley`; the pairs are drawn
        with the fit's seed.
    metric, temperature, calibrate, batch_size, center :
        The Taylor surrogate's settings, as in :class:`SurrogateShapley` (unused by ``"logit"``).
    surrogate : SurrogateGame or LogitSurrogateGame, optional
        Use this surrogate (whatever ``surrogate_kind``) instead of building one from the game.
    antithetic : bool
        Pair each permutation with its reverse; a pair is one sample.
    truncation : float or None
        TMC-style truncation of the real walk (biased; None keeps the estimator unbiased).
    stop : StoppingRule, optional
        Default ``RelativeChange(0.01, window=5, min_samples=5) | MaxPermutations(500)``; the
        relative change is that of the full estimate (surrogate plus residual).
    batch_permutations : int
        Permutations walked in lockstep to share cache calls.
    max_exact_players, n_permutations_surrogate : int
        Enumerate the surrogate up to this many players; sample it with this many permutations
        beyond.

    Attributes
    ----------
    surrogate_values_ : ndarray
        ``phi(v~)``.
    residual_ : ndarray
        The estimate of ``phi(v - v~)``.
    surrogate_ : SurrogateGame or LogitSurrogateGame
    n_permutations_, n_samples_, stderr_, budget_exhausted_ :
        See :class:`MonteCarloEvaluator` (``stderr_`` is the residual's).
    """

    def __init__(self, metric: str | None = None, temperature: float = 1.0, calibrate: bool = True,
                 antithetic: bool = True, truncation: float | None = None, stop: StoppingRule | None = None,
                 batch_permutations: int = 1, max_exact_players: int = MAX_EXACT_SURROGATE_PLAYERS,
                 n_permutations_surrogate: int = 4000, batch_size: int = 500, center: bool = True,
                 surrogate: SurrogateGame | LogitSurrogateGame | None = None, surrogate_kind: str = "logit",
                 anchor: str = DEFAULT_LOGIT_ANCHOR, n_pairs: int | None = None,
                 pair_ridge: float = DEFAULT_PAIR_RIDGE):
        self.metric = metric
        self.temperature = temperature
        self.calibrate = calibrate
        self.antithetic = antithetic
        self.truncation = truncation
        self.stop = stop
        self.batch_permutations = batch_permutations
        self.max_exact_players = max_exact_players
        self.n_permutations_surrogate = n_permutations_surrogate
        self.batch_size = batch_size
        self.center = center
        self.surrogate = surrogate
        self.surrogate_kind = surrogate_kind
        self.anchor = anchor
        self.n_pairs = n_pairs
        self.pair_ridge = pair_ridge

    def _surrogate_game(self, game, req, rng):
        if self.surrogate_kind not in SURROGATE_KINDS:
            raise ValueError(f"unknown surrogate_kind {self.surrogate_kind!r}; valid: {', '.join(SURROGATE_KINDS)}")
        _check_anchor(self.anchor)
        if isinstance(self.surrogate, LogitSurrogateGame) or (self.surrogate is None and self.surrogate_kind == "logit"):
            return _logit_surrogate(self, game, req, rng)
        return _calibrated_surrogate(self, game, req)

    def _default_stop(self):
        return RelativeChange(0.01, window=5, min_samples=5) | MaxPermutations(500)

    def _fit(self, game, req, rng):
        n = game.n
        stop = self.stop_
        stats = _RunningStats(n, keep_history=False)
        history: list[np.ndarray] = []
        self.budget_exhausted_ = False
        n_perm = 0
        base = np.zeros(n)
        if n:
            try:
                sur = self._surrogate_game(game, req, rng)
                v0, vn = req.values([0, game.full_mask])
            except BudgetExhausted:
                raise ValueError(f"the evaluation budget ({req.budget}) does not cover the real coalitions the "
                                 f"surrogate is built from (n + 2 = {n + 2} for the logit surrogate, 2n + 2 = "
                                 f"{2 * n + 2} with anchor 'loo', more with 'pairs', 2 for the Taylor one)") from None
            base, _ = sur.shapley(self.max_exact_players, self.n_permutations_surrogate, rng)
            self.surrogate_ = sur
            while True:
                perms = draw_permutations(rng, n, self.batch_permutations, self.antithetic)
                try:
                    real = walk_permutations(req, perms, v0, vn, self.truncation)
                except BudgetExhausted:
                    self.budget_exhausted_ = True
                    break
                resid = antithetic_mean(real - sur.permutation_marginals(perms), self.antithetic)
                for row in resid:
                    stats.add(row)
                    history.append(base + stats.means)
                n_perm += len(perms)
                state = EstimatorState(
                    n_samples=stats.n_samples, n_evaluations=req.n_evaluations,
                    elapsed=time.perf_counter() - self._t0, means=history[-1], stderr=stats.stderr(),
                    history=history, n_permutations=n_perm,
                )
                if stop.check(state):
                    break
        self.surrogate_values_ = base
        self.residual_ = stats.means
        self.n_permutations_ = n_perm
        self.n_samples_ = stats.n_samples
        self.stderr_ = stats.stderr()
        return base + stats.means
