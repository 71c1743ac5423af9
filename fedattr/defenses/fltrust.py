"""FLTrust (Cao et al. 2021) trust scores against the server's own update on a root set."""

from __future__ import annotations

import numpy as np

from ._stats import as_float64, unit_rows
from .base import Detector, DetectorResult, RoundUpdates, register_detector


@register_detector("fltrust")
class FLTrust(Detector):
    """Trust score ``ReLU(cos(g_i, g_0))`` where ``g_0`` is ``RoundUpdates.reference_update``, the
    server's update trained on a small root set (see :func:`fedattr.defenses.root_update`);
    trust 0 is flagged. Scores are the trust scores (lower = more suspicious); ``info`` also has
    FLTrust's aggregation coefficients ``TS_i ||g_0|| / ||g_i||`` normalised by the trust sum.

    The round pipeline builds ``g_0`` each round (root set from the validation split, the
    clients' local-training settings); the detector has no parameters.
    """

    needs_reference_update = True

    def __init__(self):
        pass

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        ref = round_updates.reference_update
        if ref is None:
            raise ValueError("detector 'fltrust' needs RoundUpdates.reference_update (the server's root-set update)")
        g = as_float64(round_updates.updates)
        g0 = as_float64(ref).reshape(1, -1).to(g.device)
        if g0.shape[1] != g.shape[1]:
            raise ValueError(f"fltrust: reference update has {g0.shape[1]} entries, client updates {g.shape[1]}")
        trust = (unit_rows(g) @ unit_rows(g0)[0]).clamp_min(0.0).cpu().numpy()
        norms = g.norm(dim=1).cpu().numpy()
        g0_norm = float(g0.norm())
        scale = np.divide(g0_norm, norms, out=np.zeros_like(norms), where=norms > 0)
        coef = trust * scale
        total = trust.sum()
        coef = coef / total if total > 0 else np.zeros_like(coef)
        return DetectorResult(trust, trust <= 0.0, False, {"aggregation_coefficients": coef.tolist(), "reference_norm": g0_norm})
