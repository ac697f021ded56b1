"""One small registry used by every family of methods (losses, samplers, mixing, …).

A method is a function or class registered under a name with the paper it comes from, and with its
contract as data:

- ``traits``: what it needs and does, from :data:`TRAITS` (needs images, reads features, has an
  epoch hook, …). Declared once here; the training loop, validation and the app read them, and the
  conformance tests check that each entry behaves as its traits say.
- ``constraints``: the allowed values of its parameters (:class:`Interval`, :class:`Check`), on top
  of the types its signature annotates (``float``, ``int``, ``bool``, ``Literal[...]``, ``X | None``,
  ``tuple[float, ...]``). ``check_params`` rejects a bad name, type or value with one line before
  any data is loaded; the CLI help and the app's widgets show the same ranges.
- ``eager``: why the method cannot run inside the captured CUDA-graph step, or None when it can.

The CLI flags, the app's toggles and the parametrised tests all read the registries, so adding a
method is one definition plus one ``@REGISTRY.register(...)`` line.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

# A registered function or class: ``register`` hands it back unchanged, with its type.
MethodT = TypeVar("MethodT", bound=Callable[..., Any])

# Every trait an entry may declare, with what it means (shown by ``ltlib methods``).
TRAITS: dict[str, str] = {
    "images": "needs image inputs (N, C, H, W); for a dataset: provides them",
    "domains": "needs a dataset with domains; for a dataset: provides them",
    "features": "the loss reads the batch's penultimate features",
    "cosine head": "trains with a cosine (normalised) classifier head",
    "experts head": "trains with a head of several experts",
    "bbn model": "works only with the two-branch BBN model",
    "epoch hook": "changes during training through on_epoch_start(epoch, state)",
    "own parameters": "has trainable parameters of its own, optimised with the model's",
    "changes model": "swaps the trained parameters at a stage switch",
    "changes step": "changes what a training step computes at some epoch (the loop then makes a fresh epoch runner)",
    "validation split": "learns on a held-out validation split of the training set",
    "second batch": "draws a second batch per step",
    "second pass": "runs a second forward-backward pass per step",
    "reduces batch": "turns the per-sample losses into the batch objective itself",
}


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``None`` bounds are open-ended. ``closed``: both, left, right or neither.

    For a list-valued parameter the range applies to every element.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __post_init__(self) -> None:
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed={self.closed!r} is not allowed; allowed: both, left, right, neither")

    def ok(self, value: Any) -> bool:
        values = value if isinstance(value, (list, tuple)) else [value]
        # Any numbers.Real (int, numpy scalars) compares with the float bounds as a float does; typeshed's Real does not say so.
        return all(self._ok(typing.cast(float, v)) for v in values if isinstance(v, numbers.Real))

    def _ok(self, v: float) -> bool:
        if self.low is not None and not (v >= self.low if self.closed in ("both", "left") else v > self.low):
            return False
        return self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)

    def __str__(self) -> str:
        left = "[" if self.low is not None and self.closed in ("both", "left") else "("
        right = "]" if self.high is not None and self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{low}, {high}{right}"


@dataclass(frozen=True)
class Check:
    """Any other rule on one value: ``test(value)`` must hold; ``text`` says what is allowed."""

    test: Callable[[Any], bool]
    text: str

    def ok(self, value: Any) -> bool:
        return bool(self.test(value))

    def __str__(self) -> str:
        return self.text


Constraint = Interval | Check


@dataclass(frozen=True)
class Param:
    """One user parameter of a method: its default, annotated type and allowed values."""

    name: str
    default: Any
    annotation: Any
    constraints: tuple[Constraint, ...] = ()

    @property
    def options(self) -> tuple[Any, ...] | None:
        """The choices of a ``Literal[...]`` parameter, else None."""
        hint = _without_none(self.annotation)
        return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None

    @property
    def optional(self) -> bool:
        return _allows_none(self.annotation)

    @property
    def kind(self) -> type | None:
        """The value type: float, int, bool, str, list (a list of numbers) or None when unannotated."""
        hint = _without_none(self.annotation)
        if self.options is not None:
            return type(self.options[0])
        if typing.get_origin(hint) in (tuple, list) or hint in (tuple, list):
            return list
        if typing.get_origin(hint) is dict or hint is dict:
            return dict
        return hint if hint in (float, int, bool, str) else None

    def allowed(self) -> str:
        """What is allowed, as one phrase (for error messages, help and tooltips)."""
        parts = []
        if self.options is not None:
            parts.append(", ".join(map(str, self.options)))
        elif self.kind is str and self.constraints:  # a rule on a string says it all (e.g. a model name)
            pass
        else:
            kind = {
                float: "a number",
                int: "an integer",
                bool: "true or false",
                str: "a string",
                list: "a list of numbers",
                dict: "key=value pairs",
            }
            parts.append(kind.get(self.kind, "any value") if self.kind is not None else "any value")
        parts += [f"in {c}" if isinstance(c, Interval) else str(c) for c in self.constraints]
        if self.optional:
            parts.append("or null for the default behaviour")
        return " ".join(parts)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if value is None:
            return None if self.optional or self.default is None else "null is not allowed"
        if self.options is not None:
            return None if value in self.options else "is not allowed"
        kind = self.kind
        if kind is float and not _is_number(value):
            return "must be a number"
        if kind is int and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            return "must be an integer"
        if kind is bool and not isinstance(value, bool):
            return "must be true or false"
        if kind is str and not isinstance(value, str):
            return "must be a string"
        if kind is dict and not isinstance(value, dict):
            return "must be key=value pairs"
        if kind is list and not (isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)):
            return "must be a list of numbers"
        if kind in (float, int) and not math.isfinite(value):
            return "must be finite"
        if kind is list and not all(math.isfinite(v) for v in value):
            return "must hold finite numbers"
        for c in self.constraints:
            if not c.ok(value):
                return "is out of range" if isinstance(c, Interval) else "is not allowed"
        return None


@dataclass(frozen=True)
class Entry:
    """A registered method: the callable, its paper, traits, parameters and engine eligibility."""

    name: str
    obj: Callable[..., Any]
    paper: str
    traits: frozenset[str] = frozenset()
    constraints: dict[str, tuple[Constraint, ...]] = field(default_factory=dict)
    # Why the method runs eagerly (not inside the captured CUDA-graph step); None = graph-capable.
    eager: str | None = None
    fixed: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """First line of the docstring: what the app shows beside a toggle."""
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else self.name

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.obj) or ""

    @property
    def needs(self) -> tuple[str, ...]:
        """The traits that are requirements on the data or the other methods (images, domains, a head…)."""
        return tuple(t for t in sorted(self.traits) if t in NEEDS)

    @cached_property
    def params(self) -> dict[str, Param]:
        """The user parameters, in signature order, with defaults, types and constraints."""
        return _params(self.obj, self.fixed, self.constraints)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params.values()}


# Traits that are requirements on the dataset, the model or the head (the rest describe behaviour).
NEEDS = ("images", "domains", "cosine head", "experts head", "bbn model")


class Registry:
    """Name → method table for one family (``kind`` is used in error messages)."""

    def __init__(self, kind: str, fixed: tuple[str, ...] = (), extensions: tuple[str, ...] = ()) -> None:
        self.kind = kind
        # Positional parameters the library passes itself (e.g. class_counts): never user parameters.
        self.fixed = fixed
        # Modules that register more entries but import the family's module themselves (so it cannot import
        # them): imported on the first lookup, so that ``import ltlib`` stays free of torch.
        self._extensions = extensions
        self._entries: dict[str, Entry] = {}

    def _loaded(self) -> dict[str, Entry]:
        if self._extensions:
            for module in self._extensions:
                importlib.import_module(module)  # another thread's lookup meanwhile waits on the module's import lock
            self._extensions = ()
        return self._entries

    def register(
        self,
        name: str,
        *,
        paper: str,
        traits: tuple[str, ...] = (),
        constraints: dict[str, Constraint | tuple[Constraint, ...]] | None = None,
        eager: str | None = None,
    ) -> Callable[[MethodT], MethodT]:
        unknown = [t for t in traits if t not in TRAITS]
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown trait(s) {unknown}; traits: {', '.join(TRAITS)}")
        rules = {k: v if isinstance(v, tuple) else (v,) for k, v in (constraints or {}).items()}

        def add(obj: MethodT) -> MethodT:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, paper, frozenset(traits), rules, eager, self.fixed)
            if inspect.isclass(obj):
                typing.cast(Any, obj).traits = frozenset(traits)  # the object reads its own traits (e.g. a loss: features, head)
            return obj

        return add

    def available(self) -> list[str]:
        return list(self._loaded())

    def entries(self) -> list[Entry]:
        return list(self._loaded().values())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def get(self, name: str) -> Entry:
        entries = self._loaded()
        if name not in entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(entries)}")
        return entries[name]

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Reject a parameter the method does not take, or a value of the wrong type or out of range.

        The message is one line naming the method, the parameter, the value and what is allowed.
        """
        entry = self.get(name)
        for key, value in params.items():
            if key in self.fixed:
                continue
            if key not in entry.params:
                choices = ", ".join(entry.params) or "none"
                raise ValueError(f"{self.kind} {name!r} has no parameter {key!r}; its parameters: {choices}")
            param = entry.params[key]
            why = param.problem(value)
            if why is not None:
                raise ValueError(f"{self.kind} {name!r}: {key}={describe(value)} {why}; allowed: {param.allowed()}")

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        self.check_params(name, params)
        return self.get(name).obj(*args, **params)


def _params(obj: Callable[..., Any], fixed: tuple[str, ...], constraints: dict[str, tuple[Constraint, ...]]) -> dict[str, Param]:
    """Keyword parameters, their defaults and annotated types, read from the signature (``__init__`` for classes)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that does not resolve: check names and constraints only
        hints = {}
    out: dict[str, Param] = {}
    for p in inspect.signature(obj).parameters.values():
        if p.name in fixed or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        out[p.name] = Param(p.name, default, hints.get(p.name, Any), constraints.get(p.name, ()))
    stray = sorted(set(constraints) - set(out))
    if stray:
        raise ValueError(f"{getattr(obj, '__name__', obj)}: constraints for unknown parameter(s) {stray}")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(value: Any) -> str:
    """A value as the user typed it (JSON-like), not as Python's repr of numpy or internal objects."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, numbers.Real):
        return f"{value:g}" if not isinstance(value, (bool, numbers.Integral)) else str(value).lower()
    return type(value).__name__


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _allows_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def check_range(name: str, value: float, low: float, high: float, *, closed_high: bool = False) -> None:
    """Raise ``ValueError`` naming the parameter unless ``low <= value < high`` (or ``<= high``).

    For checks that depend on the data or another parameter; a parameter's own range belongs in
    its entry's ``constraints``.
    """
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name}={value} is out of range; allowed: [{low}, {high}{bracket}")
