"""One registry view and one validation path for every component a scenario names.

Datasets, partitioners, models, engines, utilities, evaluators (stopping rules included),
attacks, aggregators and detectors are each checked here, names and parameters, before any
process starts; each problem is one line naming the scenario field. The scenario schema imports
no sibling, so the allowed values are read from the registries here, never copied.
"""

from __future__ import annotations

import difflib
from typing import Any


def registries() -> dict[str, list[str]]:
    """Every registry name a scenario may use, by kind."""
    import fedattr.defenses  # noqa: F401  (robust-scoring evaluators register on import)
    from fedattr.attacks import ATTACKS
    from fedattr.learning.data import DATASETS, PARTITIONERS
    from fedattr.defenses import DETECTORS
    from fedattr.evaluators import ENGINES, EVALUATORS, METRICS
    from fedattr.learning.models import MODELS
    from fedattr.strategies.aggregators import AGGREGATORS

    return {"datasets": sorted(DATASETS), "partitioners": list(PARTITIONERS), "models": sorted(MODELS),
            "engines": list(ENGINES), "utilities": list(METRICS), "evaluators": sorted(EVALUATORS),
            "attacks": sorted(ATTACKS), "aggregators": list(AGGREGATORS), "detectors": sorted(DETECTORS)}


def _unknown(field: str, kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{field} = {name!r}: unknown {kind} (known: {', '.join(known)}){hint}"


def _dry_game(n: int):
    """A real round game on a tiny linear model: every evaluator, geometric or surrogate, can fit it."""
    import torch
    from torch import nn

    from fedattr.evaluators import ModelUtility, RoundGame

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(12, 1, 2, 2, generator=gen)
    y = torch.arange(12) % 3
    utility = ModelUtility(model, x, y, metric="neg_ce", num_classes=3)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = [{k: v + 0.1 * (i + 1) * torch.randn(v.shape, generator=gen) for k, v in base.items()} for i in range(n)]
    return RoundGame.from_state_dicts(utility, base, states, weights=[10.0 + i for i in range(n)])


def check_evaluator(name: str, params: dict[str, Any], num_clients: int) -> str | None:
    """Why evaluator ``name`` with ``params`` cannot run, or None.

    Construction checks names and stopping rules; a dry fit on a small real round game catches
    parameters of the wrong type or range, which constructors only store.
    """
    from fedattr.evaluators import make_evaluator

    try:
        make_evaluator(name, **params).fit(_dry_game(max(2, min(int(num_clients), 4))), seed=0)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad parameter, reported in one line
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    return None


def check_components(scenario: Any) -> list[str]:
    """Every problem with the components ``scenario`` names, one readable line each."""
    from fedattr.attacks import make_attack
    from fedattr.defenses import validate_detector
    from fedattr.strategies.aggregators import check_aggregator

    reg = registries()
    problems = []
    named = [("data.dataset", "dataset", scenario.data.dataset, "datasets"),
             ("partition.kind", "partitioner", scenario.partition.kind, "partitioners"),
             ("model", "model", scenario.model, "models"),
             ("attribution.engine", "engine", scenario.attribution.engine, "engines"),
             ("attribution.utility", "utility", scenario.attribution.utility, "utilities")]
    for field, kind, name, key in named:
        if name not in reg[key]:
            problems.append(_unknown(field, kind, name, reg[key]))
    n = scenario.num_clients
    for i, ev in enumerate(scenario.attribution.evaluators):
        field = f"attribution.evaluators.{i} ({ev.name})"
        if ev.name not in reg["evaluators"]:
            problems.append(_unknown(f"attribution.evaluators.{i}.name", "evaluator", ev.name, reg["evaluators"]))
        elif (why := check_evaluator(ev.name, dict(ev.params), n)) is not None:
            problems.append(f"{field}: {why}")
    for i, arm in enumerate(scenario.arms):
        if arm.attack not in reg["attacks"]:
            problems.append(_unknown(f"arms.{i}.attack", "attack", arm.attack, reg["attacks"]))
            continue
        try:
            make_attack(arm.attack, **arm.params)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"arms.{i} ({arm.name}): {exc}")
    agg = scenario.aggregation
    if (why := check_aggregator(agg.strategy, dict(agg.params), n)) is not None:
        problems.append(f"aggregation: {why}")
    for i, det in enumerate(scenario.detectors):
        if det.name not in reg["detectors"]:
            problems.append(_unknown(f"detectors.{i}.name", "detector", det.name, reg["detectors"]))
            continue
        try:
            validate_detector(det.name, dict(det.params), n)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"detectors.{i} ({det.name}): {exc}")
    return problems
