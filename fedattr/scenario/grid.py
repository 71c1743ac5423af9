"""Sweep grids: ``key=v1,v2,...`` items, expanded into one validated Scenario per point."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from fedattr.scenario.errors import ScenarioError, dump_resolved, scenario_from_dict
from fedattr.scenario.overrides import apply_overrides
from fedattr.scenario.schema import Scenario

__all__ = ["parse_grid", "expand_grid"]


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """Turn ``["partition.alpha=0.1,0.5", "seeds=[0,1],[2,3]"]`` into a grid dict.

    Commas inside brackets/braces/quotes do not split values. Raises ScenarioError on bad syntax.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"grid {item!r}: expected key=v1,v2,... e.g. "
                                f"partition.alpha=0.1,0.5")
        vals = _split_top_level(values)
        if not values.strip() or any(v == "" for v in vals):
            raise ScenarioError(f"grid {item!r}: empty value in the list")
        if key in grid:
            raise ScenarioError(f"grid key {key!r} given twice")
        grid[key] = vals
    return grid


def expand_grid(scenario: Scenario, grid: Mapping[str, Sequence[str]]
                ) -> list[tuple[dict[str, str], Scenario]]:
    """Cartesian product of grid overrides on ``scenario``; one validated Scenario per point.

    Points are ordered like ``itertools.product`` over the keys in the grid's order. An empty
    grid gives one point with no overrides. Raises ScenarioError naming the point and field.
    """
    for key, values in grid.items():
        if isinstance(values, str) or len(values) == 0:
            raise ScenarioError(f"grid key {key!r}: needs a non-empty list of values")
    base = dump_resolved(scenario)
    keys = list(grid)
    points = []
    for combo in itertools.product(*(list(grid[k]) for k in keys)):
        overrides = {k: str(v) for k, v in zip(keys, combo)}
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        try:
            data = apply_overrides(base, overrides)
            points.append((overrides, scenario_from_dict(data, where=f"at grid point {label}")))
        except ScenarioError as exc:
            if str(exc).startswith("invalid scenario"):
                raise
            raise ScenarioError(f"grid point {label}: {exc}") from None
    return points
