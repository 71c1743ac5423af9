"""Step 2 of a round: detectors observe every update, keep their state, flag clients.

Detectors come from ``fedattr.defenses`` (plain torch); this step turns the accepted replies into
the flat updates they read, runs each one, and returns a JSON-able view per detector (score,
rank, flag of every client) plus the clients that detectors in ``filter`` mode drop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fedattr.defenses import Detector, RoundUpdates, make_detector
from fedattr.protocol import Reply

#: ``reference_update(base_flat, server_round) -> flat update`` on the server's root set (FLTrust).
ReferenceFn = Callable[[torch.Tensor, int], torch.Tensor]


class DetectorStep:
    """The round's detectors, each with its mode (``observe`` or ``filter``).

    Parameters
    ----------
    specs : sequence of (name, params, mode)
        Registry names of ``fedattr.defenses.DETECTORS``, their parameters and modes.
    reference_update : callable, optional
        Computes FLTrust's server update; needed only when a detector asks for it.

    Attributes
    ----------
    seconds : float
        Time the last round's detectors took.
    """

    def __init__(self, specs: Sequence[tuple[str, dict[str, Any], str]], reference_update: ReferenceFn | None = None):
        self.detectors: list[tuple[Detector, str]] = [(make_detector(name, **dict(params)), mode)
                                                      for name, params, mode in specs]
        self.reference_update = reference_update
        self.seconds = 0.0
        if any(d.needs_reference_update for d, _ in self.detectors) and reference_update is None:
            raise ValueError("a detector needs the server's root-set update, but none was configured")

    @property
    def names(self) -> list[str]:
        return [d.name for d, _ in self.detectors]

    def reset(self) -> None:
        """A new job: every detector forgets its state."""
        for d, _ in self.detectors:
            d.reset()

    def observe(self, server_round: int, global_state: dict, replies: dict[int, Reply],
                layout) -> tuple[dict[str, dict], set[int]]:
        """Run every detector on the accepted updates; return their views and the filtered ids."""
        t0 = time.perf_counter()
        views: dict[str, dict] = {}
        filtered: set[int] = set()
        if not self.detectors or not replies:
            self.seconds = 0.0
            return views, filtered
        players = sorted(replies)
        base = layout.flatten(global_state)
        updates = layout.flatten_many([replies[p].state for p in players]) - base
        reference = None
        if any(d.needs_reference_update for d, _ in self.detectors):
            reference = self.reference_update(base, server_round)
        batch = RoundUpdates(server_round=server_round, players=players, updates=updates,
                             weights=np.array([replies[p].num_examples for p in players], dtype=np.float64),
                             base=base, reference_update=reference)
        for det, mode in self.detectors:
            res = det.observe(batch)
            ranks = res.ranks()
            views[det.name] = {
                "scores": {p: _finite(s) for p, s in zip(players, res.scores.tolist())},
                "ranks": {p: int(r) for p, r in zip(players, ranks.tolist())},
                "flags": {p: bool(f) for p, f in zip(players, res.flags.tolist())},
                "mode": mode,
                "info": _jsonable(res.info),
            }
            if mode == "filter":
                filtered |= {p for p, f in zip(players, res.flags.tolist()) if f}
        self.seconds = time.perf_counter() - t0
        return views, filtered


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    """Detector info as JSON values (the package's one conversion, :func:`fedattr.core.io.json_safe`)."""
    from fedattr.core.io import json_safe

    return json_safe(obj)
