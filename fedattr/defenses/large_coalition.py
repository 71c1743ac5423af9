"""A semivalue over large coalitions only: what a client adds to (nearly) the whole federation.

The attack buys value in small coalitions, where the attacker's synthetic classes are new; in a
coalition that already holds most of the federation, only what the others lack still counts.
``large_coalition`` averages a client's marginal contribution over coalitions of the *other*
players of the ``depth + 1`` largest sizes, each size weighing the same and, within a size,
each coalition the same:

    ``phi_i = sum_{s = n-1-depth}^{n-1} 1/(depth+1) * mean_{S in N-i, |S| = s} [v(S + i) - v(S)]``.

``depth = 0`` is leave-one-out, ``depth = n - 1`` the Shapley value; in between it is a
semivalue (linear, symmetric, null player) that ignores the small coalitions. It reads only
the coalitions of size ``>= n - 1 - depth`` (a subset of exact Shapley's, so free after it).
Hypothesis to measure: the attacker's inflation shrinks towards LOO's while the benign ranking
stays nearer Shapley's than LOO's.
"""

from __future__ import annotations

import math

import numpy as np

from fedattr.evaluators import Evaluator

__all__ = ["SCORERS", "LargeCoalitionSemivalue", "large_coalition_weights"]


def large_coalition_weights(n: int, depth: int) -> np.ndarray:
    """Weight of one coalition of size ``s`` (0..n-1) of the other players: ``1 / ((d + 1) C(n-1, s))``
    for ``s >= n - 1 - d`` (``d = min(depth, n - 1)``), 0 below."""
    d = min(int(depth), n - 1)
    w = np.zeros(n)
    for s in range(n - 1 - d, n):
        w[s] = 1.0 / ((d + 1) * math.comb(n - 1, s))
    return w


class LargeCoalitionSemivalue(Evaluator):
    """Mean marginal contribution over the coalitions of the others of the ``depth + 1`` largest sizes.

    Parameters
    ----------
    depth : int
        How many sizes below ``n - 1`` are included (0 = leave-one-out; ``>= n - 1`` = Shapley).
    max_players : int
        Largest ``n`` accepted (the coalitions read grow like ``C(n, depth + 1)``).

    Attributes (after ``fit``)
    --------------------------
    weights_ : ndarray
        Weight per coalition size (``large_coalition_weights``).
    """

    def __init__(self, depth: int = 2, max_players: int = 14):
        self.depth = depth
        self.max_players = max_players

    def _fit(self, game, req, rng):
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"evaluator 'large_coalition': depth must be an integer >= 0, got {self.depth!r}")
        n = game.n
        if n > self.max_players:
            raise ValueError(f"evaluator 'large_coalition' is limited to n <= {self.max_players} players (got n={n})")
        if n == 0:
            return np.zeros(0)
        w = self.weights_ = large_coalition_weights(n, self.depth)
        lo = n - 1 - min(self.depth, n - 1)
        masks = [m for m in range(1 << n) if m.bit_count() >= lo]
        v = dict(zip(masks, req.values(masks)))
        phi = np.zeros(n)
        for m in masks:
            s = m.bit_count()
            if s >= n:
                continue
            for i in range(n):
                if not m >> i & 1:
                    phi[i] += w[s] * (v[m | 1 << i] - v[m])
        return phi


#: Registry name -> scoring rule of this module (``fedattr.defenses.register_scoring_rules`` adds them).
SCORERS = {"large_coalition": LargeCoalitionSemivalue}
