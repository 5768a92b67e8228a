"""Attribute checks shared by op definitions (raise RuleError with a fix)."""
from __future__ import annotations

import math
from typing import Any

from ..errors import OptionError, RuleError
from ..shapes import is_int

MAX_SIZE = 2**31 - 1  # a layer size beyond this is a mistake, not a model


def positive_int(value: Any, what: str) -> int:
    if not is_int(value) or not 0 < int(value) <= MAX_SIZE:
        raise RuleError(f"{what} must be a positive integer up to {MAX_SIZE:,}, got "
                        f"{value!r}", f"pass {what}=<int >= 1>", OptionError)
    return int(value)


def number(value: Any, what: str, lo: float | None = None, hi: float | None = None,
           hi_open: bool = False, finite: bool = False) -> float:
    """``value`` as a float in ``[lo, hi]`` (``hi_open``: ``[lo, hi)``), never NaN; with
    ``finite``, never infinite either."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = value == value and (not finite or math.isfinite(value)) and (
            lo is None or value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        rng = f"[{lo}, {hi}{')' if hi_open else ']'}{' and finite' if finite else ''}"
        raise RuleError(f"{what} must be a number in {rng}, got {value!r}",
                        f"pass {what} within {rng}", OptionError)
    return value


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(f"{what} must be True or False, got {value!r}",
                        f"pass {what}=True or {what}=False", OptionError)
    return value


def shape_tuple(value: Any, what: str, allow_none: bool = True, allow_minus1: bool = False
                ) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise RuleError(f"{what} must be a tuple, got {value!r}",
                        f"pass {what} as a tuple such as (None, 16)", OptionError)
    out = []
    for d in value:
        if d is None and allow_none:
            out.append(None)
        elif is_int(d) and (int(d) > 0 or (allow_minus1 and int(d) == -1)):
            out.append(int(d))
        else:
            raise RuleError(
                f"{what} {tuple(value)!r} has an invalid size {d!r}",
                f"use positive ints{', -1' if allow_minus1 else ''}"
                f"{' or None (any size)' if allow_none else ''}", OptionError)
    return tuple(out)
