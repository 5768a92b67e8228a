"""Kernels of Axon's special layers written once for NumPy and torch (``ctx.xp``): mask
and cond. blur_pool's kernels run each backend's conv (``numpy_backend/special.py``,
``torch_backend/special.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graphdsl.errors import RuleError

from .base import KernelContext


def mask(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """1 where x (truncated toward zero, as Axon's as_type to s64) equals ``eos_token``,
    else 0: int64 of x's shape."""
    x = ins[0]
    if "float" in str(x.dtype):
        x = ctx.xp.trunc(x)
    return ctx.xp.where(x == a["eos_token"], 1, 0)


def cond(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """on_true where the scalar predicate is nonzero, else on_false (both one shape,
    checked: the shape rule cannot see two unknown sizes differ)."""
    pred, on_true, on_false = ins
    if pred.ndim != 0:
        raise RuleError(f"cond_fn must return a scalar, got an array of shape "
                        f"{tuple(pred.shape)}", "reduce the condition to one value, e.g. "
                        "xp.all(x)")
    if tuple(on_true.shape) != tuple(on_false.shape):  # where would broadcast a size 1
        raise RuleError(f"cond's branches must have the same shape, got "
                        f"{tuple(on_true.shape)} and {tuple(on_false.shape)}",
                        "feed inputs that give both graphs one output shape")
    return ctx.xp.where(pred != 0, on_true, on_false)


KERNELS: dict[str, Callable] = {"mask": mask, "cond": cond}
