"""Reading the schema's own field definitions: the model under a field, a missing field's default.

The error formatter, the override language and the schema printer all walk the pydantic models
the same way; these helpers are that one walk.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_list_field(annotation: Any) -> bool:
    """Whether a field is typed ``list[...]`` (optionally ``| None``)."""
    return typing.get_origin(unwrap_optional(annotation)) is list


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field typed ``Model``, ``Model | None`` or ``list[Model]``."""
    ann = unwrap_optional(annotation)
    if typing.get_origin(ann) is list:
        ann = typing.get_args(ann)[0]
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def field_default(cls: type[BaseModel] | None, key: str) -> Any:
    """JSON-ready default of a field that is missing from the raw data (None if unknown)."""
    info = cls.model_fields.get(key) if cls else None
    if info is None or info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value
