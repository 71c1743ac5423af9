"""Direction outliers: cosine to the coordinate-wise median update."""

from __future__ import annotations


from ._stats import as_float64, coordinate_median, robust_z, unit_rows
from .base import Detector, DetectorResult, RoundUpdates, register_detector


@register_detector("cosine_median")
class CosineMedian(Detector):
    """``cos(g_i, median_j g_j)`` with the coordinate-wise median; its robust z-score below
    ``-threshold`` is flagged. Scores are the robust z-scores (lower = more suspicious); a zero
    update has cosine 0.

    Parameters
    ----------
    threshold : float
        Flag when the z-score is below ``-threshold`` (3.5).
    """

    def __init__(self, threshold: float = 3.5):
        self.threshold = threshold

    @classmethod
    def check_params(cls, params, num_clients):
        if not float(params.get("threshold", 3.5)) > 0:
            raise ValueError(f"detector 'cosine_median': threshold must be > 0, got {params['threshold']!r}")

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        g = as_float64(round_updates.updates)
        med = coordinate_median(g)[None]
        cos = (unit_rows(g) @ unit_rows(med)[0]).cpu().numpy()
        z = robust_z(cos)
        return DetectorResult(z, z < -self.threshold, False, {"cosine": cos.tolist(), "threshold": self.threshold})
