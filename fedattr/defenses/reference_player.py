"""Public-reference player: score clients by what they add beyond what public data already gives.

The attacker's synthetic images come from a generator trained on the public auxiliary split, so
whatever they teach the model, the server could have taught it from the same public data. The
server trains a reference update ``g_r`` on that public data (from ``w_t``, with the clients'
local-training recipe), adds it as a player that is always present, and values the clients in
the game

    ``v'(S) = v(S + r) - v(r)``,    ``v(S) = U(w_t + agg_S(g))``,

i.e. by their marginal utility on top of public knowledge. A client whose contribution the
public data already delivers (synthetic images of public classes) gets little; a client with
private data the public set lacks keeps its value. Hypothesis to measure, not a guarantee: a
genuine holder of rare classes also loses the part of its value the public reference covers.

Cost: one local training on the public set per round and the ``2^n`` coalitions that contain
the reference (exact Shapley as base: one more exact Shapley's worth of utility evaluations).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedattr.evaluators import ModelUtility, RoundGame
from fedattr.learning.training import train_local

from .robust_scoring import _proxy, _Wrapper

__all__ = ["SCORERS", "ReferencePlayer", "reference_game", "train_reference", "public_subset"]

WEIGHTS = ("median", "mean", "max")


def public_subset(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``per_class`` images of every class present in ``(x, y)``, drawn with ``seed`` (sorted by position)."""
    gen = torch.Generator().manual_seed(int(seed))
    y = torch.as_tensor(y).long()
    keep = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).reshape(-1)
        keep.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    sel = torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)
    return x[sel], y[sel]


def train_reference(utility: ModelUtility, base: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1,
                    batch_size: int = 32, lr: float = 0.05, seed: int = 0) -> torch.Tensor:
    """The flat update ``w - w_t`` of the utility's model trained from ``base`` (``w_t``) on ``(x, y)``."""
    layout = utility.layout
    model = copy.deepcopy(utility._model).cpu()  # the architecture the utility evaluates
    model.load_state_dict(layout.to_state_dict(base.detach().cpu(), model.state_dict()))
    model.requires_grad_(True)
    train_local(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return layout.flatten(model.state_dict()).to(base.device, base.dtype) - base


def reference_game(game: RoundGame, update: torch.Tensor, weight: float) -> RoundGame:
    """``game`` with one more player (index ``n``): the reference update with aggregation weight ``weight``.

    Coalitions without the reference are the same models as in ``game``: their cached values are
    reused.
    """
    updates = torch.cat([game.updates, torch.as_tensor(update, dtype=game.updates.dtype,
                                                       device=game.updates.device).reshape(1, -1)])
    ext = RoundGame(game.utility, game.base, updates, weights=np.append(game.weights, float(weight)),
                    players=[*game.players, "reference"], aggregate=game.aggregate_fn)
    ext.cache.prefill(game.cache.items())
    return ext


class ReferencePlayer(_Wrapper):
    """The base evaluator on the game with a public-reference player always present:
    ``v'(S) = v(S + r) - v(r)``, ``r`` an update trained from ``w_t`` on the public data.

    The public data is the game's ``public_data`` (``(x, y)``, set by the server's
    ``RoundScorer`` from the public auxiliary split); a game may instead carry a precomputed flat
    ``reference_update``. A game with neither (a table, as in scenario validation) gets the base
    values with ``applied_ = False``.

    Parameters
    ----------
    base, base_params : str, dict
        The evaluator run on the reference game (default exact Shapley).
    per_class : int
        Public images per class the reference trains on (50).
    epochs, batch_size, lr : int, int, float
        Its local training (1, 32, 0.05: the claim regime's client recipe).
    weight : {"median", "mean", "max"} or float
        The reference's aggregation weight: a statistic of the clients' weights (their example
        counts) or a number.
    seed : int
        Seed of the public subset (fixed across rounds); the minibatch order is seeded per fit.

    Attributes (after ``fit``)
    --------------------------
    reference_value_ : float
        ``v(r) - v(empty)``: what the public reference alone adds this round.
    reference_weight_ : float
        The weight it was aggregated with.
    """

    def __init__(self, base: str = "shapley", base_params: dict | None = None, per_class: int = 50, epochs: int = 1,
                 batch_size: int = 32, lr: float = 0.05, weight: str | float = "median", seed: int = 0):
        super().__init__(base, base_params)
        self.per_class = per_class
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight = weight
        self.seed = seed

    def _check(self) -> None:
        for key in ("per_class", "epochs", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"evaluator 'reference_player': {key} must be an integer >= 1, got {v!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"evaluator 'reference_player': lr must be > 0, got {self.lr!r}")
        w = self.weight
        if isinstance(w, str) and w not in WEIGHTS:
            raise ValueError(f"evaluator 'reference_player': weight must be one of {list(WEIGHTS)} or a number > 0, got {w!r}")
        if not isinstance(w, str) and (isinstance(w, bool) or not float(w) > 0):
            raise ValueError(f"evaluator 'reference_player': weight must be one of {list(WEIGHTS)} or a number > 0, got {w!r}")

    def _weight(self, weights: np.ndarray) -> float:
        if not isinstance(self.weight, str):
            return float(self.weight)
        if weights.size == 0:
            return 1.0
        return float({"median": np.median, "mean": np.mean, "max": np.max}[self.weight](weights))

    def _reference(self, game, rng) -> torch.Tensor | None:
        ref = getattr(game, "reference_update", None)
        if ref is not None:
            return torch.as_tensor(ref)
        public = getattr(game, "public_data", None)
        if public is None or not isinstance(game, RoundGame) or not isinstance(game.utility, ModelUtility):
            return None
        x, y = public_subset(public[0], public[1], self.per_class, self.seed)
        if len(y) == 0:
            return None
        return train_reference(game.utility, game.base, x, y, epochs=self.epochs, batch_size=self.batch_size,
                               lr=float(self.lr), seed=self._seed(rng))

    def fit(self, game, seed=None):
        self._ext_ = None
        super().fit(game, seed)
        if self._ext_ is not None:
            # The coalitions with the reference are new models: count them as this evaluator's cost.
            self.n_evaluations_ = int(self._requests.n_evaluations + self._ext_.cache.n_evaluations)
            self.n_new_evaluations_ = int(self._ext_.cache.n_evaluations)
        return self

    def _fit(self, game, req, rng):
        self._check()
        seed = self._seed(rng)
        ref = self._reference(game, rng) if isinstance(game, RoundGame) else None
        if ref is None:
            self.applied_ = False
            self.reference_value_ = 0.0
            return self._base().fit(_proxy(game, req.values), seed=seed).values_
        self.applied_ = True
        self.reference_weight_ = self._weight(np.asarray(game.weights, dtype=np.float64))
        ext = self._ext_ = reference_game(game, ref, self.reference_weight_)
        rbit = 1 << game.n
        v0, v_ref = ext.values([0, rbit])
        self.reference_value_ = float(v_ref - v0)

        def request(masks):
            return ext.values([int(m) | rbit for m in masks]) - v_ref

        return self._base().fit(_proxy(game, request), seed=seed).values_


#: Registry name -> scoring rule of this module (``fedattr.defenses.register_scoring_rules`` adds them).
SCORERS = {"reference_player": ReferencePlayer}
