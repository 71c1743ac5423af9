"""A readable listing of every scenario field (``fedattr scenario schema``)."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from fedattr.scenario.fields import inner_model, is_list_field
from fedattr.scenario.schema import Scenario

__all__ = ["schema_text"]

_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length",
           "max_length": "max length", "pattern": "pattern"}


def _type_text(annotation: Any) -> str:
    """A readable type: ``"iid" | "dirichlet"``, ``int | None``, ``list[int]``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{_type_text(typing.get_args(annotation)[0])}]"
    if origin is dict:
        return "table"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _inline(value: Any) -> str:
    """A default value as inline TOML-like text (display only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + "}"
    return "None" if value is None else repr(value)


def _constraints_text(info: Any) -> str:
    """Bounds of a field (``>= 2, <= 64``) read from its metadata."""
    parts = []
    for meta in info.metadata:
        for attr, sym in _BOUNDS.items():
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def _default_text(info: Any) -> str:
    """The default of a field (sections and lists of tables summarised)."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return _inline([{k: v for k, v in x.model_dump(mode="json").items()
                         if k in ("name", "attack")} for x in value])
    return _inline(value)


def _schema_lines(cls: type[BaseModel], prefix: str, out: list[str]) -> None:
    """Append one line per field of ``cls``, then its sections (recursively)."""
    nested = []
    for name, info in cls.model_fields.items():
        sub = inner_model(info.annotation)
        if sub is not None:
            nested.append((name, info, sub))
            if not is_list_field(info.annotation):
                continue
        ann = f"list[{sub.__name__}]" if sub else _type_text(info.annotation)
        bounds = _constraints_text(info)
        out.append(f"  {prefix}{name}: {ann} = {_default_text(info)}"
                   + (f"  ({bounds})" if bounds else ""))
        out.append(f"      {info.description or ''}")
    for name, info, sub in nested:
        is_list = is_list_field(info.annotation)
        head = f"[[{prefix}{name}]]" if is_list else f"[{prefix}{name}]"
        out.extend(["", f"{head}  {info.description or ''}"])
        _schema_lines(sub, "" if is_list else f"{prefix}{name}.", out)


def schema_text() -> str:
    """A readable listing of every scenario field: type, default, bounds and description."""
    out = ["Scenario file (TOML). Top-level fields:"]
    _schema_lines(Scenario, "", out)
    out += ["", "Overrides: --set key=value with dotted keys (train.lr=0.1, seeds=[0,1,2]);",
            "list elements by index, name or * (arms.attack.params.synthetic_fraction=0.25);",
            "attack.<param>=v sets params.<param> on the non-honest arms that already set it",
            "(on every non-honest arm when none does)."]
    return "\n".join(out) + "\n"
