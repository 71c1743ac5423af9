"""A surrogate of the round game that is linear in logit space, with the utility exact on top.

Per validation example ``x`` the logits of coalition ``S``'s model are approximated from ``n + 2``
real forward passes (the empty coalition ``w_t``, every singleton ``w_t + g_i`` and the grand
coalition ``w_N``):

    z~_x(S) = z_x(w_t) + sum_i c_i(S) d_ix + alpha(S) r_x,        z~_x(empty) = z_x(w_t),
    d_ix = z_x(w_t + g_i) - z_x(w_t),    r_x = z_x(w_N) - z_x(w_t) - sum_i p_i d_ix,

with ``c(S)`` FedAvg's renormalised coefficients (zero-weight fallback included), ``p = c(N)`` and
``r`` the grand coalition's departure from logit linearity. The anchoring decides ``alpha``:

- ``"grand"``: ``alpha = 1``, i.e. ``z~(S) = z(w_N) + sum_i (c_i(S) - p_i) d_i``: exact at the
  empty and the grand coalition.
- ``"clients"``: ``alpha = 0`` (the FedAvg-weighted average of the clients' logits): exact at
  the empty coalition and every singleton, not at ``N``.
- ``"both"``: ``alpha = (1 - |c(S)|^2) / (1 - |p|^2)``: exact at the empty coalition, every
  singleton and ``N``. (For logits quadratic in the parameters with equal pairwise curvature,
  the departure from linear interpolation is proportional to ``1 - |c|^2``.)
- ``"loo"``: ``n`` more real forwards, the leave-one-out coalitions ``N \\ {k}``, and a
  curvature per client instead of one: ``alpha(S) r`` becomes ``sum_i c_i(S) (1 - c_i(S)) u_i``
  (0 at singletons; ``1 - |c|^2`` times ``u`` when every ``u_i = u``), with ``u [n, V, C]`` the
  least-squares fit of the residuals at ``N`` and the ``n`` leave-one-out coalitions. Exact at
  the empty coalition, singletons, leave-one-out coalitions and ``N`` (their real values).
- ``"pairs"``: the ``loo`` forwards plus ``k`` pair coalitions ``{i, j}`` drawn at random, and a
  curvature per pair on top of the per-client one: ``+ sum_{i<j} 2 c_i(S) c_j(S) e_ij``, i.e. the
  logits quadratic in ``c`` with a free symmetric interaction matrix. ``u`` and every ``e_ij``
  (observed pairs or not) are fitted jointly to the residuals at ``N``, the leave-one-out
  coalitions and the drawn pairs, by least squares with a ridge on ``e`` (``pair_ridge`` times the
  mean diagonal of the ``e`` block of the normal equations), which pulls the pairs no forward
  informs towards the ``loo`` surrogate. With every pair drawn and no ridge it is exact on logits
  quadratic in ``c``. Exact at the ``loo`` anchors and the drawn pairs.

The game's metric (accuracy, neg_ce, balanced_accuracy) is computed exactly on the mixed
logits, so a coalition value costs ``O(n_val x classes x n)`` and no model forward. Where the
construction is exact, the real values of those coalitions are returned (no round-off). When
the logits are affine in the parameters (e.g. a linear model) every anchoring equals the game.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import Evaluator, register
from .game import Game, RoundGame, coalition_table, masks_to_matrix
from .surrogate import fedavg_coefficients, surrogate_shapley_values

__all__ = ["LOGIT_ANCHORS", "LogitSurrogateGame", "LogitSurrogateShapley", "choose_pairs", "default_n_pairs",
           "logit_surrogate_for"]

LOGIT_ANCHORS = ("grand", "clients", "both", "loo", "pairs")
SAMPLING_DESIGNS = ("cyclic", "antithetic")
DEFAULT_LOGIT_ANCHOR = "loo"
DEFAULT_PAIR_RIDGE = 0.01
MAX_EXACT_LOGIT_PLAYERS = 20
_SCORED_METRICS = ("accuracy", "neg_ce", "balanced_accuracy")
# Mixed-logit elements held at once (per chunk of coalitions or permutations).
_CHUNK_ELEMENTS = 1 << 22
# Mixed-logit elements per walked batch of permutations: small enough that the running sums and
# the scored logits stay in a core's cache (on 2 shared cores 50 rows of 500 x 10 logits walked
# in about half the time per row of 800 rows).
_WALK_ELEMENTS = 1 << 18


def _anchor_masks(n: int, anchor: str, pairs: Sequence[int] = ()) -> list[int]:
    full = (1 << n) - 1
    masks = [0] + [1 << i for i in range(n)] + [full]
    if anchor in ("loo", "pairs"):
        masks += [full ^ (1 << k) for k in range(n)]
    if anchor == "pairs":
        masks += [int(m) for m in pairs]
    return list(dict.fromkeys(masks))


def default_n_pairs(n: int) -> int:
    """Pairs drawn by ``anchor="pairs"`` when not given: about three per client, ``3n - 1``
    (29 at n = 10, so that with the ``2n + 2`` other anchors the surrogate costs 51 real
    evaluations, a twentieth of the 1,024 coalitions), at most every pair."""
    return min(n * (n - 1) // 2, max(0, 3 * n - 1))


def choose_pairs(n: int, n_pairs: int | None = None, seed: int | np.random.Generator | None = 0) -> list[int]:
    """``n_pairs`` distinct pair coalitions ``{i, j}`` (bitmasks, sorted) drawn uniformly at random;
    every pair when ``n_pairs`` is at least ``n (n - 1) / 2``; ``default_n_pairs(n)`` when None."""
    total = n * (n - 1) // 2
    k = default_n_pairs(n) if n_pairs is None else n_pairs
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"n_pairs must be a non-negative integer, got {n_pairs!r}")
    ii, jj = np.triu_indices(n, 1)
    pick = np.random.default_rng(seed).permutation(total)[:min(int(k), total)]
    return sorted(int((1 << int(ii[p])) | (1 << int(jj[p]))) for p in pick)


def _check_anchor(anchor: str) -> str:
    if anchor not in LOGIT_ANCHORS:
        raise ValueError(f"unknown anchor {anchor!r}; valid: {', '.join(LOGIT_ANCHORS)}")
    return anchor


class LogitSurrogateGame(Game):
    """The logit-linear surrogate game (see the module docstring).

    Parameters
    ----------
    z_empty : Tensor [V, C]
        Logits of the empty coalition's model ``w_t`` on the ``V`` validation examples.
    z_clients : Tensor [n, V, C]
        Logits of each singleton's model ``w_t + g_i``.
    z_full : Tensor [V, C]
        Logits of the grand coalition's model.
    y : Tensor [V]
        Validation labels.
    metric : {"accuracy", "neg_ce", "balanced_accuracy"}
        As :class:`ModelUtility` computes it (cross-entropy in float32, summed in float64).
    weights : array [n], optional
        FedAvg weights (default ones).
    anchor : {"grand", "clients", "both", "loo", "pairs"}
    players : sequence, optional
    num_classes : int, optional
        Default ``C``.
    anchor_values : dict, optional
        Real values ``{mask: value}`` of the anchor coalitions (default: the metric of the given
        logits); returned where the construction is exact.
    z_loo : Tensor [n, V, C], optional
        Logits of each leave-one-out coalition ``N \\ {k}`` (required by ``anchor="loo"`` and
        ``"pairs"``).
    pairs : sequence of int, optional
        Bitmasks of the pair coalitions ``{i, j}`` whose logits ``z_pairs [k, V, C]`` are given
        (``anchor="pairs"``; may be empty).
    pair_ridge : float
        The ridge on the pair curvatures (``anchor="pairs"``), relative to the mean diagonal of
        their block of the normal equations; 0 for plain least squares (minimum norm).
    """

    def __init__(self, z_empty, z_clients, z_full, y, metric: str = "accuracy", weights=None,
                 anchor: str = DEFAULT_LOGIT_ANCHOR, players: Sequence | None = None,
                 num_classes: int | None = None, anchor_values: dict | None = None, z_loo=None,
                 pairs: Sequence[int] = (), z_pairs=None, pair_ridge: float = DEFAULT_PAIR_RIDGE):
        z_clients = torch.as_tensor(z_clients)
        if z_clients.dim() != 3:
            raise ValueError(f"z_clients must be [n, V, C], got {tuple(z_clients.shape)}")
        n, v, c = z_clients.shape
        super().__init__(n, players)
        if metric not in _SCORED_METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(_SCORED_METRICS)}")
        self.metric = metric
        self.anchor = _check_anchor(anchor)
        dtype = z_clients.dtype if z_clients.is_floating_point() else torch.float32
        device = z_clients.device
        self.z0 = torch.as_tensor(z_empty).to(device, dtype).reshape(v, c)
        z_full = torch.as_tensor(z_full).to(device, dtype).reshape(v, c)
        self.d = z_clients.to(dtype) - self.z0
        self.y = torch.as_tensor(y).to(device).long().reshape(-1)
        if self.y.shape[0] != v:
            raise ValueError(f"{self.y.shape[0]} labels for {v} examples")
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if self.weights.shape[0] != n:
            raise ValueError(f"{self.weights.shape[0]} weights for {n} players")
        self.num_classes = int(num_classes or c)
        self.n_val = v
        self.p = fedavg_coefficients(np.ones((1, n), dtype=bool), self.weights)[0] if n else np.zeros(0)
        p = torch.as_tensor(self.p, dtype=dtype, device=device)
        self.r = z_full - self.z0 - (p @ self.d.reshape(n, -1)).reshape(v, c) if n else torch.zeros_like(self.z0)
        self._pp = float(self.p @ self.p)
        # Curvature coefficients ``[features, V * C]`` of ``_features`` (``loo``/``pairs``):
        # ``u`` (per client) is its first ``n`` rows, ``e`` (per pair, ``pairs`` only) the rest.
        self._curv = self.u = self.e = None
        self.pairs = [int(m) for m in pairs] if self.anchor == "pairs" else []
        self._pair_i, self._pair_j = np.triu_indices(n, 1)
        if self.anchor in ("loo", "pairs"):
            if z_loo is None:
                raise ValueError(f"anchor={self.anchor!r} needs the leave-one-out coalitions' logits (z_loo)")
            z_loo = torch.as_tensor(z_loo).to(device, dtype).reshape(n, v, c)
            member = ~np.eye(n, dtype=bool)
            if self.pairs:
                if z_pairs is None or len(z_pairs) != len(self.pairs):
                    raise ValueError(f"{len(self.pairs)} pairs need as many pair logits (z_pairs)")
                bad = [m for m in self.pairs if bin(m).count("1") != 2 or m >> n]
                if bad:
                    raise ValueError(f"not pair coalitions of {n} players: {bad}")
                z_pairs = torch.as_tensor(z_pairs).to(device, dtype).reshape(len(self.pairs), v, c)
                member = np.vstack([member, masks_to_matrix(self.pairs, n)])
            c_fit = fedavg_coefficients(member, self.weights)
            lin = self.z0.reshape(1, -1) + torch.as_tensor(c_fit, dtype=dtype, device=device) @ self.d.reshape(n, -1)
            z_fit = z_loo.reshape(n, -1)
            if self.pairs:
                z_fit = torch.cat([z_fit, z_pairs.reshape(len(self.pairs), -1)])
            resid = torch.cat([self.r.reshape(1, -1), z_fit - lin]).to(torch.float64)
            a = self._features(np.vstack([self.p, c_fit]))
            if self.anchor == "loo":
                coef = np.linalg.pinv(a)
            else:
                # Ridge on the pair block only, scaled to it: the pairs no forward informs are
                # pulled towards the per-client curvature of ``loo``.
                if not pair_ridge >= 0:
                    raise ValueError(f"pair_ridge must be >= 0, got {pair_ridge!r}")
                gram = a.T @ a
                pen = np.zeros(a.shape[1])
                if a.shape[1] > n:
                    pen[n:] = float(pair_ridge) * np.diag(gram)[n:].mean()
                coef = np.linalg.pinv(gram + np.diag(pen)) @ a.T
            beta = torch.as_tensor(coef, dtype=torch.float64, device=device) @ resid
            self._curv = beta.to(dtype)
            self.u = self._curv[:n].reshape(n, v, c)
            if self.anchor == "pairs":
                self.e = self._curv[n:]
        counts = torch.bincount(self.y, minlength=self.num_classes).to(torch.float64)
        self._present = counts > 0
        self._counts = counts
        self._onehot = F.one_hot(self.y, self.num_classes).to(torch.float32)
        # Real (or given) values of the coalitions the construction is exact at.
        anchor_values = dict(anchor_values or {})
        masks = [0] + [1 << i for i in range(n)] + [self.full_mask]
        logits = [self.z0] + list(z_clients.to(dtype)) + [z_full]
        if self.anchor in ("loo", "pairs"):
            masks += [self.full_mask ^ (1 << k) for k in range(n)]
            logits += list(z_loo)
        if self.pairs:
            masks += self.pairs
            logits += list(z_pairs)
        need = [k for k, m in enumerate(masks) if m not in anchor_values]
        if need:
            scored = self.scores(torch.stack([logits[k] for k in need]))
            anchor_values.update({masks[k]: float(s) for k, s in zip(need, scored)})
        self.v_empty = float(anchor_values[0])
        self.v_clients = np.array([anchor_values[1 << i] for i in range(n)], dtype=np.float64)
        self.v_full = float(anchor_values[self.full_mask])
        self.v_loo = (np.array([anchor_values[self.full_mask ^ (1 << k)] for k in range(n)], dtype=np.float64)
                      if self.anchor in ("loo", "pairs") else None)
        self.v_pairs = {m: float(anchor_values[m]) for m in self.pairs}
        self._table: np.ndarray | None = None
        self._cm: dict | None = None
        self.forward_seconds_ = 0.0
        #: torch intra-op threads of the sampled Shapley walk (None: torch's setting); the round
        #: game's ``utility.num_threads`` when built by :meth:`from_round_game`.
        self.num_threads: int | None = None

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_round_game(cls, game: RoundGame, anchor: str = DEFAULT_LOGIT_ANCHOR,
                        logits: dict | None = None, pairs: Sequence[int] | None = None,
                        pair_ridge: float = DEFAULT_PAIR_RIDGE) -> "LogitSurrogateGame":
        """Build the surrogate of a FedAvg round game with a :class:`ModelUtility`: ``n + 2`` real
        forwards (``utility.logits``; ``2n + 2`` for ``anchor="loo"``, ``2n + 2 + k`` for
        ``"pairs"`` with ``k`` pair coalitions: ``pairs``, default ``choose_pairs(n)``).
        ``logits``, a dict ``{mask: logits [V, C]}``, supplies forwards already run and receives
        the new ones.

        The values of the anchor coalitions (empty, singletons, ``N``) not yet in the game's
        cache are computed from these logits and recorded there as evaluations, so that no
        model is run twice; cached values are used as they are.
        """
        utility = getattr(game, "utility", None)
        if not isinstance(game, RoundGame) or not hasattr(utility, "logits"):
            raise ValueError("the logit surrogate needs a RoundGame whose utility is a ModelUtility")
        if game.aggregate_fn is not None:
            raise ValueError("the logit surrogate mixes FedAvg coefficients; this round game uses a custom aggregation")
        _check_anchor(anchor)
        metric = getattr(utility, "metric", None)
        n = game.n
        if anchor == "pairs" and pairs is None:
            pairs = choose_pairs(n)
        pairs = list(pairs or ()) if anchor == "pairs" else []
        masks = _anchor_masks(n, anchor, pairs)
        logits = {} if logits is None else logits
        t0 = time.perf_counter()
        todo = [m for m in masks if m not in logits]
        if todo:
            step = int(getattr(utility, "max_coalitions_per_call_", len(todo)) or len(todo))
            with torch.no_grad():
                for s in range(0, len(todo), step):
                    logits.update(zip(todo[s:s + step], utility.logits(game.aggregate_many(todo[s:s + step]))))
        seconds = time.perf_counter() - t0
        z_empty = logits[0]

        def stack(ms):
            return (torch.stack([logits[m] for m in ms]) if ms else
                    torch.zeros((0,) + tuple(z_empty.shape), dtype=z_empty.dtype, device=z_empty.device))
        _, y = utility.validation_
        known = {m: game.cache.peek(m) for m in masks if m in game.cache}
        out = cls(z_empty, stack([1 << i for i in range(n)]), logits[game.full_mask], y, metric, game.weights,
                  anchor, game.players, getattr(utility, "num_classes_", None), known,
                  stack([game.full_mask ^ (1 << k) for k in range(n)]) if anchor in ("loo", "pairs") else None,
                  pairs, stack(pairs), pair_ridge)
        new = [(m, out._anchor_value(m)) for m in masks if m not in known]
        game.cache.record(new, seconds * len(new) / max(len(todo), 1))
        out.forward_seconds_ = time.perf_counter() - t0
        out.num_threads = getattr(utility, "num_threads", None)
        return out

    @property
    def anchor_masks(self) -> list[int]:
        """The real coalitions the surrogate is built from: empty, every singleton, ``N`` (and
        every leave-one-out coalition for ``anchor="loo"``, and the drawn pairs for ``"pairs"``)."""
        return _anchor_masks(self.n, self.anchor, self.pairs)

    def _features(self, coef: np.ndarray) -> np.ndarray:
        """Curvature features of coefficient rows ``[K, n]``: ``c_i (1 - c_i)`` per client, and
        ``2 c_i c_j`` per pair ``i < j`` for ``anchor="pairs"``."""
        own = coef * (1 - coef)
        if self.anchor != "pairs":
            return own
        return np.hstack([own, 2 * coef[:, self._pair_i] * coef[:, self._pair_j]])

    def _anchor_value(self, mask: int) -> float:
        mask = int(mask)
        if mask == 0:
            return self.v_empty
        if mask == self.full_mask:
            return self.v_full
        if mask & (mask - 1) == 0:
            return float(self.v_clients[mask.bit_length() - 1])
        if mask in self.v_pairs:
            return self.v_pairs[mask]
        return float(self.v_loo[(self.full_mask ^ mask).bit_length() - 1])

    # scoring -----------------------------------------------------------------------------------
    def scores(self, z: torch.Tensor) -> np.ndarray:
        """The metric of ``[K, V, C]`` logits, float64 ``[K]`` (as :class:`ModelUtility`)."""
        k = z.shape[0]
        if self.metric == "neg_ce":
            ce = F.cross_entropy(z.reshape(k * self.n_val, -1).float(), self.y.repeat(k), reduction="none")
            return (-ce.view(k, self.n_val).sum(1, dtype=torch.float64) / self.n_val).cpu().numpy()
        correct = z.argmax(-1) == self.y[None]
        if self.metric == "accuracy":
            return (correct.sum(1, dtype=torch.float64) / self.n_val).cpu().numpy()
        per_class = (correct.to(torch.float32) @ self._onehot).to(torch.float64)
        return (per_class[:, self._present] / self._counts[self._present]).mean(1).cpu().numpy()

    def _alpha(self, c2: np.ndarray) -> np.ndarray:
        if self.anchor in ("loo", "pairs"):
            return np.zeros_like(c2)  # the curvature is per client (``u``), added separately
        if self.anchor == "grand":
            return np.ones_like(c2)
        if self.anchor == "clients" or 1.0 - self._pp <= 1e-12:
            return np.zeros_like(c2)
        return (1.0 - c2) / (1.0 - self._pp)

    def _exact_rows(self, size: np.ndarray, member: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Replace the values of coalitions the construction is exact at by their real values."""
        out[size == 0] = self.v_empty
        if self.anchor in ("clients", "both", "loo", "pairs"):
            one = size == 1
            if one.any():
                out[one] = self.v_clients[member[one].argmax(1)]
        if self.anchor in ("loo", "pairs") and self.n > 1:
            loo = size == self.n - 1
            if loo.any():
                out[loo] = self.v_loo[(~member[loo]).argmax(1)]
        if self.v_pairs:
            two = np.nonzero(size == 2)[0]
            if two.size:
                i, j = np.nonzero(member[two])[1].reshape(-1, 2).T
                for row, a, b in zip(two, i.tolist(), j.tolist()):
                    m = (1 << a) | (1 << b)
                    if m in self.v_pairs:
                        out[row] = self.v_pairs[m]
        if self.anchor in ("grand", "both", "loo", "pairs"):
            out[size == self.n] = self.v_full
        return out

    # values ------------------------------------------------------------------------------------
    def _mixed(self, coef: np.ndarray, c2: np.ndarray) -> torch.Tensor:
        c = torch.as_tensor(coef, dtype=self.d.dtype, device=self.d.device)
        alpha = torch.as_tensor(self._alpha(c2), dtype=self.d.dtype, device=self.d.device)
        z = (c @ self.d.reshape(self.n, -1)).reshape(-1, *self.z0.shape)
        if self._curv is not None:
            f = torch.as_tensor(self._features(coef), dtype=self.d.dtype, device=self.d.device)
            z = z + (f @ self._curv).reshape(-1, *self.z0.shape)
        return z + self.z0 + alpha[:, None, None] * self.r

    def values_of(self, member: np.ndarray) -> np.ndarray:
        """Values of the coalitions in a ``[K, n]`` membership matrix (no cache), in chunks."""
        member = np.asarray(member, dtype=bool).reshape(-1, self.n)
        out = np.empty(member.shape[0])
        step = max(1, _CHUNK_ELEMENTS // max(1, self.z0.numel()))
        with torch.no_grad():
            for s in range(0, member.shape[0], step):
                m = member[s:s + step]
                c = fedavg_coefficients(m, self.weights)
                out[s:s + m.shape[0]] = self.scores(self._mixed(c, (c * c).sum(1)))
        return self._exact_rows(member.sum(1), member, out)

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        return self.values_of(masks_to_matrix(masks, self.n))

    def table(self, chunk: int = 1 << 14) -> np.ndarray:
        """All ``2^n`` values indexed by bitmask (computed once, then kept)."""
        if self._table is None:
            self._table = coalition_table(self.values_of, self.n, chunk)
        return self._table

    def permutation_marginals(self, perms: np.ndarray, use_table: bool = True) -> np.ndarray:
        """Marginal contributions ``[B, n]`` along ``B`` permutations.

        With the table already built (and ``use_table``) they are its prefix differences.
        Otherwise every permutation is walked once (:meth:`prefix_values`).
        """
        perms = np.asarray(perms, dtype=np.int64).reshape(-1, self.n)
        b, n = perms.shape
        marg = np.zeros((b, n))
        if b == 0 or n == 0:
            return marg
        rows = np.arange(b)
        if use_table and self._table is not None:
            masks = np.cumsum(np.left_shift(np.int64(1), perms), axis=1)
            vals = self._table[masks]
            marg[rows[:, None], perms] = np.diff(vals, axis=1, prepend=self.v_empty)
            return marg
        marg[rows[:, None], perms] = np.diff(self.prefix_values(perms), axis=1)
        return marg

    def _class_major(self) -> dict:
        """The walk's tensors with the class axis ahead of the examples (``[..., C, V]``): the
        metric's reductions over a handful of classes then run over long contiguous rows."""
        if self._cm is None:
            c, v = self.z0.shape[1], self.n_val
            self._cm = {
                "d": self.d.transpose(1, 2).contiguous(),
                "u": None if self.u is None else self.u.transpose(1, 2).contiguous(),
                "z0": self.z0.T.contiguous(),
                "r": self.r.T.contiguous(),
                # Classes ahead of each example's label: argmax takes the first of tied maxima.
                "lower": torch.arange(c, device=self.y.device)[:, None] < self.y[None],
                "index": self.y.view(1, 1, v),
            }
        return self._cm

    def _scores_class_major(self, z: torch.Tensor) -> np.ndarray:
        """The metric of ``[B, C, V]`` logits, float64 ``[B]``: :meth:`scores` on the transposed
        logits (cross-entropy in float32, summed in float64; accuracy as argmax, first of ties)."""
        cm = self._class_major()
        b = z.shape[0]
        if self.metric == "neg_ce":
            z = z.float()
        zy = z.gather(1, cm["index"].expand(b, 1, -1))[:, 0]
        top = z.amax(1)
        if self.metric == "neg_ce":
            lse = (z - top[:, None]).exp_().sum(1).log_().add_(top)
            return ((zy - lse).sum(1, dtype=torch.float64) / self.n_val).cpu().numpy()
        before = torch.where(cm["lower"], z, torch.finfo(z.dtype).min).amax(1)
        correct = (zy >= top) & ((zy > before) | ~cm["lower"].any(0))
        if self.metric == "accuracy":
            return (correct.sum(1, dtype=torch.float64) / self.n_val).cpu().numpy()
        per_class = (correct.to(torch.float32) @ self._onehot).to(torch.float64)
        return (per_class[:, self._present] / self._counts[self._present]).mean(1).cpu().numpy()

    def prefix_values(self, perms: np.ndarray) -> np.ndarray:
        """Values ``[B, n + 1]`` of the prefixes of ``B`` permutations (column 0 the empty
        coalition), walked incrementally: per prefix ``sum w_i d_i``, ``W = sum w_i`` and ``sum
        w_i^2`` (and the unweighted sums, used while the prefix's weights sum to 0, as FedAvg
        does), ``O(n V C)`` per permutation, no model forward (``anchor="pairs"``: every prefix
        through :meth:`values_of`). Where the construction is exact the real values are returned."""
        perms = np.asarray(perms, dtype=np.int64).reshape(-1, self.n)
        b, n = perms.shape
        step = max(1, _WALK_ELEMENTS // max(1, self.z0.numel()))
        if b > step:
            return np.concatenate([self.prefix_values(perms[s:s + step]) for s in range(0, b, step)])
        vals = np.empty((b, n + 1))
        vals[:, 0] = self.v_empty
        if b == 0 or n == 0:
            return vals
        if self.e is not None:
            # Pair curvatures make a prefix's value quadratic in its members: score the prefixes.
            member = np.zeros((b, n, n), dtype=bool)
            member[np.arange(b)[:, None], np.arange(n)[None], perms] = True
            member = np.cumsum(member, axis=1, dtype=np.int8).astype(bool)
            vals[:, 1:] = self.values_of(member.reshape(b * n, n)).reshape(b, n)
            return vals
        cm = self._class_major()
        d, u, z0, r = cm["d"], cm["u"], cm["z0"], cm["r"]
        dt, dev = d.dtype, d.device
        zero = bool(np.any(self.weights == 0))
        equal = not zero and bool(np.all(self.weights == self.weights[0]))
        s_w = torch.zeros((b,) + tuple(z0.shape), dtype=dt, device=dev)
        s_1 = torch.zeros_like(s_w) if zero else None
        curv = u is not None
        # With per-client curvature: sum w_i u_i, sum w_i^2 u_i (and sum u_i for the fallback).
        s_u = torch.zeros_like(s_w) if curv else None
        s_uu = torch.zeros_like(s_w) if curv else None
        s_1u = torch.zeros_like(s_w) if curv and zero else None
        z = torch.empty_like(s_w)
        w_sum, w_sq, k = np.zeros(b), np.zeros(b), np.zeros(b)
        exact_first = self.anchor in ("clients", "both", "loo")
        exact_last = self.anchor in ("grand", "both", "loo")
        with torch.no_grad():
            for j in range(n):
                i = perms[:, j]
                wi = self.weights[i]
                it = torch.as_tensor(i, device=dev)
                di = d.index_select(0, it)
                wt = None if equal else torch.as_tensor(wi, dtype=dt, device=dev)[:, None, None]
                # Equal weights: the plain sum, divided by the count below (the same mean).
                s_w.add_(di) if equal else s_w.addcmul_(wt, di)
                if curv:
                    ui = u.index_select(0, it)
                    if equal:
                        s_u.add_(ui)
                    else:
                        s_u.addcmul_(wt, ui)
                        s_uu.addcmul_(wt * wt, ui)
                    if zero:
                        s_1u.add_(ui)
                if zero:
                    s_1.add_(di)
                w_sum += wi
                w_sq += wi * wi
                k += 1
                if j == 0 and exact_first:
                    vals[:, 1] = self.v_clients[i]
                    continue
                if j == n - 1 and exact_last:
                    vals[:, n] = self.v_full
                    continue
                if j == n - 2 and self.anchor == "loo" and n > 1:
                    vals[:, n - 1] = self.v_loo[perms[:, n - 1]]
                    continue
                pos = w_sum > 0
                safe = np.where(pos, w_sum, 1.0)
                c2 = np.where(pos, w_sq / safe ** 2, 1.0 / k)
                if equal:
                    kk = float(k[0])
                    torch.mul(s_w, 1.0 / kk, out=z)
                    if curv:
                        z.add_(s_u, alpha=1.0 / kk - 1.0 / kk ** 2)
                else:
                    inv = torch.as_tensor(1.0 / safe, dtype=dt, device=dev)[:, None, None]
                    torch.mul(s_w, inv, out=z)
                    if curv:
                        z.addcmul_(s_u, inv).addcmul_(s_uu, inv * inv, value=-1.0)
                    if zero and not pos.all():
                        kk = float(k[0])
                        alt = s_1 / kk + ((1 / kk - 1 / kk ** 2) * s_1u if curv else 0.0)
                        z = torch.where(torch.as_tensor(pos, device=dev)[:, None, None], z, alt)
                z.add_(z0)
                if self.anchor not in ("clients", "loo"):
                    alpha = torch.as_tensor(self._alpha(c2), dtype=dt, device=dev)[:, None, None]
                    z.addcmul_(alpha, r)
                vals[:, j + 1] = self._scores_class_major(z)
        return vals

    def shapley(self, max_exact_players: int = MAX_EXACT_LOGIT_PLAYERS, n_permutations: int = 1000,
                seed: int | np.random.Generator | None = 0, batch: int = 200,
                design: str = "cyclic") -> tuple[np.ndarray, bool]:
        """Shapley values: exact by enumeration for ``n <= max_exact_players``, otherwise the
        mean marginals of about ``n_permutations`` sampled permutations. ``design="cyclic"``
        (default): ``ceil(n_permutations / 2n)`` random base permutations, each standing for
        its ``2n`` cyclic shifts and reversed shifts (:meth:`cyclic_marginals`: balanced over
        positions, half the walks); ``"antithetic"``: independent permutations in antithetic
        pairs. Returns ``(values, exact)``."""
        with _intra_op_threads(self.num_threads):
            return self._shapley(max_exact_players, n_permutations, seed, batch, design)

    def _shapley(self, max_exact_players: int, n_permutations: int, seed, batch: int,
                 design: str) -> tuple[np.ndarray, bool]:
        if design == "antithetic" or self.n <= max_exact_players:
            if design not in SAMPLING_DESIGNS:
                raise ValueError(f"unknown design {design!r}; valid: {', '.join(SAMPLING_DESIGNS)}")
            return surrogate_shapley_values(self, lambda p: self.permutation_marginals(p, use_table=False),
                                            max_exact_players, n_permutations, seed, batch)
        if design != "cyclic":
            raise ValueError(f"unknown design {design!r}; valid: {', '.join(SAMPLING_DESIGNS)}")
        n = self.n
        rng = np.random.default_rng(seed)
        bases = max(1, int(math.ceil(n_permutations / (2 * n))))
        # Bases walked together while their arcs' mixed logits fit in one chunk.
        step = max(1, _CHUNK_ELEMENTS // max(1, n * self.z0.numel()))
        total = np.zeros(n)
        for s in range(0, bases, step):
            total += self.cyclic_marginals(np.stack([rng.permutation(n) for _ in range(min(step, bases - s))]))
        return total / (2 * n * bases), False

    def cyclic_marginals(self, sigma: np.ndarray) -> np.ndarray:
        """Summed marginals ``[n]`` of the ``2n`` permutations each base permutation of ``sigma``
        (``[R, n]``, or one) stands for: its ``n`` cyclic shifts and the ``n`` shifts of its
        reverse.

        Every prefix of these permutations is an arc of the cycle, so walking the ``n`` forward
        shifts evaluates every arc once and the reversed shifts read their marginals off the same
        values: ``2n`` permutations for the walks of ``n``. Each player takes every position
        exactly once per direction (the design is balanced over positions), and each of the
        ``2n`` permutations is uniformly distributed, so the mean marginal is unbiased.
        """
        sigma = np.asarray(sigma, dtype=np.int64).reshape(-1, self.n)
        r, n = sigma.shape
        shift = (np.arange(n)[:, None] + np.arange(n)[None]) % n
        arcs = sigma[:, shift].reshape(r * n, n)
        vals = self.prefix_values(arcs).reshape(r, n, n + 1)
        total = np.zeros(n)
        # Forward: player sigma[t + k] joins the arc of k players starting at t.
        np.add.at(total, arcs.reshape(-1), np.diff(vals, axis=2).reshape(-1))
        # Reverse: player sigma[t - 1] joins arc (t, k), which gives arc (t - 1, k + 1).
        rev = np.roll(vals[:, :, 1:], 1, axis=1) - vals[:, :, :-1]
        np.add.at(total, np.repeat(sigma[:, (np.arange(n) - 1) % n].reshape(-1), n), rev.reshape(-1))
        return total


@contextlib.contextmanager
def _intra_op_threads(n: int | None):
    """torch's intra-op threads set to ``n`` inside (None: unchanged), restored after.

    The walk is thousands of small element-wise kernels: on oversubscribed cores every kernel's
    threads wait on each other (the walk of 50 players took 28 s with 2 threads at a load of 14
    on 2 cores, 1.1 s with 1), so a run that shares its cores sets ``attribution.num_threads``.
    """
    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ sharing

# Logits of a round game's anchor models and the surrogates built on them, per game.
_LOGIT_SURROGATES: "weakref.WeakKeyDictionary[Game, dict]" = weakref.WeakKeyDictionary()


def _memo_key(anchor: str, pairs: Sequence[int] | None, pair_ridge: float):
    return anchor if anchor != "pairs" else (anchor, tuple(pairs), float(pair_ridge))


def logit_surrogate_for(game: Game, anchor: str = DEFAULT_LOGIT_ANCHOR, pairs: Sequence[int] | None = None,
                        pair_ridge: float = DEFAULT_PAIR_RIDGE) -> LogitSurrogateGame:
    """The logit surrogate of ``game`` with this anchoring (and, for ``"pairs"``, these pair
    coalitions, default ``choose_pairs(n)``); every forward is run once per game and shared by
    every anchoring and evaluator. A :class:`LogitSurrogateGame` is its own surrogate."""
    if isinstance(game, LogitSurrogateGame):
        return game
    _check_anchor(anchor)
    if anchor == "pairs" and pairs is None:
        pairs = choose_pairs(game.n)
    memo = _LOGIT_SURROGATES.setdefault(game, {})
    key = _memo_key(anchor, pairs, pair_ridge)
    if key not in memo:
        memo[key] = LogitSurrogateGame.from_round_game(game, anchor, memo.setdefault("_logits", {}), pairs, pair_ridge)
    return memo[key]


def _logit_surrogate(ev, game: Game, req, rng=None) -> LogitSurrogateGame:
    """The evaluator's surrogate (given or shared), its anchor coalitions requested (counted);
    ``anchor="pairs"`` draws its pairs with ``rng``."""
    if ev.surrogate is not None:
        sur = ev.surrogate
    else:
        pairs = choose_pairs(game.n, ev.n_pairs, rng) if ev.anchor == "pairs" else None
        sur = logit_surrogate_for(game, ev.anchor, pairs, ev.pair_ridge)
    if sur.n != game.n:
        raise ValueError(f"the surrogate has {sur.n} players, the game {game.n}")
    req.values(sur.anchor_masks)
    return sur


@register("logit_surrogate_shapley")
class LogitSurrogateShapley(Evaluator):
    """Shapley values of the logit-linear surrogate game (see :class:`LogitSurrogateGame`).

    Costs ``n + 2`` real forward passes (empty coalition, singletons, grand coalition; their
    values go through the shared cache); every other coalition value is the game's metric of
    mixed logits. Exact by enumeration up to ``max_exact_players``, antithetic permutations
    beyond.

    Parameters
    ----------
    anchor : {"grand", "clients", "both", "loo", "pairs"}
        Where the construction is exact: empty and ``N``; empty and singletons; all of them;
        all of them and the leave-one-out coalitions (``2n + 2`` real forwards, a curvature
        per client); those and ``n_pairs`` random pair coalitions (``2n + 2 + n_pairs``, a
        curvature per pair as well).
    n_pairs : int, optional
        Pair coalitions drawn (with the fit's seed) for ``anchor="pairs"``; default
        ``3n - 1`` (:func:`default_n_pairs`), every pair when larger than ``n (n - 1) / 2``.
    pair_ridge : float
        Ridge on the pair curvatures (``anchor="pairs"``), see :class:`LogitSurrogateGame`.
    max_exact_players : int
        Largest ``n`` enumerated exactly (2^n mixed-logit evaluations).
    n_permutations : int
        Permutations sampled on the surrogate beyond ``max_exact_players``.
    surrogate : LogitSurrogateGame, optional
        Use this surrogate instead of building one from the game.

    Attributes
    ----------
    surrogate_ : LogitSurrogateGame
    exact_ : bool
        Whether the surrogate's Shapley values were enumerated.
    forward_seconds_ : float
        Seconds spent on the ``n + 2`` forwards (0 when shared from an earlier evaluator).
    """

    def __init__(self, anchor: str = DEFAULT_LOGIT_ANCHOR, max_exact_players: int = MAX_EXACT_LOGIT_PLAYERS,
                 n_permutations: int = 1000, surrogate: LogitSurrogateGame | None = None,
                 n_pairs: int | None = None, pair_ridge: float = DEFAULT_PAIR_RIDGE):
        self.anchor = anchor
        self.n_pairs = n_pairs
        self.pair_ridge = pair_ridge
        self.max_exact_players = max_exact_players
        self.n_permutations = n_permutations
        self.surrogate = surrogate

    def _fit(self, game, req, rng):
        _check_anchor(self.anchor)
        if game.n == 0:
            return np.zeros(0)

        def n_forwards():
            return len(_LOGIT_SURROGATES.get(game, {}).get("_logits", {}))
        before = n_forwards()
        sur = _logit_surrogate(self, game, req, rng)
        shared = n_forwards() == before  # every forward was run before, by another evaluator
        values, self.exact_ = sur.shapley(self.max_exact_players, self.n_permutations, rng)
        self.surrogate_ = sur
        self.forward_seconds_ = 0.0 if shared or self.surrogate is not None else sur.forward_seconds_
        return values
