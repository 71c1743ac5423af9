"""Update-norm outliers by robust z-score."""

from __future__ import annotations

import numpy as np

from ._stats import as_float64, robust_z
from .base import Detector, DetectorResult, RoundUpdates, register_detector


@register_detector("norm")
class NormZ(Detector):
    """Robust z-score of ``||g_i||`` (median/MAD, Iglewicz-Hoaglin); flags ``z > threshold``.

    Parameters
    ----------
    threshold : float
        Flag when the z-score exceeds it (3.5, Iglewicz and Hoaglin's cut-off).
    two_sided : bool
        Also flag ``z < -threshold`` (an update much smaller than the others, e.g. a free rider).
    """

    def __init__(self, threshold: float = 3.5, two_sided: bool = False):
        self.threshold = threshold
        self.two_sided = two_sided

    @classmethod
    def check_params(cls, params, num_clients):
        if not float(params.get("threshold", 3.5)) > 0:
            raise ValueError(f"detector 'norm': threshold must be > 0, got {params['threshold']!r}")

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        norms = as_float64(round_updates.updates).norm(dim=1).cpu().numpy()
        z = robust_z(norms)
        flags = np.abs(z) > self.threshold if self.two_sided else z > self.threshold
        return DetectorResult(z, flags, True, {"norms": norms.tolist(), "threshold": self.threshold})
