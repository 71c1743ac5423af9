"""Name -> component registries: register, list, make, and one "did you mean" for every lookup.

Evaluators, detectors, attacks, aggregators and stopping rules each live in one
:class:`Registry`. A registry is a read-only mapping (``name in R``, ``R[name]``, ``sorted(R)``),
adds entries through :meth:`Registry.register` (a class decorator, or a direct call), and builds
them from a scenario's parameters with :meth:`Registry.make`; an unknown name or parameter is a
:class:`RegistryError` naming it and the closest valid choice.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Generic, TypeVar, overload

from .errors import UserError

__all__ = ["Registry", "RegistryError", "did_you_mean", "init_params"]

T = TypeVar("T")


class RegistryError(UserError, ValueError):
    """An unknown registry name or parameter (a :class:`UserError` and a ``ValueError``)."""


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parameters(obj: Any) -> list[inspect.Parameter]:
    if isinstance(obj, type):
        if obj.__init__ is object.__init__:  # a class without a constructor of its own
            return []
        return list(inspect.signature(obj.__init__).parameters.values())[1:]
    return list(inspect.signature(obj).parameters.values())


def init_params(obj: Any) -> dict[str, Any]:
    """Constructor parameters of a class (or parameters of a callable) -> default
    (``inspect.Parameter.empty`` when required); ``*args``/``**kwargs`` are left out."""
    return {p.name: p.default for p in _parameters(obj) if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _accepts_any_keyword(obj: Any) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in _parameters(obj))


class Registry(Mapping[str, T], Generic[T]):
    """Registry of one kind of component, in registration order.

    Parameters
    ----------
    kind : str
        What an entry is, for messages (``"evaluator"``, ``"stopping rule"``).
    entries : mapping, optional
        Initial ``name -> entry`` pairs.
    set_name : bool
        Set ``entry.name = name`` on registration (classes whose ``name`` attribute is their
        registry name).
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *, set_name: bool = False):
        self.kind = kind
        self.set_name = set_name
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    # registration --------------------------------------------------------------------------
    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; adding the same entry again is a no-op, another
        entry under a taken name a ``ValueError``."""
        if name in self._entries:
            if self._entries[name] is entry:
                return entry
            raise ValueError(f"{self.kind} name {name!r} already registered")
        if self.set_name:
            entry.name = name  # type: ignore[attr-defined]
        self._entries[name] = entry
        return entry

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: Any = None):
        """``@registry.register(name)`` class decorator, or ``registry.register(name, entry)``."""
        if entry is not None:
            return self.add(name, entry)
        return lambda obj: self.add(name, obj)

    # lookup ----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown(name)) from None

    def get(self, name: str, default: Any = None) -> Any:
        """Entry ``name``, or ``default`` when there is none."""
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def unknown(self, name: object) -> str:
        """The message for an unknown ``name``: the closest name and every valid one."""
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; choose one of: {', '.join(self.names())}"

    # parameters --------------------------------------------------------------------------------
    def params(self, name: str) -> dict[str, Any]:
        """Constructor parameters of entry ``name`` -> default (``inspect.Parameter.empty`` if required)."""
        return init_params(self[name])

    def check(self, name: str, params: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> T:
        """Entry ``name`` after checking that ``params`` name only its parameters (and every required
        one); ``exclude`` lists parameters set by the caller, not by the user."""
        entry = self[name]
        allowed = {k: v for k, v in init_params(entry).items() if k not in set(exclude)}
        if not _accepts_any_keyword(entry):
            for p in sorted(set(params) - set(allowed)):
                listing = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in allowed.items())
                raise RegistryError(f"unknown parameter {p!r} for {self.kind} {name!r}{did_you_mean(p, allowed)}; "
                                    f"allowed: {listing or 'none'}")
        missing = [k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in params]
        if missing:
            raise RegistryError(f"{self.kind} {name!r} needs parameter(s) {', '.join(missing)}")
        return entry

    def make(self, name: str, **params: Any) -> Any:
        """``registry[name](**params)`` after :meth:`check`."""
        return self.check(name, params)(**params)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
