"""Kernels of Axon's resize and bilinear layers written once for NumPy and torch
(``ctx.xp``): resize indexes (nearest) or multiplies each changed spatial axis by the
weight matrix of :func:`graphdsl.ops.resize.resize_weights` (einsum); bilinear is one
einsum and a product summed over the second input's features.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.errors import RuleError
from graphdsl.ops.resize import nearest_indices, resize_weights, spatial_axes

from .base import KernelContext

_AXES = "abcd"


def resize(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """Rank-4 ``x`` resized on its spatial axes to ``a["size"]``; dtype kept (floats; ints
    are resized in the compute dtype by the weighted methods)."""
    x, xp = ins[0], ctx.xp
    for axis, n_out in zip(spatial_axes(a["channels"]), a["size"]):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue  # Axon leaves an axis of the requested size as it is
        if a["method"] == "nearest":
            x = x[(slice(None),) * axis + (list(nearest_indices(n_in, n_out)),)]
            continue
        if "float" not in str(x.dtype):
            x = xp.asarray(x, dtype=ctx.dtype)
        w = xp.asarray(resize_weights(n_in, n_out, a["method"], a["antialias"]),
                       dtype=x.dtype)
        if not isinstance(x, np.ndarray):  # a torch tensor: the weights on its device
            w = w.to(x.device)
        out = _AXES[:axis] + "z" + _AXES[axis + 1:]
        x = xp.einsum(f"z{_AXES[axis]},{_AXES}->{out}", w, x)
    return x


def bilinear(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """``(..., in1)``, ``(..., in2)`` -> ``(..., units)``: ``x1 K x2 + b``, K ``[units,
    in1, in2]``."""
    x1, x2 = ins
    if tuple(x1.shape[:-1]) != tuple(x2.shape[:-1]):  # None sizes the rule could not check
        raise RuleError(f"bilinear's inputs must agree on every axis but the last, got "
                        f"{tuple(x1.shape)} and {tuple(x2.shape)}",
                        "feed inputs with the same leading sizes")
    y = (ctx.xp.einsum("...i,uij->...uj", x1, p["kernel"]) * x2[..., None, :]).sum(-1)
    return y + p["bias"] if "bias" in p else y


KERNELS: dict[str, Callable] = {"resize": resize, "bilinear": bilinear}
