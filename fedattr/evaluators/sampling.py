"""Monte-Carlo evaluators: TMC-Shapley, GTG-Shapley and Maximum-Sample-Reuse Banzhaf."""

from __future__ import annotations

import time

import numpy as np

from .base import BudgetExhausted, MonteCarloEvaluator, _RunningStats, register
from .game import matrix_to_masks
from .stopping import EstimatorState, MaxPermutations, MaxSamples, RelativeChange, StandardError, StoppingRule

__all__ = ["TMCShapley", "GTGShapley", "BanzhafMSR", "antithetic_mean", "draw_permutations", "walk_permutations"]


def draw_permutations(rng: np.random.Generator, n: int, count: int, antithetic: bool) -> np.ndarray:
    """``max(1, count)`` random permutations of ``n`` players ``[B, n]``, each followed by its
    reverse when ``antithetic``."""
    perms = []
    for _ in range(max(1, int(count))):
        p = rng.permutation(n)
        perms.append(p)
        if antithetic:
            perms.append(p[::-1])
    return np.stack(perms)


def antithetic_mean(rows: np.ndarray, antithetic: bool) -> np.ndarray:
    """Per-permutation rows of :func:`draw_permutations`' output, each antithetic pair averaged."""
    return (rows[0::2] + rows[1::2]) / 2 if antithetic else rows


def walk_permutations(req, perms: np.ndarray, v_empty: float, v_full: float, truncation: float | None) -> np.ndarray:
    """Marginal contributions ``[B, n]`` along ``B`` permutations walked in lockstep.

    Step ``j`` requests the ``j``-th prefixes of all permutations still running in one cache
    call. A permutation stops once ``|v(N) - v(prefix)| < truncation``; its remaining players get
    marginal 0 (the GTG/TMC convention).
    """
    perms = np.asarray(perms, dtype=np.int64)
    b, n = perms.shape
    marg = np.zeros((b, n))
    prev = np.full(b, float(v_empty))
    masks = [0] * b
    active = np.ones(b, dtype=bool)
    for j in range(n):
        if truncation is not None:
            active &= np.abs(v_full - prev) >= truncation
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        for r in idx:
            masks[r] |= 1 << int(perms[r, j])
        vals = req.values([masks[r] for r in idx])
        marg[idx, perms[idx, j]] = vals - prev[idx]
        prev[idx] = vals
    return marg


@register("tmc")
class TMCShapley(MonteCarloEvaluator):
    """Truncated Monte-Carlo Shapley (Ghorbani & Zou 2019) on the round game.

    Draws uniform random permutations, walks each one adding players, and stops a walk once
    ``|v(N) - v(prefix)| < truncation`` (later players get marginal 0); values are the mean
    marginals. Truncation is absolute, in utility units (the original used a ratio of the full
    score with a patience of 5; on accuracy-scale utilities 0.001 is one tenth of a percent).

    Parameters
    ----------
    truncation : float or None
        Within-permutation truncation threshold; None walks every permutation to the end.
    antithetic : bool
        Pair each permutation with its reverse; a pair counts as one sample (mean of the two).
    stop : StoppingRule, optional
        Default ``RelativeChange(0.05, window=10, min_samples=30) | MaxPermutations(500)``:
        the GTG-Shapley convergence criterion, checked after every sample.
    batch_permutations : int
        Permutations walked in lockstep so that their prefixes share cache calls (helps
        vectorised engines; the stopping rule is checked per batch, and a batch cut by the hard
        evaluation budget is dropped whole).

    Attributes
    ----------
    n_permutations_ : int
        Permutations walked and used.
    n_samples_, stderr_, budget_exhausted_ :
        See :class:`MonteCarloEvaluator`.
    """

    def __init__(self, truncation: float | None = 0.001, antithetic: bool = False,
                 stop: StoppingRule | None = None, batch_permutations: int = 1):
        self.truncation = truncation
        self.antithetic = antithetic
        self.stop = stop
        self.batch_permutations = batch_permutations

    def _default_stop(self):
        return RelativeChange(0.05, window=10, min_samples=30) | MaxPermutations(500)

    def _fit(self, game, req, rng):
        n = game.n
        stop = self.stop_
        stats = _RunningStats(n)
        self.budget_exhausted_ = False
        n_perm = 0
        if n:
            v0, vn = req.values([0, game.full_mask])
            while True:
                perms = draw_permutations(rng, n, self.batch_permutations, self.antithetic)
                try:
                    marg = walk_permutations(req, perms, v0, vn, self.truncation)
                except BudgetExhausted:
                    self.budget_exhausted_ = True
                    break
                for row in antithetic_mean(marg, self.antithetic):
                    stats.add(row)
                n_perm += len(perms)
                if stop.check(self._state(req, stats, n_perm)):
                    break
        self.n_permutations_ = n_perm
        self.n_samples_ = stats.n_samples
        self.stderr_ = stats.stderr()
        return stats.means


@register("gtg")
class GTGShapley(MonteCarloEvaluator):
    """GTG-Shapley (Liu et al. 2022) with the reference code's defaults.

    1. Between-round truncation: if ``|v(N) - v(empty)| <= eps_round`` every player gets 0 and
       only those 2 coalitions are evaluated (``skipped_`` is True).
    2. Guided sampling in cycles of ``n`` permutations: permutation ``k`` of a cycle puts player
       ``k`` first and the others in random order.
    3. Within-round truncation: a walk stops once ``|v(N) - v(prefix)| < eps_within``; later
       players get marginal 0.
    4. Utilities are memoised (here by the round's shared cache). Unlike the reference code,
       truncated (approximate) prefix values are never memoised as if evaluated.
    5. After each cycle, once more than ``min_permutations`` permutations are done, stop when
       every one of the last ``window`` running means is within ``tolerance`` mean relative
       change of the current one; also stop at ``max_permutations`` (checked per cycle) or when
       ``stop`` says so.

    Parameters
    ----------
    eps_round, eps_within : float
        Between-round and within-round truncation thresholds (utility units).
    min_permutations, window, tolerance : int, int, float
        Convergence criterion (reference: 30, 10, 0.05).
    max_permutations : int
        Cap on permutations (the reference has none; a maintained fork caps them).
    normalize : bool
        Scale the values to sum to ``v(N) - v(empty)`` (as the maintained fork does).
    stop : StoppingRule, optional
        Extra rule OR-ed with the criterion above, checked per cycle (e.g. ``MaxTime``,
        ``MaxEvaluations``; the latter is also a hard budget).
    batch_permutations : int
        Permutations of a cycle walked in lockstep to share cache calls (results are identical
        for any value, except when a hard budget cuts a batch, which is then dropped whole).

    Attributes
    ----------
    skipped_ : bool
        Whether the round was truncated (gain within ``eps_round``).
    converged_ : bool
        Whether the convergence criterion (not a cap) ended sampling.
    n_permutations_, n_samples_, stderr_, budget_exhausted_ :
        See :class:`MonteCarloEvaluator`.
    """

    def __init__(self, eps_round: float = 0.01, eps_within: float = 0.001, min_permutations: int = 30,
                 window: int = 10, tolerance: float = 0.05, max_permutations: int = 500,
                 normalize: bool = False, stop: StoppingRule | None = None, batch_permutations: int = 1):
        self.eps_round = eps_round
        self.eps_within = eps_within
        self.min_permutations = min_permutations
        self.window = window
        self.tolerance = tolerance
        self.max_permutations = max_permutations
        self.normalize = normalize
        self.stop = stop
        self.batch_permutations = batch_permutations

    def _rule(self):
        cap = MaxPermutations(self.max_permutations)
        self.stop_ = cap if self.stop is None else (self.stop | cap)
        return self.stop_

    def _fit(self, game, req, rng):
        n = game.n
        stop = self.stop_
        converge = RelativeChange(self.tolerance, window=self.window, min_samples=0)
        stats = _RunningStats(n)
        self.skipped_ = False
        self.converged_ = False
        self.budget_exhausted_ = False
        k = 0
        if n:
            v0, vn = req.values([0, game.full_mask])
            if abs(vn - v0) <= self.eps_round:
                self.skipped_ = True
            else:
                step = max(1, int(self.batch_permutations))
                while not self.budget_exhausted_:
                    perms = np.empty((n, n), dtype=np.int64)
                    for i in range(n):
                        perms[i, 0] = i
                        perms[i, 1:] = rng.permutation(np.delete(np.arange(n), i))
                    for s in range(0, n, step):
                        try:
                            marg = walk_permutations(req, perms[s:s + step], v0, vn, self.eps_within)
                        except BudgetExhausted:
                            self.budget_exhausted_ = True
                            break
                        for row in marg:
                            stats.add(row)
                        k += marg.shape[0]
                    if self.budget_exhausted_:
                        break
                    state = self._state(req, stats, k)
                    if k > self.min_permutations and converge.check(state):
                        self.converged_ = True
                        break
                    if stop.check(state):
                        break
        values = stats.means.copy()
        if self.normalize and not self.skipped_ and n:
            total = values.sum()
            if total != 0:
                values *= (vn - v0) / total
        self.n_permutations_ = k
        self.n_samples_ = stats.n_samples
        self.stderr_ = stats.stderr()
        return values


@register("banzhaf_msr")
class BanzhafMSR(MonteCarloEvaluator):
    """Maximum-Sample-Reuse Banzhaf (Wang & Jia 2023).

    Samples coalitions with every player in independently with probability 1/2; the value of
    player ``i`` is the mean of ``v`` over samples containing ``i`` minus the mean over samples
    without ``i``, so every sample is reused for every player.

    Parameters
    ----------
    batch_size : int
        Samples drawn per cache call (and per stopping check).
    stop : StoppingRule, optional
        Default ``StandardError(0.002, min_samples=64) | MaxSamples(1000)``.

    Attributes
    ----------
    n_samples_ : int
        Coalition samples drawn (repeats included).
    stderr_ : ndarray
        ``sqrt(var_in / n_in + var_out / n_out)`` per player.
    budget_exhausted_ : bool
    """

    def __init__(self, batch_size: int = 32, stop: StoppingRule | None = None):
        self.batch_size = batch_size
        self.stop = stop

    def _default_stop(self):
        return StandardError(0.002, min_samples=64) | MaxSamples(1000)

    def _fit(self, game, req, rng):
        n = game.n
        stop = self.stop_
        s1 = np.zeros((2, n))  # sums of v over samples with / without each player
        s2 = np.zeros((2, n))
        cnt = np.zeros((2, n))
        n_samples = 0
        history = []
        self.budget_exhausted_ = False
        means, stderr = np.zeros(n), np.full(n, np.inf)
        while n:
            member = rng.random((max(1, int(self.batch_size)), n)) < 0.5
            masks = matrix_to_masks(member)
            k = req.affordable(masks)
            if k < len(masks):
                self.budget_exhausted_ = True
                member, masks = member[:k], masks[:k]
            if k:
                v = req.values(masks)
                inside = member.astype(np.float64)
                for side, w in ((0, inside), (1, 1.0 - inside)):
                    s1[side] += v @ w
                    s2[side] += (v * v) @ w
                    cnt[side] += w.sum(0)
                n_samples += k
                means, stderr = self._estimate(s1, s2, cnt)
                history.append(means)
            if self.budget_exhausted_:
                break
            state = EstimatorState(n_samples=n_samples, n_evaluations=req.n_evaluations,
                                   elapsed=time.perf_counter() - self._t0, means=means, stderr=stderr,
                                   history=history, n_permutations=0)
            if stop.check(state):
                break
        self.n_samples_ = n_samples
        self.stderr_ = stderr
        return means

    @staticmethod
    def _estimate(s1, s2, cnt):
        safe = np.maximum(cnt, 1)
        mean = s1 / safe
        var = np.maximum(s2 / safe - mean ** 2, 0.0) * cnt / np.maximum(cnt - 1, 1)
        values = np.where((cnt > 0).all(0), mean[0] - mean[1], 0.0)
        stderr = np.where((cnt > 1).all(0), np.sqrt(var[0] / safe[0] + var[1] / safe[1]), np.inf)
        return values, stderr
