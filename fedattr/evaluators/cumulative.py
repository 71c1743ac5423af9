"""Multi-round accumulation of per-round values, keyed by player id."""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import numpy as np

__all__ = ["CumulativeValues"]


class CumulativeValues:
    """Per-player totals of per-round values over a run, keyed by player (partition) id.

    Each ``update`` adds one round. Players absent from a round get nothing for it (their
    totals, normalised totals and moving averages are left unchanged).

    - ``total_[p]``: sum of ``p``'s per-round values.
    - ``normalised_[p]``: sum of ``p``'s per-round values, each divided by the sum of absolute
      values of that round (so every round carries a total mass of 1 whatever its gain; an
      all-zero round adds 0).
    - ``ema_[p]`` (when ``ema_alpha`` is set): ``r <- ema_alpha * r + (1 - ema_alpha) * value``,
      starting from 0, as CGSV's reputation.
    - ``per_participation_[p]``: ``total_[p]`` divided by ``rounds_present_[p]`` (the rounds ``p``
      took part in). With client sampling the total is what a client earned over the run, and
      the value per participation its contribution rate: fair between clients sampled unevenly.

    Parameters
    ----------
    ema_alpha : float, optional
        Smoothing factor of the moving average; None disables it.

    Attributes
    ----------
    total_, normalised_, ema_ : dict
    rounds_present_ : dict
        Rounds in which each player had a value (its participation count).
    per_participation_ : dict
        ``total_[p] / rounds_present_[p]``.
    n_rounds_ : int
        Rounds added.
    history_ : list of dict
        ``{player: value}`` of every round, in order.
    """

    def __init__(self, ema_alpha: float | None = None):
        self.ema_alpha = ema_alpha
        self.total_: dict = {}
        self.normalised_: dict = {}
        self.ema_: dict = {}
        self.rounds_present_: dict = {}
        self.n_rounds_ = 0
        self.history_: list[dict] = []

    def update(self, players: Sequence[Hashable], values: Iterable[float]) -> "CumulativeValues":
        """Add one round: ``values[k]`` belongs to ``players[k]``."""
        values = np.asarray(list(values), dtype=np.float64)
        players = list(players)
        if len(players) != values.shape[0]:
            raise ValueError(f"{len(players)} players but {values.shape[0]} values")
        if len(set(players)) != len(players):
            raise ValueError("duplicate player ids in one round")
        # Summed in player order (not numpy's pairwise sum), so records stay bit-identical to
        # earlier versions of the testbed.
        mass = sum(abs(v) for v in values.tolist())
        for p, v in zip(players, values.tolist()):
            self.total_[p] = self.total_.get(p, 0.0) + v
            self.normalised_[p] = self.normalised_.get(p, 0.0) + (v / mass if mass > 0 else 0.0)
            self.rounds_present_[p] = self.rounds_present_.get(p, 0) + 1
            if self.ema_alpha is not None:
                self.ema_[p] = self.ema_alpha * self.ema_.get(p, 0.0) + (1 - self.ema_alpha) * v
        self.n_rounds_ += 1
        self.history_.append(dict(zip(players, values.tolist())))
        return self

    def add(self, evaluator) -> "CumulativeValues":
        """Add the round just fitted by ``evaluator`` (its ``players_`` and ``values_``)."""
        return self.update(evaluator.players_, evaluator.values_)

    @property
    def per_participation_(self) -> dict:
        """Each player's total divided by the number of rounds it took part in."""
        return {p: self.total_[p] / self.rounds_present_[p] for p in self.total_}

    @property
    def players_(self) -> list:
        """Every player seen, sorted when the ids are comparable."""
        try:
            return sorted(self.total_)
        except TypeError:
            return list(self.total_)

    def as_array(self, kind: str = "total", players: Sequence | None = None) -> np.ndarray:
        """Values of ``kind`` (``total``, ``normalised``, ``ema`` or ``per_participation``) for ``players``
        (default all; 0 if unseen)."""
        table = {"total": self.total_, "normalised": self.normalised_, "ema": self.ema_,
                 "per_participation": self.per_participation_}
        if kind not in table:
            raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}")
        players = self.players_ if players is None else list(players)
        return np.array([table[kind].get(p, 0.0) for p in players], dtype=np.float64)

    def ranking(self, kind: str = "total") -> list:
        """Players from highest to lowest value of ``kind`` (ties keep id order)."""
        players = self.players_
        vals = self.as_array(kind, players)
        return [players[i] for i in np.argsort(-vals, kind="stable")]
