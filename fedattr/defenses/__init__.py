"""Per-round detectors (who gets flagged) and attribution-robust scoring.

Detectors: ``DETECTORS`` / :func:`make_detector`, each ``observe(RoundUpdates) ->
DetectorResult``. Robust-scoring evaluators (``clipped``, ``mom``, ``coverage_weighted``,
``filtered``) join the evaluator registry through :func:`register_scoring_rules`, which whoever
builds evaluators from scenario names calls (the round scorer, the scenario checks).

This package does not import Flower.
"""

from fedattr.core.registry import Registry
from fedattr.evaluators import EVALUATORS

from . import cosine, flame, fltrust, foolsgold, krum, norm  # detector modules: each registers in DETECTORS
from . import footprint  # the generator-footprint detector (and its scoring rule, registered below)
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
from .robust_scoring import ROBUST_SCORERS, register_robust_scorers

__all__ = [
    "DETECTORS", "Detector", "DetectorResult", "RoundUpdates",
    "make_detector", "register_detector", "root_update", "validate_detector",
    "ROBUST_SCORERS", "register_robust_scorers", "register_scoring_rules",
]


def register_scoring_rules(registry: Registry = EVALUATORS) -> Registry:
    """Add every scoring rule of this package to the evaluator ``registry`` and return it
    (idempotent): the evaluator catalogue a scenario names from."""
    register_robust_scorers(registry)
    from . import large_coalition, reference_player  # the footprint-designed scoring rules (issue 23)

    for name, cls in {**reference_player.SCORERS, **large_coalition.SCORERS, **footprint.SCORERS}.items():
        registry.register(name, cls)
    return registry
