"""FLAME's clustering step (Nguyen et al. 2022): HDBSCAN on cosine distances of the updates."""

from __future__ import annotations

import numpy as np

from ._stats import cosine_matrix
from .base import Detector, DetectorResult, RoundUpdates, register_detector


@register_detector("flame")
class Flame(Detector):
    """Clients outside the majority cluster are flagged.

    ``sklearn.cluster.HDBSCAN`` on the pairwise cosine distances ``1 - cos(g_i, g_j)`` with
    ``min_cluster_size = n // 2 + 1``, ``min_samples=1`` and ``allow_single_cluster=True``, as in
    FLAME; the admitted clients are the largest cluster (HDBSCAN's noise label -1 is never
    admitted). If no cluster forms, nobody is flagged and ``info["no_cluster"]`` is True.
    FLAME's norm clipping and noise act on aggregation, not on this decision, and are not
    part of the detector. Scores are each client's median cosine distance to the others
    (higher = more suspicious).

    Parameters
    ----------
    min_samples : int
        HDBSCAN's ``min_samples`` (1 in FLAME).
    """

    def __init__(self, min_samples: int = 1):
        self.min_samples = min_samples

    @classmethod
    def check_params(cls, params, num_clients):
        v = params.get("min_samples", 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"detector 'flame': min_samples must be an integer >= 1, got {v!r}")

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        from sklearn.cluster import HDBSCAN

        n = round_updates.n
        if n < 3:
            return DetectorResult(np.zeros(n), np.zeros(n, dtype=bool), True, {"labels": [0] * n, "no_cluster": n == 0})
        dist = np.clip(1.0 - cosine_matrix(round_updates.updates), 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        dist = 0.5 * (dist + dist.T)  # exact symmetry for the precomputed metric
        labels = HDBSCAN(
            min_cluster_size=n // 2 + 1, min_samples=min(self.min_samples, n - 1),
            metric="precomputed", allow_single_cluster=True, copy=True,
        ).fit(dist).labels_
        off = dist + np.diag(np.full(n, np.nan))
        scores = np.nanmedian(off, axis=1)
        clustered = labels[labels >= 0]
        if clustered.size == 0:
            return DetectorResult(scores, np.zeros(n, dtype=bool), True, {"labels": labels.tolist(), "no_cluster": True})
        majority = np.bincount(clustered).argmax()
        return DetectorResult(scores, labels != majority, True,
                              {"labels": labels.tolist(), "majority_label": int(majority), "no_cluster": False})
