"""Hostile values generated from the declared types and constraints (shared by the conformance and hostile suites)."""

from __future__ import annotations

from ltlib.registry import Interval, Param


def bad_values(param: Param) -> list:
    """Values ``param`` must refuse: wrong types, NaN and infinities, and just outside each interval."""
    wrong_type = {float: ["abc", [1, 2], True], int: ["abc", 1.5, True], bool: ["abc", 2], str: [3], list: ["abc", [1, "x"]]}
    out = list(wrong_type.get(param.kind, []))
    if param.options is not None:
        out.append("not-a-choice")
    if param.kind in (float, int):
        out += [float("nan"), float("inf")] if param.kind is float else []
        for c in param.constraints:
            if isinstance(c, Interval):
                step = 1 if param.kind is int else 1e-3
                if c.low is not None:
                    out.append(c.low - step if c.closed in ("both", "left") else c.low)
                if c.high is not None:
                    out.append(c.high + step if c.closed in ("both", "right") else c.high)
    if param.kind is int:
        out = [v if not isinstance(v, float) or not v.is_integer() else int(v) for v in out]
    return out
