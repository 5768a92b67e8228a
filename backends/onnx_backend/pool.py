"""ONNX rules of the pooling ops (max, avg and lp pools, their adaptive forms, the
global pools), all at opset 13.

ONNX's pools are channels-first: a channels-last layer is transposed in and out
(:func:`.conv.to_first`). The window is :func:`graphdsl.ops.pool.pool_window`'s, as the
NumPy kernels use it; an adaptive pool's depends on the input's sizes, so it exports
over known spatial sizes only. Pools always pad with a ``Pad`` node (``-inf`` for max,
zeros for avg and lp, which the mean then counts, as the NumPy kernel and Axon's
``window_mean`` do): ONNX Runtime's pools reject pads as wide as the window, which
avg_pool allows.

- max: ``MaxPool`` (with ``dilations``).
- avg: ``AveragePool``; with dilations (AveragePool has them only from opset 19) the
  window sum is a ``Conv`` with a window of ones over the channels folded into the
  batch, divided by the taps.
- lp: ``LpPool`` for an even integer norm without dilations (LpPool takes ``|x|``, the
  same there; Axon takes no abs); else ``Pow``, the window sum, ``Pow(1/norm)``, with
  the run refused where that is NaN (the rule of :func:`..shared.lp_power` and
  :func:`..shared.lp_root`).
- global: ``ReduceMean`` / ``ReduceMax``; lp: ``GlobalLpPool`` (even norm) or
  ``ReduceSum`` of the powers.
"""
from __future__ import annotations

import math

import numpy as np

from graphdsl.errors import GraphDSLError
from graphdsl.ops.pool import ADAPTIVE, pool_window
from graphdsl.windows import Window, split_channels

from .builder import Builder
from .conv import from_first, to_first
from .layer import Layer, Rule


def _padded(b: Builder, x: str, w: Window, rank: int, fill: float) -> str:
    """Channels-first ``x`` padded as ``w`` says with ``fill`` (a Pad node, or ``x``)."""
    if not any(lo or hi for lo, hi in w.pads):
        return x
    pads = b.ints([0, 0, *(lo for lo, _ in w.pads), 0, 0, *(hi for _, hi in w.pads)])
    return b.op("Pad", [x, pads, b.const(fill)], mode="constant")


def _window(layer: Layer) -> Window:
    a, shape = layer.attrs, layer.in_shapes[0]
    _, spatial, _ = split_channels(shape, a["channels"], layer.op)
    if layer.op in ADAPTIVE and a["output_size"] is not None and None in spatial:
        raise GraphDSLError(
            f"{layer.op} exports to ONNX only over known spatial sizes (its window depends "
            f"on them; input {tuple(shape)})", layer=layer.name, op=layer.op,
            fix="declare the spatial sizes in the input's shape, e.g. (None, 28, 28, 3)",
            where=layer.node.where if layer.node else None)
    return pool_window(spatial, a, layer.op)


def _window_sum(b: Builder, xf: str, w: Window) -> str:
    """The sum of each window of padded channels-first ``xf``."""
    taps = math.prod(w.kernel)
    if w.trivial_dilation:
        y = b.op("AveragePool", [xf], kernel_shape=list(w.kernel), strides=list(w.strides))
        return b.op("Mul", [y, b.const(float(taps))])
    shape = b.op("Shape", [xf])
    nc = b.reduce("ReduceProd", b.slice(shape, 0, 2, 0), [0])
    flat = b.reshape(xf, [nc, 1, b.slice(shape, 2, None, 0)])
    ones = b.const(np.ones((1, 1, *w.kernel), np.float32))
    y = b.op("Conv", [flat, ones], kernel_shape=list(w.kernel), strides=list(w.strides),
             dilations=list(w.kernel_dilation))
    return b.reshape(y, [b.slice(shape, 0, 2, 0), b.slice(b.op("Shape", [y]), 2, None, 0)])


def _lp_root(b: Builder, x: str, sums: str, norm: float) -> str:
    """``sums ** (1/norm)`` of the powers of ``x``, the run refused where the NumPy and
    torch kernels refuse it: a negative ``x`` with a fractional norm, a negative sum with
    an odd one above 1."""
    if norm % 2 and norm != 1:
        v = sums if norm == int(norm) else x
        flat = b.op("Concat", [b.op("Flatten", [v], axis=0), b.const([[0.0]])], axis=1)
        low = b.op("ReduceMin", [flat], keepdims=0)  # with a 0: an empty v has a min too
        sums = b.refuse(sums, b.op("Less", [low, b.const(0.0)]))
    return b.op("Pow", [sums, b.const(1.0 / norm)])


def _pool(kind: str) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        a, rank = layer.attrs, len(layer.in_shapes[0])
        w = _window(layer)
        x = to_first(b, b.cast(layer.ins[0], layer.in_dtypes[0], "float32"), rank,
                     a["channels"])
        opts = {"kernel_shape": list(w.kernel), "strides": list(w.strides)}
        if kind == "max":
            if not w.trivial_dilation:
                opts["dilations"] = list(w.kernel_dilation)
            y = b.op("MaxPool", [_padded(b, x, w, rank, -np.inf)], **opts)
        elif kind == "avg" and w.trivial_dilation:
            y = b.op("AveragePool", [_padded(b, x, w, rank, 0.0)], **opts)
        elif kind == "avg":
            y = b.op("Div", [_window_sum(b, _padded(b, x, w, rank, 0.0), w),
                             b.const(float(math.prod(w.kernel)))])
        elif a["norm"] % 2 == 0 and w.trivial_dilation:
            y = b.op("LpPool", [_padded(b, x, w, rank, 0.0)], p=int(a["norm"]), **opts)
        else:
            xn = b.op("Pow", [x, b.const(a["norm"])])
            y = _lp_root(b, x, _window_sum(b, _padded(b, xn, w, rank, 0.0), w), a["norm"])
        return from_first(b, y, rank, a["channels"])

    return Rule(fn)


def _spatial_axes(layer: Layer) -> list[int]:
    rank = len(layer.in_shapes[0])
    return list(range(1, rank - 1) if layer.attrs["channels"] == "last" else range(2, rank))


def _global(op_type: str) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        axes = _spatial_axes(layer)
        x = b.cast(layer.ins[0], layer.in_dtypes[0], "float32")
        y = b.reduce(op_type, x, axes, keepdims=int(layer.attrs["keep_axes"]))
        if all(layer.in_shapes[0][i] for i in axes):
            return y
        # 0 positions: refused at run time, as every backend refuses them
        n = b.reduce("ReduceProd", b.op("Gather", [b.op("Shape", [x]), b.ints(axes)]), [0])
        return b.refuse(y, b.op("Equal", [n, b.ints([0])]))

    return Rule(fn)


def _global_lp(b: Builder, layer: Layer) -> str:
    a, rank, axes = layer.attrs, len(layer.in_shapes[0]), _spatial_axes(layer)
    x = b.cast(layer.ins[0], layer.in_dtypes[0], "float32")
    keep = int(a["keep_axes"])
    if a["norm"] % 2 == 0:
        y = b.op("GlobalLpPool", [to_first(b, x, rank, a["channels"])], p=int(a["norm"]))
        if keep:
            return from_first(b, y, rank, a["channels"])
        return b.op("Squeeze", [y, b.ints(range(2, rank))])
    s = b.reduce("ReduceSum", b.op("Pow", [x, b.const(a["norm"])]), axes, keepdims=keep)
    return _lp_root(b, x, s, a["norm"])


POOL_RULES: dict[str, Rule] = {
    "max_pool": _pool("max"),
    "avg_pool": _pool("avg"),
    "lp_pool": _pool("lp"),
    "adaptive_max_pool": _pool("max"),
    "adaptive_avg_pool": _pool("avg"),
    "adaptive_lp_pool": _pool("lp"),
    "global_avg_pool": _global("ReduceMean"),
    "global_max_pool": _global("ReduceMax"),
    "global_lp_pool": Rule(_global_lp),
}

__all__ = ["POOL_RULES"]
