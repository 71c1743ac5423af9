"""Per-round detectors (who gets flagged) and attribution-robust scoring.

Detectors: ``DETECTORS`` / :func:`make_detector`, each ``observe(RoundUpdates) ->
DetectorResult``. Robust-scoring evaluators register in :data:`fedattr.evaluators.EVALUATORS`
when this package is imported.

This package does not import Flower.
"""

from .base import (
    DETECTORS,
    Detector,
    DetectorResult,
    RoundUpdates,
    make_detector,
    register_detector,
    root_update,
    validate_detector,
)

__all__ = [
    "DETECTORS", "Detector", "DetectorResult", "RoundUpdates",
    "make_detector", "register_detector", "root_update", "validate_detector",
]

# Registration side effects: every detector module adds itself to DETECTORS.
from . import cosine, flame, fltrust, foolsgold, krum, norm, robust_scoring  # noqa: E402,F401
