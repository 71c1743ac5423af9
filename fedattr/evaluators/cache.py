"""One memo of coalition values per round game, shared by every evaluator."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import numpy as np

__all__ = ["UtilityCache"]


class UtilityCache:
    """Memo of coalition values keyed by bitmask; misses are evaluated in one batched call.

    Every evaluator of a round reads through the same cache, so running several evaluators costs
    the union of the coalitions they request, not the sum, and they all see the same numbers.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(masks: list[int]) -> array of len(masks)``: uncached values of distinct masks.

    Attributes
    ----------
    n_evaluations : int
        Distinct coalitions evaluated (cache misses).
    n_requests : int
        Coalition look-ups, repeats included.
    n_hits : int
        Look-ups answered from the memo (``n_requests - n_evaluations``).
    n_calls : int
        Calls made to ``evaluate``.
    seconds : float
        Time spent inside ``evaluate``.
    """

    def __init__(self, evaluate: Callable[[list[int]], np.ndarray]):
        self._evaluate = evaluate
        self._values: dict[int, float] = {}
        self.n_evaluations = 0
        self.n_requests = 0
        self.n_calls = 0
        self.seconds = 0.0

    @property
    def n_hits(self) -> int:
        return self.n_requests - self.n_evaluations

    def get_many(self, masks: Iterable[int]) -> np.ndarray:
        """Values of ``masks`` (float64 array in the same order), evaluating misses in one call."""
        masks = [int(m) for m in masks]
        values = self._values
        missing = list(dict.fromkeys(m for m in masks if m not in values))
        if missing:
            t0 = time.perf_counter()
            new = np.asarray(self._evaluate(missing), dtype=np.float64).reshape(-1)
            self.seconds += time.perf_counter() - t0
            if new.shape[0] != len(missing):
                raise RuntimeError(f"evaluate returned {new.shape[0]} values for {len(missing)} coalitions")
            values.update(zip(missing, new.tolist()))
            self.n_evaluations += len(missing)
            self.n_calls += 1
        self.n_requests += len(masks)
        return np.fromiter((values[m] for m in masks), dtype=np.float64, count=len(masks))

    def prefill(self, pairs: Iterable[tuple[int, float]]) -> int:
        """Store values known from elsewhere (e.g. an identical coalition of another game).

        Prefilled values are not counted as evaluations. Returns how many were new.
        """
        added = 0
        for mask, value in pairs:
            if int(mask) not in self._values:
                self._values[int(mask)] = float(value)
                added += 1
        return added

    def record(self, pairs: Iterable[tuple[int, float]], seconds: float = 0.0) -> int:
        """Store values of coalitions evaluated outside ``evaluate`` (e.g. from logits an
        evaluator computed anyway). Unlike :meth:`prefill` the new ones count as evaluations (one
        call, ``seconds`` added); masks already memoised keep their value. Returns how many were new."""
        added = self.prefill(pairs)
        if added:
            self.n_evaluations += added
            self.n_calls += 1
            self.seconds += float(seconds)
        return added

    def get(self, mask: int) -> float:
        """Value of one coalition."""
        return float(self.get_many([mask])[0])

    def peek(self, mask: int, default: float | None = None) -> float | None:
        """Memoised value of ``mask`` without evaluating or counting anything."""
        return self._values.get(int(mask), default)

    def __contains__(self, mask: int) -> bool:
        return int(mask) in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def items(self):
        """``(mask, value)`` pairs evaluated so far, in evaluation order."""
        return self._values.items()

    def stats(self) -> dict:
        """Counters as a plain dict (for logging)."""
        return {
            "n_evaluations": self.n_evaluations,
            "n_requests": self.n_requests,
            "n_hits": self.n_hits,
            "n_calls": self.n_calls,
            "seconds": self.seconds,
        }

    def __repr__(self) -> str:
        return f"UtilityCache(n_evaluations={self.n_evaluations}, n_hits={self.n_hits}, n_calls={self.n_calls})"
