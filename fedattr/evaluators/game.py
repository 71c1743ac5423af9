"""Cooperative games over the clients of one federated round.

Coalitions are Python ``int`` bitmasks over player *positions*: bit ``i`` set means the player at
position ``i`` (``game.players[i]``, e.g. a partition id) is in the coalition; ``0`` is the empty
coalition and ``game.full_mask == 2**n - 1`` the grand coalition.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .cache import UtilityCache

__all__ = [
    "Game",
    "RoundGame",
    "FunctionGame",
    "TabularGame",
    "coalition_table",
    "indices_to_mask",
    "mask_to_indices",
    "masks_to_matrix",
    "matrix_to_masks",
    "popcount",
]


def indices_to_mask(indices: Iterable[int]) -> int:
    """Bitmask of a collection of player positions."""
    mask = 0
    for i in indices:
        mask |= 1 << int(i)
    return mask


def mask_to_indices(mask: int) -> list[int]:
    """Player positions in a bitmask, ascending."""
    mask = int(mask)
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def popcount(mask: int) -> int:
    """Number of players in a bitmask."""
    return int(mask).bit_count()


def masks_to_matrix(masks: Sequence[int], n: int) -> np.ndarray:
    """``[K, n]`` boolean membership matrix of ``K`` bitmasks."""
    if n <= 62:
        m = np.asarray([int(x) for x in masks], dtype=np.int64).reshape(-1, 1)
        return ((m >> np.arange(n, dtype=np.int64)) & 1).astype(bool)
    return np.array([[(int(x) >> i) & 1 for i in range(n)] for x in masks], dtype=bool).reshape(-1, n)


def coalition_table(values_of: Callable[[np.ndarray], np.ndarray], n: int, chunk: int) -> np.ndarray:
    """All ``2^n`` coalition values indexed by bitmask, from ``values_of`` (a ``[K, n]``
    membership matrix -> ``K`` values) called on chunks of ``chunk`` coalitions."""
    if n > 26:
        raise ValueError(f"a table of 2^{n} values is too large")
    out = np.empty(1 << n)
    bits = np.arange(n, dtype=np.int64)
    for s in range(0, 1 << n, chunk):
        m = np.arange(s, min(s + chunk, 1 << n), dtype=np.int64)[:, None]
        out[s:s + m.shape[0]] = values_of(((m >> bits) & 1).astype(bool))
    return out


def matrix_to_masks(member) -> list[int]:
    """Bitmasks of the rows of a ``[K, n]`` boolean membership matrix."""
    member = np.asarray(member, dtype=bool)
    n = member.shape[1]
    if n <= 62:
        return (member.astype(np.int64) << np.arange(n, dtype=np.int64)).sum(1).tolist()
    return [indices_to_mask(np.flatnonzero(row)) for row in member]


class Game:
    """A cooperative game on ``n`` players whose coalition values are read through one cache.

    Subclasses implement ``_evaluate(masks) -> array``; ``value``/``values`` go through
    ``self.cache`` so that every evaluator of the game shares evaluations.

    Parameters
    ----------
    n : int
        Number of players.
    players : sequence of int, optional
        Identifiers of the players at positions ``0..n-1`` (default ``range(n)``).

    Attributes
    ----------
    cache : UtilityCache
        The memo shared by every evaluator of this game.
    """

    #: Raw client updates ``[n, P]`` and their aggregation weights, for geometry-only evaluators.
    updates: torch.Tensor | None = None
    weights: np.ndarray | None = None

    def __init__(self, n: int, players: Sequence | None = None):
        if n < 0:
            raise ValueError("n must be >= 0")
        self.n = int(n)
        self.players = tuple(range(n)) if players is None else tuple(players)
        if len(self.players) != self.n:
            raise ValueError(f"{len(self.players)} player ids for {self.n} players")
        if len(set(self.players)) != self.n:
            raise ValueError("player ids must be distinct")
        self.cache = UtilityCache(self._evaluate)

    @property
    def full_mask(self) -> int:
        return (1 << self.n) - 1

    def value(self, mask: int) -> float:
        """Value of one coalition (cached)."""
        return self.cache.get(mask)

    def values(self, masks: Iterable[int]) -> np.ndarray:
        """Values of several coalitions (cached; misses evaluated in one batch)."""
        return self.cache.get_many(masks)

    def gain(self) -> float:
        """``v(N) - v(empty)``."""
        v = self.values([self.full_mask, 0])
        return float(v[0] - v[1])

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, players={list(self.players)})"


class RoundGame(Game):
    """The round game ``v(S) = U(w_t + agg_S(g))``, ``v(empty) = U(w_t)``.

    ``agg`` is FedAvg by default: ``sum_{i in S} p_i g_i`` with ``p_i = weights_i / sum_{j in S}
    weights_j`` (uniform over ``S`` if those weights sum to 0). Coalition parameters are built
    as one matmul ``coeffs[K, n] @ updates[n, P] + base`` on the utility's device.

    Parameters
    ----------
    utility : callable
        ``utility(params[K, P]) -> array[K]``, normally a :class:`ModelUtility`.
    base : Tensor
        Global parameters ``w_t``, flat ``[P]``.
    updates : Tensor
        Client updates ``g_i = w_i - w_t``, ``[n, P]``.
    weights : sequence of float, optional
        Aggregation weights, normally num-examples (default all ones).
    players : sequence, optional
        Player ids, normally partition ids (default ``range(n)``).
    aggregate : callable, optional
        Custom aggregation of a non-empty coalition, ``aggregate(updates[k, P], weights[k]) ->
        update[P]`` (e.g. coordinate-wise median); replaces FedAvg.

    Attributes
    ----------
    has_class_counts : bool
        Whether the game keeps each evaluated coalition's per-class correct counts
        (:meth:`class_correct`): true when ``utility`` is a :class:`ModelUtility` with an argmax
        metric (``accuracy`` or ``balanced_accuracy``), whose forward pass yields them at no cost.
    n_class_evaluations : int
        Coalitions :meth:`class_correct` evaluated because their counts were not memoised.
    """

    def __init__(
        self,
        utility: Callable[[torch.Tensor], np.ndarray],
        base: torch.Tensor,
        updates: torch.Tensor | Sequence[torch.Tensor],
        weights: Sequence[float] | None = None,
        players: Sequence | None = None,
        aggregate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        if not torch.is_tensor(updates):
            updates = torch.stack([torch.as_tensor(u) for u in updates]) if len(updates) else None
        base = torch.as_tensor(base)
        if updates is None:
            updates = torch.zeros(0, base.numel(), dtype=base.dtype)
        if base.dim() != 1 or updates.dim() != 2 or updates.shape[1] != base.shape[0]:
            raise ValueError(f"expected base [P] and updates [n, P], got {tuple(base.shape)} and {tuple(updates.shape)}")
        super().__init__(updates.shape[0], players)
        device = torch.device(getattr(utility, "device", base.device))
        layout = getattr(utility, "layout", None)
        dtype = layout.dtype if layout is not None else (base.dtype if base.is_floating_point() else torch.float32)
        self.utility = utility
        self.base = base.detach().to(device, dtype)
        self.updates = updates.detach().to(device, dtype)
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != self.n:
            raise ValueError(f"{w.shape[0]} weights for {self.n} updates")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and non-negative")
        self.weights = w
        self.aggregate_fn = aggregate
        # Per-class correct counts of every evaluated coalition (mask -> [C] row): evaluators that
        # regroup the validation classes read them instead of re-evaluating the coalitions.
        self._class_memo: dict[int, np.ndarray] | None = (
            {} if getattr(utility, "metric", None) in ("accuracy", "balanced_accuracy")
            and callable(getattr(utility, "evaluate_with_class_counts", None)) else None
        )
        self.n_class_evaluations = 0

    @property
    def has_class_counts(self) -> bool:
        return self._class_memo is not None

    @property
    def class_counts(self) -> np.ndarray:
        """Validation examples of each class, float64 ``[C]`` (needs :attr:`has_class_counts`)."""
        self._need_class_counts()
        return self.utility.class_counts_

    def class_correct(self, masks: Iterable[int]) -> np.ndarray:
        """Per-class correct counts ``[K, C]`` (float64, integer valued) of the models of
        ``masks`` on the validation set.

        Read from the memo of the coalitions evaluated so far; the others are evaluated in one
        batch, and their values join the game's cache (counted there as evaluations), so a later
        value request does not evaluate them again. Needs :attr:`has_class_counts`.
        """
        self._need_class_counts()
        masks = [int(m) for m in masks]
        memo = self._class_memo
        missing = list(dict.fromkeys(m for m in masks if m not in memo))
        if missing:
            t0 = time.perf_counter()
            values = self._evaluate(missing)
            self.cache.record(zip(missing, values.tolist()), seconds=time.perf_counter() - t0)
            self.n_class_evaluations += len(missing)
        if not masks:
            return np.empty((0, self.utility.num_classes_))
        return np.stack([memo[m] for m in masks])

    def class_correct_items(self):
        """``(mask, counts [C])`` pairs memoised so far (empty without :attr:`has_class_counts`)."""
        return {}.items() if self._class_memo is None else self._class_memo.items()

    def prefill_class_correct(self, pairs: Iterable[tuple[int, np.ndarray]]) -> int:
        """Store per-class correct counts known from elsewhere (an identical coalition of another
        game on the same validation set), as :meth:`UtilityCache.prefill` does for values: not
        counted as evaluations, memoised masks kept. Returns how many were new."""
        self._need_class_counts()
        added = 0
        for mask, counts in pairs:
            if int(mask) not in self._class_memo:
                self._class_memo[int(mask)] = np.asarray(counts, dtype=np.float64)
                added += 1
        return added

    def _need_class_counts(self) -> None:
        if self._class_memo is None:
            raise ValueError("per-class correct counts need a ModelUtility with metric 'accuracy' or "
                             f"'balanced_accuracy'; this game's utility is {self.utility!r}")

    @classmethod
    def from_state_dicts(
        cls,
        utility,
        global_state: Mapping[str, torch.Tensor],
        client_states: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float] | None = None,
        players: Sequence | None = None,
        **kwargs,
    ) -> "RoundGame":
        """Build the game from the global and the clients' state dicts via ``utility.layout``."""
        layout = utility.layout
        base = layout.flatten(global_state)
        if len(client_states):
            updates = layout.flatten_many(client_states) - base
        else:
            updates = torch.zeros(0, layout.size, dtype=base.dtype)
        return cls(utility, base, updates, weights=weights, players=players, **kwargs)

    def coefficients(self, masks: Sequence[int]) -> np.ndarray:
        """FedAvg coefficients ``[K, n]`` of the updates in each coalition (rows sum to 1, 0 for empty)."""
        member = masks_to_matrix(masks, self.n)
        w = member * self.weights
        tot = w.sum(1, keepdims=True)
        uniform = member / np.maximum(member.sum(1, keepdims=True), 1)
        return np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), uniform)

    def aggregate_many(self, masks: Sequence[int]) -> torch.Tensor:
        """Parameters ``[K, P]`` of the aggregated model of each coalition."""
        masks = [int(m) for m in masks]
        if self.aggregate_fn is None:
            c = torch.as_tensor(self.coefficients(masks), dtype=self.updates.dtype, device=self.updates.device)
            return torch.addmm(self.base.expand(len(masks), -1), c, self.updates)
        out = self.base.repeat(len(masks), 1)
        for k, m in enumerate(masks):
            if m:
                idx = torch.as_tensor(mask_to_indices(m), device=self.updates.device)
                w = torch.as_tensor(self.weights, dtype=self.updates.dtype, device=self.updates.device)[idx]
                out[k] += torch.as_tensor(self.aggregate_fn(self.updates[idx], w), dtype=out.dtype, device=out.device)
        return out

    def aggregate(self, mask: int) -> torch.Tensor:
        """Parameters ``[P]`` of the aggregated model of one coalition."""
        return self.aggregate_many([mask])[0]

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        step = int(getattr(self.utility, "max_coalitions_per_call_", len(masks)) or len(masks))
        out = np.empty(len(masks), dtype=np.float64)
        memo = self._class_memo
        with torch.no_grad():
            for s in range(0, len(masks), step):
                chunk = masks[s:s + step]
                if memo is None:
                    out[s:s + len(chunk)] = np.asarray(self.utility(self.aggregate_many(chunk)), dtype=np.float64)
                else:
                    values, counts = self.utility.evaluate_with_class_counts(self.aggregate_many(chunk))
                    out[s:s + len(chunk)] = values
                    memo.update(zip(chunk, counts))
        return out


class FunctionGame(Game):
    """A game whose values come from a Python function of the coalition bitmask.

    Parameters
    ----------
    fn : callable
        ``fn(mask) -> float``, or ``fn(masks) -> array`` when ``batched=True``.
    n : int
        Number of players.
    players : sequence, optional
        Player ids (default ``range(n)``).
    batched : bool
        Whether ``fn`` takes a list of masks.
    """

    def __init__(self, fn: Callable, n: int, players: Sequence | None = None, batched: bool = False):
        super().__init__(n, players)
        self.fn = fn
        self.batched = batched

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        if self.batched:
            return np.asarray(self.fn(masks), dtype=np.float64)
        return np.array([float(self.fn(m)) for m in masks], dtype=np.float64)


class TabularGame(Game):
    """A game given by its table of ``2**n`` values indexed by bitmask.

    Parameters
    ----------
    table : array of length ``2**n``
        ``table[mask]`` is the value of coalition ``mask``.
    players : sequence, optional
        Player ids (default ``range(n)``).
    """

    def __init__(self, table: Sequence[float], players: Sequence | None = None):
        table = np.asarray(table, dtype=np.float64).reshape(-1)
        n = int(table.shape[0]).bit_length() - 1
        if table.shape[0] != 1 << n:
            raise ValueError(f"table length {table.shape[0]} is not a power of two")
        super().__init__(n, players)
        self.table = table

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        return self.table[np.asarray(masks, dtype=np.int64)]
