"""The ``--set key=value`` language: dotted keys into raw scenario data, TOML values.

A segment after a list field selects elements: an index (``arms.1.params.synthetic_fraction=0.5``;
the index one past the end appends an element), an element's ``name``
(``arms.attack.start_round=2``, ``attribution.evaluators.shapley.params.budget=100``), or ``*``
for every element. The reserved prefix ``attack.`` sets a key inside ``params`` of the arms whose
``attack`` is not ``"honest"`` (``attack.synthetic_fraction=0.1``), which is what a sweep over an
attack hyper-parameter wants: of those arms, the ones whose params already hold the key (so a
baseline without that parameter is left alone), or all of them when none holds it. Values are
parsed as TOML values (``0.1``, ``[0,1,2]``, ``{steps=50}``, ``true``); anything that is not valid
TOML is taken as a plain string. Overrides only navigate; the values are validated with the rest
of the scenario.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from fedattr.scenario.errors import ScenarioError, short
from fedattr.scenario.fields import field_default, inner_model
from fedattr.scenario.schema import HONEST_ATTACK, ArmSpec, Scenario

__all__ = ["parse_overrides", "apply_overrides"]


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML value; fall back to the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Turn ``["train.lr=0.1", ...]`` (or a mapping of already-typed values) into (key, value).

    String values are parsed as TOML values, falling back to strings.
    """
    if isinstance(overrides, Mapping):
        return [(str(k), _parse_value(v) if isinstance(v, str) else v)
                for k, v in overrides.items()]
    if isinstance(overrides, str):  # a lone string is a common slip: treat it as one override
        overrides = [overrides]
    pairs = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"override {item!r}: expected key=value, e.g. train.lr=0.1")
        pairs.append((key, _parse_value(value.strip())))
    return pairs


def _select(items: list[Any], seg: str, trail: str) -> list[int]:
    """Indices of list elements chosen by an index, an element name, or ``*``."""
    if seg == "*":
        return list(range(len(items)))
    if re.fullmatch(r"\d+", seg):
        i = int(seg)
        if i > len(items):  # i == len appends a new element
            raise ScenarioError(f"override {trail}: index {i} is out of range (have {len(items)} "
                                f"elements; use {len(items)} to append one)")
        if i == len(items):
            items.append({})
        return [i]
    named = [i for i, it in enumerate(items) if isinstance(it, Mapping) and it.get("name") == seg]
    if not named:
        names = [str(it.get("name")) for it in items if isinstance(it, Mapping)]
        raise ScenarioError(f"override {trail}: no element named {seg!r} (have: "
                            f"{', '.join(names) or 'none'}; or use an index or *)")
    return named


def _set_path(node: Any, segs: list[str], value: Any, cls: type[BaseModel] | None,
              trail: str) -> None:
    """Set ``value`` at the dotted path ``segs`` inside ``node``, creating tables as needed.

    ``cls`` is the model that describes ``node`` (None inside free dicts such as params); it is
    used to materialise defaults, so that ``arms.attack...`` works when the file omits [[arms]].
    """
    seg, rest = segs[0], segs[1:]
    if isinstance(node, list):
        for i in _select(node, seg, trail):
            if rest:
                _set_path(node[i], rest, value, cls, trail)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise ScenarioError(f"override {trail}: cannot set {seg!r} inside a non-table value "
                            f"{short(node)}")
    if not rest:
        node[seg] = value
        return
    info = cls.model_fields.get(seg) if cls else None
    if seg not in node:
        default = field_default(cls, seg)
        node[seg] = default if isinstance(default, (dict, list)) else {}
    _set_path(node[seg], rest, value, inner_model(info.annotation) if info else None, trail)


def _has_path(node: Any, segs: Sequence[str]) -> bool:
    """True when the nested tables in ``node`` hold the dotted path ``segs``."""
    for seg in segs:
        if not isinstance(node, Mapping) or seg not in node:
            return False
        node = node[seg]
    return True


def _copy(data: Any) -> Any:
    """Deep copy of plain TOML/JSON data."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _set_attack_param(out: dict[str, Any], key: str, segs: list[str], value: Any) -> None:
    """``attack.<param>=value``: set ``params.<param>`` on the non-honest arms that use it."""
    if len(segs) < 2:
        raise ScenarioError(f"override {key!r}: use attack.<param>=value to set a "
                            f"parameter of every non-honest arm")
    if "arms" not in out:
        out["arms"] = field_default(Scenario, "arms")
    arms = out["arms"] if isinstance(out["arms"], list) else []
    hits = [a for a in arms if isinstance(a, dict)
            and a.get("attack", HONEST_ATTACK) != HONEST_ATTACK]
    if not hits:
        raise ScenarioError(f"override {key!r}: no arm with a non-honest attack to set it on")
    # arms that already set the parameter are the ones that use it (a noise-floor baseline has
    # no synthetic_fraction); if none sets it, every non-honest arm gets it
    users = [a for a in hits if _has_path(a.get("params"), segs[1:])]
    for arm in users or hits:
        _set_path(arm, ["params", *segs[1:]], value, ArmSpec, key)


def apply_overrides(data: Mapping[str, Any],
                    overrides: Sequence[str] | Mapping[str, Any] | Sequence[tuple[str, Any]]
                    ) -> dict[str, Any]:
    """A copy of raw scenario data with dotted-key overrides applied (see the module docstring).

    ``overrides`` is a list of ``key=value`` strings, a mapping, or parsed (key, value) pairs.
    Raises ScenarioError for a key that cannot be navigated (the values are validated later).
    """
    if overrides and not isinstance(overrides, (Mapping, str)) and all(
            isinstance(o, tuple) for o in overrides):
        pairs = list(overrides)
    else:
        pairs = parse_overrides(overrides)  # type: ignore[arg-type]
    out = _copy(dict(data))
    for key, value in pairs:
        segs = key.split(".")
        if any(not s for s in segs):
            raise ScenarioError(f"override {key!r}: empty segment in dotted key")
        if segs[0] == "attack":
            _set_attack_param(out, key, segs, value)
        else:
            _set_path(out, segs, value, Scenario, key)
    return out
