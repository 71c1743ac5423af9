"""Attribution-robust scoring: evaluators that an attribution-inflating client cannot game as easily.

Each is a registered evaluator (``fedattr.evaluators.EVALUATORS``) that wraps a base evaluator
(``base``, any registered name, exact Shapley by default) and changes one thing:

``clipped``
    the base values, each clipped from above at a robust bound computed from the *other*
    clients' values (median + ``k`` scaled MADs): one client cannot stand far above the rest.
``mom``
    the base evaluator on a median-of-means utility: the validation set is split into ``shards``
    groups (by class, or at random) and a coalition's utility is the median of its per-group
    utilities: a gain confined to a minority of groups does not move it.
``coverage_weighted``
    the base evaluator on a per-class utility whose class gains are weighted by how redundantly
    the federation delivers them: a class whose gain vanishes when one client leaves counts 0.
``filtered``
    the base evaluator on the coalitions of the clients a detector does not flag this round;
    flagged clients get 0.

The utility-level ones (``mom``, ``coverage_weighted``) regroup the validation data of the game's
:class:`~fedattr.evaluators.ModelUtility`. With an accuracy utility they read the per-class correct
counts the round game keeps of every coalition it evaluated (:meth:`RoundGame.class_correct`), so
they cost nothing once another evaluator (exact Shapley) has evaluated the same coalitions;
otherwise (``mom`` by random groups or on ``neg_ce``) they rebuild the round game on a
:class:`ShardedUtility`. ``filtered`` reads the game's updates. On a game that has neither (a table
or a function, as in scenario validation), there is nothing to act on: they return the base
evaluator's values and set ``applied_ = False``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from fedattr.core.registry import Registry
from fedattr.evaluators import EVALUATORS, Evaluator, FunctionGame, ModelUtility, RoundGame, make_evaluator
from fedattr.evaluators.game import indices_to_mask, mask_to_indices

from .base import RoundUpdates, make_detector

__all__ = [
    "ClippedValues",
    "MedianOfMeans",
    "CoverageWeighted",
    "DetectorFiltered",
    "ROBUST_SCORERS",
    "ShardedUtility",
    "register_robust_scorers",
    "robust_upper_bounds",
    "validation_groups",
]

def _make_base(owner: str, base: str, base_params: dict | None) -> Evaluator:
    if base in ROBUST_SCORERS:
        raise ValueError(f"evaluator {owner!r}: base must be a plain evaluator, not {base!r}")
    if base not in EVALUATORS:
        raise ValueError(f"evaluator {owner!r}: base: {EVALUATORS.unknown(base)}")
    return make_evaluator(base, **dict(base_params or {}))


def _proxy(game, request: Callable[[list[int]], np.ndarray], n: int | None = None, players=None):
    """A game whose values come from ``request`` (so the outer evaluator counts them) and which
    carries ``game``'s updates and weights for geometry-only base evaluators."""
    proxy = FunctionGame(request, game.n if n is None else n, game.players if players is None else players, batched=True)
    proxy.updates = getattr(game, "updates", None)
    proxy.weights = getattr(game, "weights", None)
    return proxy


class _Wrapper(Evaluator):
    """Shared plumbing: a base evaluator, its result kept as ``base_`` after ``fit``."""

    def __init__(self, base: str = "shapley", base_params: dict | None = None):
        self.base = base
        self.base_params = base_params

    def _base(self) -> Evaluator:
        return _make_base(self.name, self.base, self.base_params)

    def _seed(self, rng: np.random.Generator) -> int:
        return int(rng.integers(2**31 - 1))


# -- (a) clipping ---------------------------------------------------------------------------------


def robust_upper_bounds(values: Sequence[float], k: float) -> np.ndarray:
    """For each client, ``median(others) + k * 1.4826 * MAD(others)`` of the *other* clients'
    values (1.4826 MAD estimates a standard deviation under normality); ``+inf`` with fewer than
    two others. When MAD is 0 the mean absolute deviation (times 1.2533) is used instead."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.inf)
    for i in range(v.shape[0]):
        others = np.delete(v, i)
        if others.size < 2:
            continue
        med = np.median(others)
        dev = np.abs(others - med)
        scale = 1.4826 * np.median(dev)
        if scale == 0:
            scale = 1.253314 * dev.mean()
        out[i] = med + k * scale
    return out


class ClippedValues(_Wrapper):
    """The base evaluator's values, each clipped from above at a robust bound from the other
    clients' values: ``min(v_i, median_{j != i} v_j + k * 1.4826 * MAD_{j != i} v_j)``.

    Leaving client ``i`` out of its own bound means an inflated value cannot widen the spread
    it is judged against. Values below the bound are unchanged, so an honest federation whose
    values share one scale keeps them exactly.

    Parameters
    ----------
    base : str
        Registered evaluator whose values are clipped (default ``"shapley"``).
    base_params : dict, optional
        Its parameters.
    k : float
        Scaled MADs above the others' median allowed (3.0).

    Attributes (after ``fit``)
    --------------------------
    raw_values_ : ndarray
        The base evaluator's values.
    bounds_ : ndarray
        Each client's upper bound.
    clipped_ : ndarray of bool
        Which values were clipped.
    """

    def __init__(self, base: str = "shapley", base_params: dict | None = None, k: float = 3.0):
        super().__init__(base, base_params)
        self.k = k

    def _fit(self, game, req, rng):
        if not float(self.k) > 0:
            raise ValueError(f"evaluator 'clipped': k must be > 0, got {self.k!r}")
        inner = self._base().fit(_proxy(game, req.values), seed=self._seed(rng))
        raw = np.asarray(inner.values_, dtype=np.float64)
        self.raw_values_ = raw
        self.bounds_ = robust_upper_bounds(raw, float(self.k))
        self.clipped_ = raw > self.bounds_
        self.applied_ = True
        return np.minimum(raw, self.bounds_)


# -- utilities on groups of validation examples ---------------------------------------------------


def _validation_of(utility: ModelUtility) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    # ModelUtility keeps its (possibly subset) validation data and model copy privately; these
    # are exactly what it evaluates, so the groups below partition the same examples.
    return utility._model, utility._x, utility._y


def validation_groups(y: torch.Tensor, shards: int, by: str, seed: int) -> list[torch.Tensor]:
    """Index groups partitioning the validation examples.

    ``by="class"``: the classes present are dealt round-robin (in a seeded random order) into
    ``shards`` groups, each group holding every example of its classes; ``shards`` larger than
    the number of classes gives one group per class. ``by="random"``: a seeded random split of the
    examples into ``shards`` groups of near-equal size.
    """
    y = torch.as_tensor(y).cpu().long()
    gen = torch.Generator().manual_seed(int(seed))
    if by == "class":
        classes = torch.unique(y)
        classes = classes[torch.randperm(classes.numel(), generator=gen)]
        k = min(int(shards), classes.numel())
        groups = [classes[i::k] for i in range(k)]
        return [torch.nonzero(torch.isin(y, g)).reshape(-1) for g in groups]
    if by == "random":
        perm = torch.randperm(y.numel(), generator=gen)
        k = min(int(shards), y.numel())
        return [perm[i::k].sort().values for i in range(k)]
    raise ValueError(f"validation groups: by must be 'class' or 'random', got {by!r}")


class ShardedUtility:
    """Utilities of parameter sets on groups of validation examples, combined by ``reduce``.

    One :class:`ModelUtility` per group (same model, metric, device, engine as ``utility``);
    ``__call__(params[K, P])`` returns ``reduce(table[K, groups])``. Since the groups partition
    the validation set, a call costs one pass over it, as the plain utility does.
    """

    def __init__(self, utility: ModelUtility, groups: Sequence[torch.Tensor], reduce: Callable[[np.ndarray], np.ndarray],
                 metric: str | None = None):
        model, x, y = _validation_of(utility)
        self.layout = utility.layout
        self.device = utility.device
        self.reduce = reduce
        self.parts = [
            ModelUtility(model, x[g.to(x.device)], y[g.to(y.device)], metric=metric or utility.metric,
                         num_classes=utility.num_classes_, engine=utility.engine, device=utility.device,
                         batch_size=utility.batch_size, max_memory_bytes=utility.max_memory_bytes,
                         channels_last=utility.channels_last, num_threads=utility.num_threads)
            for g in groups if g.numel()
        ]
        self.max_coalitions_per_call_ = min(p.max_coalitions_per_call_ for p in self.parts)

    def table(self, params: torch.Tensor) -> np.ndarray:
        """``[K, groups]`` per-group utilities."""
        return np.stack([p(params) for p in self.parts], axis=1)

    def __call__(self, params: torch.Tensor) -> np.ndarray:
        params = torch.as_tensor(params)
        if params.dim() == 1:
            params = params[None]
        return np.asarray(self.reduce(self.table(params)), dtype=np.float64)


class _ClassCounts:
    """Per-class correct counts of coalitions read from a round game's memo
    (:meth:`RoundGame.class_correct`), counting the distinct coalitions requested and those the
    game had to evaluate for them."""

    def __init__(self, game: RoundGame):
        self.game = game
        self.counts = game.class_counts
        self.requested: set[int] = set()
        self.evaluated = 0

    def __call__(self, masks: Sequence[int]) -> np.ndarray:
        masks = [int(m) for m in masks]
        self.requested.update(masks)
        before = self.game.n_class_evaluations
        out = self.game.class_correct(masks)
        self.evaluated += self.game.n_class_evaluations - before
        return out


class _UtilityWrapper(_Wrapper):
    """Runs the base evaluator on the round game under another utility: computed from the game's
    per-class correct counts where ``_from_counts`` can (``_counted``), else on the round game
    rebuilt with ``_utility``."""

    def fit(self, game, seed=None):
        self._game_ = None
        self._counts_ = None
        super().fit(game, seed)
        inner, counts = self._game_, self._counts_
        if inner is not None:
            # The rebuilt game has its own cache: every coalition it evaluated is new cost.
            self.n_evaluations_ = int(inner.cache.n_evaluations)
            self.n_new_evaluations_ = int(inner.cache.n_evaluations)
        elif counts is not None:
            self.n_evaluations_ = len(counts.requested)
            self.n_new_evaluations_ = int(counts.evaluated)
        return self

    def _counted(self, game: RoundGame, utility: ModelUtility) -> bool:
        raise NotImplementedError

    def _from_counts(self, game: RoundGame, utility: ModelUtility,
                     counts: _ClassCounts) -> Callable[[list[int]], np.ndarray]:
        raise NotImplementedError

    def _utility(self, game: RoundGame, utility: ModelUtility, rng: np.random.Generator) -> ShardedUtility:
        raise NotImplementedError

    def _fit(self, game, req, rng):
        utility = getattr(game, "utility", None)
        seed = self._seed(rng)
        if not isinstance(game, RoundGame) or not isinstance(utility, ModelUtility):
            self.applied_ = False
            return self._base().fit(_proxy(game, req.values), seed=seed).values_
        self.applied_ = True
        if game.has_class_counts and self._counted(game, utility):
            self._counts_ = _ClassCounts(game)
            values_of = self._from_counts(game, utility, self._counts_)
            return self._base().fit(_proxy(game, values_of), seed=seed).values_
        new = self._utility(game, utility, rng)
        self._game_ = RoundGame(new, game.base, game.updates, weights=game.weights, players=game.players,
                                aggregate=game.aggregate_fn)
        return self._base().fit(self._game_, seed=seed).values_


# -- (b) median of means ---------------------------------------------------------------------------


class MedianOfMeans(_UtilityWrapper):
    """The base evaluator on the median-of-means utility ``median_k U(w; V_k)`` over ``shards``
    groups ``V_k`` of the validation set (the game's utility metric on each group).

    With ``by="class"`` (default) the groups are groups of classes, so a gain on classes that a
    minority of groups hold (the classes one client alone supplies) leaves the median where the
    rest of the federation put it. ``by="random"`` is the classical estimator, robust to a few
    extreme examples (useful with ``neg_ce``), not to a class-level gain.

    Parameters
    ----------
    base, base_params : str, dict
        The evaluator run on the median-of-means game (default exact Shapley).
    shards : int
        Number of groups (>= 3 for a median to ignore anything).
    by : {"class", "random"}
        How the validation set is split.
    seed : int
        Seed of the split.
    """

    def __init__(self, base: str = "shapley", base_params: dict | None = None, shards: int = 5, by: str = "class",
                 seed: int = 0):
        super().__init__(base, base_params)
        self.shards = shards
        self.by = by
        self.seed = seed

    def _check(self):
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"evaluator 'mom': shards must be an integer >= 1, got {self.shards!r}")
        if self.by not in ("class", "random"):
            raise ValueError(f"evaluator 'mom': by must be 'class' or 'random', got {self.by!r}")

    def _fit(self, game, req, rng):
        self._check()
        return super()._fit(game, req, rng)

    def _utility(self, game, utility, rng):
        _, _, y = _validation_of(utility)
        groups = validation_groups(y, self.shards, self.by, self.seed)
        self.n_shards_ = len(groups)
        return ShardedUtility(utility, groups, lambda t: np.median(t, axis=1))

    def _counted(self, game, utility):
        # A class group's accuracy is its classes' correct counts over their examples.
        return self.by == "class" and utility.metric == "accuracy"

    def _from_counts(self, game, utility, counts):
        _, _, y = _validation_of(utility)
        y = y.cpu()
        groups = validation_groups(y, self.shards, self.by, self.seed)
        self.n_shards_ = len(groups)
        classes = [torch.unique(y[g]).numpy() for g in groups if g.numel()]
        sizes = [counts.counts[c].sum() for c in classes]

        def values_of(masks: list[int]) -> np.ndarray:
            correct = counts(masks)
            table = np.stack([correct[:, c].sum(1) / k for c, k in zip(classes, sizes)], axis=1)
            return np.median(table, axis=1)

        return values_of


# -- (c) coverage-weighted per-class gains ------------------------------------------------------


class CoverageWeighted(_UtilityWrapper):
    """The base evaluator on a per-class utility that credits a class's gain only as far as more
    than one client delivers it:

        ``u(S) = mean_c [ r_c(empty) + a_c (r_c(S) - r_c(empty)) ]``,
        ``a_c = clip(1 - max_i (r_c(N) - r_c(N - i)) / (r_c(N) - r_c(empty)), 0, 1)``,

    with ``r_c`` the recall of validation class ``c``; ``a_c = 1`` (no class improved) when
    ``r_c(N) <= r_c(empty)``. A class whose whole gain disappears when one client leaves (a class
    only that client supplies) weighs 0; a class several clients cover weighs about 1, and then
    this is balanced accuracy. The weights cost the ``n`` leave-one-out models of the round.

    Parameters
    ----------
    base, base_params : str, dict
        The evaluator run on the weighted game (default exact Shapley).

    Attributes (after ``fit``)
    --------------------------
    class_weights_ : ndarray
        ``a_c`` per class present in the validation set.
    """

    def _counted(self, game, utility):
        return True  # per-class recall is correct_c / count_c under any argmax metric

    def _from_counts(self, game, utility, counts):
        present = np.flatnonzero(counts.counts > 0)
        sizes = counts.counts[present]

        def recall(masks: list[int]) -> np.ndarray:
            return counts(masks)[:, present] / sizes

        full = game.full_mask
        t = recall([0, full] + [full ^ (1 << i) for i in range(game.n)])
        r0, a = self._weights(game, t)
        return lambda masks: (r0 + a * (recall(masks) - r0)).mean(1)

    def _weights(self, game, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``r_c(empty)`` and the class weights ``a_c`` from the recalls ``t`` of the empty, full
        and leave-one-out coalitions (rows in that order); sets ``class_weights_``."""
        r0, rn, loo = t[0], t[1], t[2:]
        gain = rn - r0
        drop = (rn[None] - loo).max(0) if game.n else np.zeros_like(gain)
        a = np.ones_like(gain)
        up = gain > 0
        a[up] = np.clip(1.0 - drop[up] / gain[up], 0.0, 1.0)
        self.class_weights_ = a
        return r0, a

    def _utility(self, game, utility, rng):
        _, _, y = _validation_of(utility)
        y = y.cpu()
        groups = [torch.nonzero(y == c).reshape(-1) for c in torch.unique(y)]
        per_class = ShardedUtility(utility, groups, lambda t: t.mean(1), metric="accuracy")
        full = game.full_mask
        masks = [0, full] + [full ^ (1 << i) for i in range(game.n)]
        with torch.no_grad():
            t = per_class.table(game.aggregate_many(masks))
        r0, a = self._weights(game, t)
        per_class.reduce = lambda t: (r0 + a * (t - r0)).mean(1)
        return per_class


# -- (d) detector-filtered coalitions --------------------------------------------------------------


class DetectorFiltered(_Wrapper):
    """The base evaluator on the sub-game of the clients that ``detector`` does not flag this
    round; flagged clients get value 0. The sub-game's coalitions are the full game's, so they
    share its cache. The detector sees this round only (no state across rounds).

    Parameters
    ----------
    base, base_params : str, dict
        The evaluator run on the unflagged clients (default exact Shapley).
    detector : str
        A registered detector (``fedattr.defenses.DETECTORS``) that needs no reference update.
    detector_params : dict, optional
        Its parameters.

    Attributes (after ``fit``)
    --------------------------
    flags_ : ndarray of bool
        The detector's flags.
    """

    def __init__(self, base: str = "shapley", base_params: dict | None = None, detector: str = "cosine_median",
                 detector_params: dict | None = None):
        super().__init__(base, base_params)
        self.detector = detector
        self.detector_params = detector_params

    def _fit(self, game, req, rng):
        det = make_detector(self.detector, **dict(self.detector_params or {}))
        if det.needs_reference_update:
            raise ValueError(f"evaluator 'filtered': detector {self.detector!r} needs a reference update; choose another")
        n = game.n
        updates = getattr(game, "updates", None)
        if updates is None or n == 0:
            self.applied_ = False
            self.flags_ = np.zeros(n, dtype=bool)
        else:
            self.applied_ = True
            w = np.ones(n) if game.weights is None else np.asarray(game.weights)
            base = getattr(game, "base", torch.zeros(updates.shape[1]))
            self.flags_ = det.observe(RoundUpdates(0, list(game.players), updates, w, base)).flags
        keep = np.flatnonzero(~self.flags_)
        out = np.zeros(n)
        if keep.size == 0:
            return out

        def request(masks: list[int]) -> np.ndarray:
            return req.values([indices_to_mask(keep[mask_to_indices(m)]) for m in masks])

        sub = _proxy(game, request, n=keep.size, players=[game.players[i] for i in keep])
        if sub.updates is not None:
            sub.updates = game.updates[torch.as_tensor(keep, device=game.updates.device)]
            sub.weights = None if game.weights is None else np.asarray(game.weights)[keep]
        out[keep] = self._base().fit(sub, seed=self._seed(rng)).values_
        return out


#: Registry name -> robust-scoring evaluator.
ROBUST_SCORERS: dict[str, type[Evaluator]] = {
    "clipped": ClippedValues,
    "mom": MedianOfMeans,
    "coverage_weighted": CoverageWeighted,
    "filtered": DetectorFiltered,
}


def register_robust_scorers(registry: Registry = EVALUATORS) -> Registry:
    """Add the robust-scoring evaluators to ``registry`` (the evaluator registry by default) and
    return it; registering them again is a no-op."""
    for name, cls in ROBUST_SCORERS.items():
        registry.register(name, cls)
    return registry
