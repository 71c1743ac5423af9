"""fedattr: data attribution under federated learning, on Flower.

The public API (docs/api.md). Names are imported on first use, so ``import fedattr`` stays light
(no torch, no Flower) for the command line.

Attribution in a Flower ServerApp
    :class:`AttributedStrategy` wraps any Flower strategy; :class:`RoundFailure` is what it
    raises when a round cannot go on. :class:`RoundScorer` runs evaluators on one round's game.
Evaluators
    :func:`make_evaluator` builds one by registry name; ``EVALUATORS`` is the registry
    (``sorted(fedattr.EVALUATORS)`` lists the names); :class:`ModelUtility` is the utility of a
    model on validation data; :class:`CumulativeValues` accumulates per-round values.
Results
    :class:`RoundRecord` and :class:`JobSummary` are the typed records; :func:`read_rounds` and
    :func:`read_summary` read one job's files; :func:`load_results` reads a results directory and
    :func:`write_report` writes its report (what ``fedattr report`` does).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "AttributedStrategy": "fedattr.strategies.attributed",
    "RoundFailure": "fedattr.strategies.attributed",
    "RoundScorer": "fedattr.strategies.scoring",
    "make_evaluator": "fedattr.evaluators",
    "EVALUATORS": "fedattr.evaluators",
    "ModelUtility": "fedattr.evaluators",
    "CumulativeValues": "fedattr.evaluators",
    "RoundRecord": "fedattr.protocol",
    "JobSummary": "fedattr.protocol",
    "read_rounds": "fedattr.protocol",
    "read_summary": "fedattr.protocol",
    "load_results": "fedattr.report.reader",
    "write_report": "fedattr.report",
    "UserError": "fedattr.core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedattr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
