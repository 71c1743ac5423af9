"""Scenario files: read TOML (with overrides) into a Scenario, write a Scenario back as TOML."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fedattr.scenario.errors import ScenarioError, scenario_from_dict
from fedattr.scenario.overrides import apply_overrides, parse_overrides
from fedattr.scenario.schema import Scenario

__all__ = ["read_toml", "load_scenario", "to_toml"]


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a ScenarioError."""
    if not path.exists():
        raise ScenarioError(f"scenario file not found: {path}")
    if not path.is_file():
        raise ScenarioError(f"scenario path is not a file: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc}") from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a TOML scenario, apply ``key=value`` overrides (dotted keys) and validate it.

    Every failure (missing file, TOML syntax, unknown key, wrong type, out-of-range value, bad
    override) raises ScenarioError with one readable message.
    """
    path = Path(path)
    raw = read_toml(path)
    pairs = parse_overrides(overrides)
    data = apply_overrides(raw, pairs)
    suffix = f" (with --set {', '.join(k for k, _ in pairs)})" if pairs else ""
    return scenario_from_dict(data, where=f"{path}{suffix}")


def _without_none(value: Any) -> Any:
    """``value`` with None-valued entries dropped: TOML has no null, and None means the default."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value


def to_toml(scenario: Scenario) -> str:
    """This scenario, all defaults filled, as TOML text that ``load_scenario`` reads back."""
    # python mode keeps inf/nan, which JSON mode would turn into null (and TOML would drop)
    return tomli_w.dumps(_without_none(scenario.model_dump(mode="python")))
