"""Evaluators that read the clients' updates, not coalition utilities."""

from __future__ import annotations

import numpy as np
import torch

from .base import Evaluator, register

__all__ = ["CGSV"]


@register("cgsv")
class CGSV(Evaluator):
    """Per-round CGSV (Xu et al. 2021), geometry only: zero utility evaluations.

    With updates ``g_i`` (the game's flat floating-point state differences, BatchNorm running
    statistics included) and aggregation weights ``p_i`` (``weights_i / sum weights`` if
    ``weighted`` else ``1/n``), computes

        ``u_i = g_i / ||g_i||`` if ``normalize`` else ``g_i``;   ``a = sum_j p_j u_j``;
        ``value_i = cos(g_i, a)``  (0 for a zero update or a zero aggregate).

    The paper's reward is an exponential moving average of this over rounds, with reputations in
    place of ``p``; use :class:`CumulativeValues` with ``ema_alpha`` for the average.

    Parameters
    ----------
    normalize : bool
        Normalise each update to unit norm before aggregating (as CGSV does).
    weighted : bool
        Weight updates by the game's weights (num-examples); otherwise uniformly.
    """

    uses_utility = False

    def __init__(self, normalize: bool = True, weighted: bool = True):
        self.normalize = normalize
        self.weighted = weighted

    def _fit(self, game, req, rng):
        if game.updates is None:
            raise ValueError("cgsv needs a game with client updates (a RoundGame)")
        n = game.n
        if n == 0:
            return np.zeros(0)
        g = torch.as_tensor(game.updates).detach().to(torch.float64)
        norms = g.norm(dim=1)
        unit = g / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        u = unit if self.normalize else g
        if self.weighted and game.weights is not None and float(np.sum(game.weights)) > 0:
            p = torch.as_tensor(np.asarray(game.weights) / np.sum(game.weights), dtype=torch.float64, device=g.device)
        else:
            p = torch.full((n,), 1.0 / n, dtype=torch.float64, device=g.device)
        a = p @ u
        a_norm = a.norm()
        if float(a_norm) == 0.0:
            return np.zeros(n)
        cos = (unit @ (a / a_norm)).cpu().numpy()
        return np.where(norms.cpu().numpy() > 0, cos, 0.0)
