"""ScenarioError and the one path from raw data to a validated Scenario, errors made readable.

Every pydantic error becomes one line ``field = value: what is allowed``; an unknown key lists
the allowed keys and the closest one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from fedattr.core.registry import did_you_mean
from fedattr.scenario.fields import inner_model
from fedattr.scenario.schema import Scenario

__all__ = ["ScenarioError", "scenario_from_dict", "dump_resolved", "short"]


class ScenarioError(Exception):
    """A scenario (file, override or grid) is invalid; the message names field, value and rule."""


def short(value: Any, limit: int = 80) -> str:
    """A one-line repr of a value, cut to ``limit`` characters."""
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class that owns the last segment of ``loc`` (None inside free dicts)."""
    cls: type[BaseModel] | None = Scenario
    for seg in loc[:-1]:
        if cls is None:
            return None
        if isinstance(seg, int):
            continue  # list index: the element model was already selected by the list field
        info = cls.model_fields.get(seg)
        cls = inner_model(info.annotation) if info else None
    return cls


def _format_error(err: Mapping[str, Any]) -> str:
    """One line for one pydantic error: ``field = value: what is allowed``."""
    ctx = err.get("ctx") or {}
    if err["type"] == "cross_field":
        return f"{ctx['field']} = {short(ctx['value'])}: {ctx['message']}"
    loc = [s for s in err["loc"] if not (isinstance(s, str) and s.startswith("function-"))]
    field = ".".join(str(s) for s in loc) or "(scenario)"
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(owner.model_fields) if owner else []
        return (f"{field} = {short(err['input'])}: unknown key (allowed: "
                f"{', '.join(allowed)}){did_you_mean(str(loc[-1]), allowed)}")
    if err["type"] == "missing":
        return f"{field}: required, but not given"
    return f"{field} = {short(err['input'])}: {err['msg']}"


def _as_scenario_error(exc: ValidationError, where: str) -> ScenarioError:
    """Turn a pydantic ValidationError into one readable ScenarioError."""
    lines = [_format_error(e) for e in exc.errors()]
    head = f"invalid scenario {where}:" if where else "invalid scenario:"
    return ScenarioError("\n".join([head] + [f"  - {line}" for line in lines]))


def scenario_from_dict(data: Mapping[str, Any], *, where: str = "") -> Scenario:
    """Validate a plain dict (as read from TOML or scenario.json) into a Scenario.

    Raises ScenarioError naming every offending field, its value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"invalid scenario {where}: expected a table, got {short(data)}")
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as exc:
        raise _as_scenario_error(exc, where) from None


def dump_resolved(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a JSON-ready dict with every default filled in (what scenario.json holds)."""
    return scenario.model_dump(mode="json")
