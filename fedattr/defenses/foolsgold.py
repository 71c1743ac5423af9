"""FoolsGold (Fung et al. 2020): down-weight clients whose accumulated updates look alike."""

from __future__ import annotations

import numpy as np
import torch

from ._stats import as_float64, cosine_matrix
from .base import Detector, DetectorResult, RoundUpdates, register_detector


def foolsgold_weights(cs: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """FoolsGold's weights from a pairwise cosine matrix of accumulated updates (Algorithm 1).

    ``v_i = max_j cs_ij``; pardoning ``cs_ij *= v_i / v_j`` where ``v_j > v_i``; ``a_i = 1 -
    max_j cs_ij`` clipped to [0, 1] and divided by its maximum; then the logit
    ``kappa (ln(a / (1 - a)) + 0.5)`` clipped to [0, 1] (``a = 1`` is taken as 0.99).
    """
    n = cs.shape[0]
    if n <= 1:
        return np.ones(n)
    cs = np.array(cs, dtype=np.float64)
    np.fill_diagonal(cs, -np.inf)
    v = cs.max(1)
    pard = cs.copy()
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i] and v[j] > 0:
                pard[i, j] *= v[i] / v[j]
    a = np.clip(1.0 - pard.max(1), 0.0, 1.0)
    top = a.max()
    if top <= 0:
        return np.zeros(n)  # every client has an identical twin
    a = a / top
    a[a >= 1.0] = 0.99
    with np.errstate(divide="ignore"):
        w = kappa * (np.log(a / (1.0 - a)) + 0.5)
    w[~np.isfinite(w) & (w > 0)] = 1.0
    return np.clip(np.nan_to_num(w, nan=0.0, neginf=0.0), 0.0, 1.0)


@register_detector("foolsgold")
class FoolsGold(Detector):
    """FoolsGold weights on each client's updates summed over every round it took part in.

    State: the running sum of each partition id's updates, kept across rounds until
    ``reset()``; each round compares the accumulated updates of that round's clients. Scores are
    the weights (lower = more suspicious); a weight at or below ``flag_below`` is flagged.

    Parameters
    ----------
    kappa : float
        Confidence of the logit (1 in the paper).
    flag_below : float
        Flag a client whose weight is at or below this ("weight ~ 0").
    """

    def __init__(self, kappa: float = 1.0, flag_below: float = 1e-3):
        self.kappa = kappa
        self.flag_below = flag_below
        self.reset()

    def reset(self) -> None:
        self.history_: dict[int, torch.Tensor] = {}
        self.rounds_seen_: dict[int, int] = {}

    @classmethod
    def check_params(cls, params, num_clients):
        if not float(params.get("kappa", 1.0)) > 0:
            raise ValueError(f"detector 'foolsgold': kappa must be > 0, got {params['kappa']!r}")
        if not 0 <= float(params.get("flag_below", 1e-3)) < 1:
            raise ValueError(f"detector 'foolsgold': flag_below must be in [0, 1), got {params['flag_below']!r}")

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        g = as_float64(round_updates.updates).cpu()
        for pid, row in zip(round_updates.players, g):
            pid = int(pid)
            prev = self.history_.get(pid)
            if prev is not None and prev.shape != row.shape:
                raise ValueError(f"foolsgold: client {pid}'s update changed length ({prev.numel()} -> {row.numel()})")
            self.history_[pid] = row.clone() if prev is None else prev + row
            self.rounds_seen_[pid] = self.rounds_seen_.get(pid, 0) + 1
        hist = torch.stack([self.history_[int(p)] for p in round_updates.players]) if round_updates.n else g
        cs = cosine_matrix(hist)
        w = foolsgold_weights(cs, self.kappa)
        off = cs.copy()
        np.fill_diagonal(off, -np.inf)
        return DetectorResult(
            w, w <= self.flag_below, False,
            {"max_cosine": (off.max(1) if round_updates.n > 1 else np.zeros(round_updates.n)).tolist(),
             "rounds_accumulated": [self.rounds_seen_[int(p)] for p in round_updates.players]},
        )
