"""Detector interface: one round's client updates in, one score and one flag per client out.

A detector is a small class behind a registry name. Its constructor only stores parameters;
``observe`` is called once per round with the round's updates and may keep state across the
rounds of one job (``reset`` starts a new job). Detectors never drop anything themselves: the
server's round pipeline reads ``flags`` and, for detectors in ``filter`` mode, drops the flagged
clients before aggregation.

This package does not import Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedattr.core.registry import Registry, init_params

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorResult",
    "RoundUpdates",
    "make_detector",
    "register_detector",
    "root_update",
    "validate_detector",
]

#: Registry name -> detector class.
DETECTORS: Registry[type["Detector"]] = Registry("detector", set_name=True)


@dataclass
class DetectorResult:
    """One detector's verdict on one round.

    Attributes
    ----------
    scores : ndarray of float, shape [n]
        One score per client, in the order of ``RoundUpdates.players``.
    flags : ndarray of bool, shape [n]
        True where the detector flags the client this round.
    suspicious_high : bool
        Whether a higher score is more suspicious (used by ``ranks``).
    info : dict
        JSON-able extras (thresholds, cluster labels, ...).
    """

    scores: np.ndarray
    flags: np.ndarray
    suspicious_high: bool
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.flags = np.asarray(self.flags, dtype=bool).reshape(-1)
        if self.scores.shape != self.flags.shape:
            raise ValueError(f"{self.scores.shape[0]} scores but {self.flags.shape[0]} flags")

    def ranks(self) -> np.ndarray:
        """Suspicion rank of each client: 1 = most suspicious; ties keep position order."""
        key = -self.scores if self.suspicious_high else self.scores
        # NaN scores (undefined this round) rank last.
        key = np.where(np.isnan(key), np.inf, key)
        order = np.argsort(key, kind="stable")
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(1, len(order) + 1)
        return ranks


@dataclass
class RoundUpdates:
    """The updates of one round, as every detector sees them.

    Attributes
    ----------
    server_round : int
    players : list of int
        Partition ids, sorted.
    updates : Tensor, shape [n, P]
        Flat float updates ``g_i = w_i - w_t`` (floating-point parameters and buffers, the
        layout of :class:`fedattr.evaluators.layout.StateLayout`).
    weights : ndarray, shape [n]
        Num-examples.
    base : Tensor, shape [P]
        Flat ``w_t``.
    reference_update : Tensor, shape [P], optional
        The server's update on a root set (FLTrust); None when not computed.
    """

    server_round: int
    players: list[int]
    updates: torch.Tensor
    weights: np.ndarray
    base: torch.Tensor
    reference_update: torch.Tensor | None = None

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if self.updates.dim() != 2:
            raise ValueError(f"updates must be [n, P], got shape {tuple(self.updates.shape)}")
        n = self.updates.shape[0]
        if len(self.players) != n or self.weights.shape[0] != n:
            raise ValueError(f"{len(self.players)} players and {self.weights.shape[0]} weights for {n} updates")

    @property
    def n(self) -> int:
        return int(self.updates.shape[0])


class Detector:
    """Base: the constructor stores parameters; ``observe()`` is called once per round; state
    persists across the rounds of one job until ``reset()``."""

    name: ClassVar[str] = ""
    #: Whether ``observe`` needs ``RoundUpdates.reference_update`` (FLTrust's root-set update).
    needs_reference_update: ClassVar[bool] = False

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across rounds (a new job)."""

    @classmethod
    def check_params(cls, params: dict[str, Any], num_clients: int) -> None:
        """Raise ``ValueError`` (one line) if ``params`` cannot work with ``num_clients`` clients."""

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in init_params(type(self))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"


def register_detector(name: str):
    """Class decorator adding a detector to ``DETECTORS`` under ``name``."""
    return DETECTORS.register(name)


def make_detector(name: str, **params) -> Detector:
    """Instantiate the detector registered as ``name``; unknown names or parameters are a
    :class:`~fedattr.core.registry.RegistryError` (a ``ValueError``) that suggests the closest
    valid one."""
    return DETECTORS.make(name, **params)


def validate_detector(name: str, params: dict[str, Any], num_clients: int) -> None:
    """Raise a one-line ``ValueError`` if detector ``name`` with ``params`` cannot run on
    ``num_clients`` clients per round (e.g. Krum's ``f`` too large for ``n``)."""
    cls = DETECTORS.check(name, params)
    cls.check_params(dict(params), int(num_clients))
    make_detector(name, **params)


def root_update(
    model_template: nn.Module,
    layout,
    base: torch.Tensor,
    x_root,
    y_root,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> torch.Tensor:
    """FLTrust's server update: train a copy of ``model_template`` loaded with ``base`` on the
    root set ``(x_root, y_root)`` and return its flat update ``w - base`` in ``layout``."""
    import copy

    from fedattr.learning.training import train_local

    model = copy.deepcopy(model_template).cpu()
    base = torch.as_tensor(base).detach().cpu()
    model.load_state_dict(layout.to_state_dict(base.to(layout.dtype), model.state_dict()))
    train_local(
        model, torch.as_tensor(x_root), torch.as_tensor(y_root).long(),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
    )
    return layout.flatten(model.state_dict()) - base.to(layout.dtype)
