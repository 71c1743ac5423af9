"""Krum and Multi-Krum scores (Blanchard et al. 2017) with ``f`` assumed attackers."""

from __future__ import annotations

import numpy as np
import torch

from fedattr.evaluators.aggregation import krum_scores_from_distances

from ._stats import squared_distances
from .base import Detector, DetectorResult, RoundUpdates, register_detector


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row of a squared-distance matrix (zero diagonal): the sum of its
    ``n - f - 2`` smallest distances to the others (at least 1 neighbour); the aggregation
    rule's own function, so detector and Krum selection agree."""
    if dist.shape[0] <= 1:
        return np.zeros(dist.shape[0])
    return krum_scores_from_distances(torch.from_numpy(np.asarray(dist, dtype=np.float64)), f).numpy()


def _check_f(name: str, f, n: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"detector {name!r}: f must be an integer >= 0, got {f!r}")
    if n < 2 * f + 3:
        raise ValueError(
            f"detector {name!r}: f={f} needs at least 2f+3={2 * f + 3} clients per round, got {n}"
        )


class _KrumBase(Detector):
    def __init__(self, f: int = 1):
        self.f = f

    @classmethod
    def check_params(cls, params, num_clients):
        _check_f(cls.name, params.get("f", 1), num_clients)


@register_detector("multikrum")
class MultiKrum(_KrumBase):
    """Multi-Krum: score = sum of squared L2 distances to the ``n - f - 2`` nearest updates;
    the ``f`` highest scores are flagged (the ``n - f`` lowest are what Multi-Krum averages).

    Parameters
    ----------
    f : int
        Assumed number of attackers per round; needs ``n >= 2f + 3``.
    """

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        n = round_updates.n
        _check_f(self.name, self.f, n)
        scores = krum_scores(squared_distances(round_updates.updates), self.f)
        flags = np.zeros(n, dtype=bool)
        if self.f:
            # Stable order: of tied scores, the later position is flagged first.
            flags[np.argsort(-scores, kind="stable")[: self.f]] = True
        return DetectorResult(scores, flags, True, {"f": self.f, "neighbours": max(1, n - self.f - 2)})


@register_detector("krum")
class Krum(_KrumBase):
    """Krum's selection: the update with the lowest Krum score wins; the kept ``n - f`` are the
    winner and its ``n - f - 1`` nearest updates, and the ``f`` updates farthest from the winner
    are flagged. Scores are the Krum scores (as in :class:`MultiKrum`).

    Unlike :class:`MultiKrum`, which flags the ``f`` worst-scored updates, this flags by
    distance to the single update Krum would pick, so a tight pair of colluding outliers (low
    scores, since they vouch for each other) is still flagged when far from the winner.

    Parameters
    ----------
    f : int
        Assumed number of attackers per round; needs ``n >= 2f + 3``.
    """

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        n = round_updates.n
        _check_f(self.name, self.f, n)
        dist = squared_distances(round_updates.updates)
        scores = krum_scores(dist, self.f)
        winner = int(np.argmin(scores))
        to_winner = dist[winner].copy()
        to_winner[winner] = -np.inf  # the winner is always kept
        kept = np.argsort(to_winner, kind="stable")[: n - self.f]
        flags = np.ones(n, dtype=bool)
        flags[kept] = False
        return DetectorResult(scores, flags, True, {
            "f": self.f, "winner": winner, "squared_distance_to_winner": dist[winner].tolist(),
        })
