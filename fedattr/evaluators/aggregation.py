"""Coalition aggregation rules: the round game aggregates every coalition as the server does.

Each rule maps the updates of one coalition ``[k, P]`` and their example counts ``[k]`` to the
coalition's aggregate update ``[P]``, mirroring one Flower strategy of
``flwr.serverapp.strategy`` (which aggregates weights ``w_i = w_t + g_i``; the rules work on
updates, which is the same computation shifted by ``w_t``):

- FedAvg: the weighted mean (``RoundGame``'s built-in matmul path, so no rule object);
- :class:`CoordinateMedian` (FedMedian): ``np.median`` per coordinate;
- :class:`TrimmedMean` (FedTrimmedAvg): drop ``int(beta * k)`` values per side per coordinate;
- :class:`KrumSelect` (Krum, MultiKrum): keep the ``m`` updates with the smallest sum of squared
  distances to their ``k - f - 2`` nearest, then their weighted mean;
- :class:`BulyanRule` (Bulyan): Multi-Krum selects ``theta = k - 2f``, then per coordinate the
  mean of the ``theta - 2f`` values closest to the selection's median; a coalition of fewer than
  ``4f + 3`` is not aggregated (Flower skips the round), so its update is zero.

Plain torch: no Flower import.
"""

from __future__ import annotations

import torch

__all__ = ["CoordinateMedian", "TrimmedMean", "KrumSelect", "BulyanRule", "krum_scores", "krum_scores_from_distances"]


def _median(u: torch.Tensor) -> torch.Tensor:
    # numpy's median: the mean of the two middle values for an even count (torch.median takes
    # the lower one).
    k = u.shape[0]
    s = u.sort(dim=0).values
    if k % 2:
        return s[k // 2]
    return (s[k // 2 - 1] + s[k // 2]) / 2


def _weighted_mean(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.to(u.dtype)
    tot = w.sum()
    p = w / tot if float(tot) > 0 else torch.full_like(w, 1.0 / len(w))
    return p @ u


def krum_scores(u: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """Krum score of each row: the sum of squared L2 distances to its ``k - f - 2`` nearest rows."""
    u64 = u.to(torch.float64)
    norms = (u64 * u64).sum(1)
    return krum_scores_from_distances(norms[:, None] + norms[None, :] - 2 * u64 @ u64.T, num_malicious)


def krum_scores_from_distances(dist: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """Krum scores from a ``[k, k]`` squared-distance matrix, by Flower's rule (the detectors
    score with the same function, so a flag and a selection never disagree on a score)."""
    k = dist.shape[0]
    num_closest = max(1, k - num_malicious - 2)
    # Flower sorts each row and skips its first entry (the row itself, distance ~0).
    order = dist.argsort(dim=1, stable=True)[:, 1:num_closest + 1]
    return torch.gather(dist, 1, order).sum(1)


class CoordinateMedian:
    """FedMedian's rule: the coordinate-wise median of the coalition's updates."""

    name = "fedmedian"

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _median(updates)


class TrimmedMean:
    """FedTrimmedAvg's rule: per coordinate, the mean after dropping ``int(beta * k)`` per side.

    Parameters
    ----------
    beta : float
        Fraction cut from each side, in [0, 0.5).
    """

    name = "fedtrimmedavg"

    def __init__(self, beta: float = 0.2):
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = updates.shape[0]
        cut = int(self.beta * k)
        s = updates.sort(dim=0).values
        return s[cut:k - cut].mean(0)


class KrumSelect:
    """Krum / Multi-Krum's rule: the weighted mean of the ``num_to_select`` best-scored updates.

    Parameters
    ----------
    num_malicious : int
        ``f``, the number of attackers assumed.
    num_to_select : int
        Updates kept (1 = Krum).
    """

    name = "multikrum"

    def __init__(self, num_malicious: int = 0, num_to_select: int = 1):
        self.num_malicious = int(num_malicious)
        self.num_to_select = int(num_to_select)

    def select(self, updates: torch.Tensor) -> torch.Tensor:
        """Row indices kept, best first."""
        scores = krum_scores(updates, self.num_malicious)
        return scores.argsort(stable=True)[: self.num_to_select]

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        keep = self.select(updates)
        return _weighted_mean(updates[keep], weights[keep])


class BulyanRule:
    """Bulyan's rule (El Mhamdi et al., 2018) as Flower implements it.

    Parameters
    ----------
    num_malicious : int
        ``f``; a coalition needs at least ``4f + 3`` members to be aggregated.
    """

    name = "bulyan"

    def __init__(self, num_malicious: int = 0):
        self.num_malicious = int(num_malicious)

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k, f = updates.shape[0], self.num_malicious
        if k < 4 * f + 3:
            return torch.zeros_like(updates[0])
        theta = k - 2 * f
        beta = theta - 2 * f
        chosen = updates[KrumSelect(f, theta).select(updates)]
        med = _median(chosen)
        idx = (chosen - med).abs().argsort(dim=0, stable=True)[:beta]
        return torch.gather(chosen, 0, idx).mean(0)
