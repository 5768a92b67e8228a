"""Kernels of spatial_dropout, alpha_dropout and feature_alpha_dropout written once for
NumPy and torch (``ctx.xp``): each backend gives :func:`kernels` its mask draw,
``mask(shape, rate, params, ctx, x) -> (keep, state updates)`` (a boolean array of the
noise shape, True = kept), the one gd.dropout uses, and the formulas here map
``x`` and the broadcast mask (see :mod:`graphdsl.ops.dropouts`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from graphdsl.ops.dropouts import SELU_ALPHA, SELU_SCALE, noise_shape

from .base import KernelContext, with_updates

ALPHA_P = -SELU_ALPHA * SELU_SCALE


def alpha_affine(rate: float) -> tuple[float, float]:
    """``(a, b)`` of alpha dropout at ``rate``: kept ``a*x + b``, dropped ``a*alpha' +
    b`` (the paper's constants, torch's)."""
    q = 1.0 - rate
    a = 1.0 / math.sqrt(q + ALPHA_P**2 * q * (1.0 - q))
    return a, -a * (1.0 - q) * ALPHA_P


def _spatial(x: Any, keep: Any, rate: float, xp: Any) -> Any:
    return xp.where(keep, x / (1.0 - rate), 0.0 * x)


def _alpha(x: Any, keep: Any, rate: float, xp: Any) -> Any:
    a, b = alpha_affine(rate)
    return xp.where(keep, x * a + b, 0.0 * x + (a * ALPHA_P + b))


def _feature_alpha(x: Any, keep: Any, rate: float, xp: Any) -> Any:
    neg = xp.where(x > 0, 0.0 * x, x)  # selu(x) = scale * (x if x > 0 else alpha*expm1(x))
    selu = SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(neg))
    return xp.where(keep, x / (1.0 - rate), -selu)


FORMULAS = {"spatial_dropout": _spatial, "alpha_dropout": _alpha,
            "feature_alpha_dropout": _feature_alpha}


def kernels(mask: Callable) -> dict[str, Callable]:
    """The three ops' kernels, their masks drawn by ``mask`` (see the module)."""
    def kernel(op: str) -> Callable:
        def run(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
            x = ins[0]
            if not ctx.training or a["rate"] == 0.0:
                return x
            keep, updates = mask(noise_shape(tuple(x.shape), op, a.get("channels", "last")),
                                 a["rate"], p, ctx, x)
            return with_updates(FORMULAS[op](x, keep, a["rate"], ctx.xp), updates)

        return run

    return {op: kernel(op) for op in FORMULAS}
