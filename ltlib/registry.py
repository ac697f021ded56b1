"""One small registry used by every family of methods (losses, samplers, mixing, …).

A method is a function or class registered under a name with the paper it comes from.
The CLI flags, the app's toggles and the parametrised tests all read the registries,
so adding a method is one definition plus one ``@REGISTRY.register(...)`` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A registered method: the callable, its paper, a one-line summary and defaults."""

    name: str
    obj: Callable[..., Any]
    paper: str
    needs: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """First line of the docstring: what the app shows beside a toggle."""
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else self.name

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.obj) or ""


class Registry:
    """Name → method table for one family (``kind`` is used in error messages)."""

    def __init__(self, kind: str, fixed: tuple[str, ...] = ()) -> None:
        self.kind = kind
        # Positional parameters the library passes itself (e.g. class_counts): never user parameters.
        self.fixed = fixed
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, paper: str, needs: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, paper, needs, _defaults(obj, self.fixed))
            return obj

        return add

    def available(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}")
        return self._entries[name]

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Reject parameter names the method does not take, listing the ones it does."""
        allowed = self.get(name).defaults
        for key in params:
            if key not in allowed and key not in self.fixed:
                choices = ", ".join(allowed) or "none"
                raise ValueError(f"{self.kind} {name!r} has no parameter {key!r}; its parameters: {choices}")

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        self.check_params(name, params)
        return self.get(name).obj(*args, **params)


def _defaults(obj: Callable[..., Any], fixed: tuple[str, ...]) -> dict[str, Any]:
    """Keyword parameters and their defaults, read from the signature (``__init__`` for classes)."""
    sig = inspect.signature(obj)
    out: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name in fixed or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def check_range(name: str, value: float, low: float, high: float, *, closed_high: bool = False) -> None:
    """Raise ``ValueError`` naming the parameter unless ``low <= value < high`` (or ``<= high``)."""
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name}={value} is out of range; allowed: [{low}, {high}{bracket}")
