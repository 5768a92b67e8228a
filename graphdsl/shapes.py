"""Shape arithmetic with unknown (None) sizes, shared by the op shape rules."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import RuleError, fmt_shape

Shape = tuple


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) or (
        hasattr(x, "dtype") and getattr(x, "shape", None) == () and x.dtype.kind in "iu"
    )


def normalize_axis(axis: Any, rank: int, what: str = "axis") -> int:
    """NumPy convention: counts the batch axis; negative counts from the end."""
    if not is_int(axis):
        raise RuleError(f"{what} must be an integer, got {axis!r}",
                        "pass an int such as -1 (the last axis)")
    axis = int(axis)
    if not -rank <= axis < rank:
        raise RuleError(
            f"{what} {axis} is out of range for a rank-{rank} input",
            f"use an axis in [{-rank}, {rank - 1}] (axes count the batch axis, like NumPy)",
        )
    return axis % rank


def merge_dim(a: int | None, b: int | None) -> int | None:
    """Two sizes that must agree; None agrees with anything."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise ValueError


def broadcast(shapes: Sequence[Shape]) -> Shape:
    """NumPy broadcasting over symbolic shapes. Unknown (None) sizes broadcast with 1
    and with themselves; None against a known n > 1 gives n (checked at run time)."""
    rank = max(len(s) for s in shapes)
    out: list[int | None] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise RuleError(
                "shapes " + " and ".join(fmt_shape(s) for s in shapes)
                + f" do not broadcast (axis {i - rank}: sizes {sorted(known)})",
                "make the sizes equal, or 1 on one side (NumPy broadcasting)",
            )
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def reshape_target(src: Shape, tgt: Shape) -> Shape:
    """The shape ``reshape`` gives an input of shape ``src`` (symbolic or concrete) for the
    target ``tgt``: None keeps the input's size at that axis, one -1 takes the remaining
    size (computed from the axes not kept, so an empty batch is no ambiguity)."""
    for i, d in enumerate(tgt):
        if d is None and i >= len(src):
            raise RuleError(
                f"shape {fmt_shape(tgt)} keeps axis {i} (None) but the input "
                f"{fmt_shape(src)} has rank {len(src)}",
                "None in the target keeps the input's size at the same axis; "
                "use it only for axes the input has")
    out = [src[i] if d is None else d for i, d in enumerate(tgt)]
    kept = [i for i, d in enumerate(tgt) if d is None]
    total = prod([d for i, d in enumerate(src) if i not in kept])
    known = prod([d for i, d in enumerate(out) if i not in kept and d != -1])
    if -1 in out:
        k = out.index(-1)
        if total is None:
            out[k] = None
        elif known == 0 or total % known:
            raise RuleError(f"cannot reshape {fmt_shape(src)} into {fmt_shape(tgt)}",
                            "make the sizes multiply to the same total")
        else:
            out[k] = total // known
    elif total is not None and known != total:
        raise RuleError(
            f"cannot reshape {fmt_shape(src)} into {fmt_shape(tgt)}: "
            f"{total} elements vs {known}",
            "make the sizes multiply to the same total (None keeps an input axis, "
            "-1 infers one size)")
    return tuple(out)


def prod(dims: Sequence[int | None]) -> int | None:
    """Product of sizes, None if any is unknown."""
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def feature_dim(shape: Shape, what: str) -> int:
    """The known size of the last (feature) axis that ``what`` (dense, an adapter) acts on."""
    check_rank(shape, 1, what, "pass a tensor with a feature axis, e.g. shape (None, 16)")
    if shape[-1] is None:
        raise RuleError(f"{what} needs a known last (feature) axis, got {fmt_shape(shape)}",
                        "give the input a fixed feature size, e.g. gd.input('x', (None, 16))")
    return shape[-1]


def check_rank(shape: Shape, lo: int, what: str, fix: str) -> None:
    if len(shape) < lo:
        raise RuleError(f"{what} needs an input of rank >= {lo}, got {fmt_shape(shape)}", fix)


def is_structure(shape: Any) -> bool:
    """Whether ``shape`` is a structure of shapes (a block call of several outputs: a
    tuple or dict of shapes, nested) rather than one tensor's shape."""
    return isinstance(shape, dict) or (isinstance(shape, tuple) and bool(shape) and all(
        isinstance(s, (tuple, dict)) for s in shape))
