"""Checks a scenario must pass before any process starts.

Everything that can be known on the launching machine is checked here, so that a bad value is
one clear :class:`~fedattr.errors.UserError` (exit status 2) instead of a failure inside Flower
30-75 s later.
"""

from __future__ import annotations

from typing import Any

from fedattr.errors import UserError


def registries() -> dict[str, list[str]]:
    """Every registry name a scenario may use."""
    from fedattr.attacks import ATTACKS
    from fedattr.data import DATASETS, PARTITIONERS
    from fedattr.evaluators import EVALUATORS
    from fedattr.models import MODELS
    from fedattr.strategies import AGGREGATORS

    return {"datasets": sorted(DATASETS), "partitioners": list(PARTITIONERS), "models": sorted(MODELS),
            "evaluators": sorted(EVALUATORS), "attacks": sorted(ATTACKS), "aggregators": sorted(AGGREGATORS)}


def check_registries(scenario: Any) -> None:
    """Unknown registry names and bad parameters fail here, before any process starts."""
    from fedattr.attacks import make_attack
    from fedattr.evaluators import make_evaluator

    reg = registries()
    checks = [("model", scenario.model, reg["models"]), ("data.dataset", scenario.data.dataset, reg["datasets"]),
              ("aggregation.strategy", scenario.aggregation.strategy, reg["aggregators"])]
    for field, value, allowed in checks:
        if value not in allowed:
            raise UserError(f"{field} = {value!r} is not allowed; choose one of {allowed}")
    for i, ev in enumerate(scenario.attribution.evaluators):
        try:
            make_evaluator(ev.name, **ev.params)
        except (ValueError, TypeError, UserError) as exc:
            raise UserError(f"attribution.evaluators[{i}] ({ev.name!r}): {exc}") from None
    for i, arm in enumerate(scenario.arms):
        try:
            make_attack(arm.attack, **arm.params)
        except (ValueError, TypeError, UserError) as exc:
            raise UserError(f"arms[{i}] ({arm.name!r}): {exc}") from None
