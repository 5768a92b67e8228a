"""ONNX rules of the pooling ops (max_pool, avg_pool, global_avg_pool, global_max_pool).

ONNX's MaxPool / AveragePool are channels-first: a channels-last layer is transposed in
and out (:func:`.conv.to_first`). The window is graphdsl's
(:func:`graphdsl.windows.window`); pools always pad with a ``Pad`` node (``-inf`` for
max, zeros for avg, which the mean then counts, as the NumPy kernel and Axon's
``window_mean`` do): ONNX Runtime's pools reject pads as wide as the window, which
avg_pool allows.
"""
from __future__ import annotations

import numpy as np

from graphdsl.windows import Window, split_channels, window

from .builder import Builder
from .conv import from_first, to_first
from .layer import Layer, Rule


def _padded(b: Builder, x: str, w: Window, rank: int, fill: float) -> str:
    """Channels-first ``x`` padded as ``w`` says with ``fill`` (a Pad node, or ``x``)."""
    if not any(lo or hi for lo, hi in w.pads):
        return x
    pads = b.ints([0, 0, *(lo for lo, _ in w.pads), 0, 0, *(hi for _, hi in w.pads)])
    return b.op("Pad", [x, pads, b.const(fill)], mode="constant")


def _pool(op_type: str, fill: float) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        a, shape = layer.attrs, layer.in_shapes[0]
        rank = len(shape)
        _, spatial, _ = split_channels(shape, a["channels"], layer.op)
        w = window(spatial, a["kernel_size"], a)
        x = b.cast(layer.ins[0], layer.in_dtypes[0], "float32")
        xf = _padded(b, to_first(b, x, rank, a["channels"]), w, rank, fill)
        y = b.op(op_type, [xf], kernel_shape=list(w.kernel), strides=list(w.strides))
        return from_first(b, y, rank, a["channels"])

    return Rule(fn)


def _global(op_type: str) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        rank = len(layer.in_shapes[0])
        axes = range(1, rank - 1) if layer.attrs["channels"] == "last" else range(2, rank)
        x = b.cast(layer.ins[0], layer.in_dtypes[0], "float32")
        y = b.reduce(op_type, x, list(axes), keepdims=int(layer.attrs["keep_axes"]))
        if all(layer.in_shapes[0][i] for i in axes):
            return y
        # 0 positions: refused at run time, as every backend refuses them
        n = b.reduce("ReduceProd", b.op("Gather", [b.op("Shape", [x]), b.ints(axes)]), [0])
        return b.refuse(y, b.op("Equal", [n, b.ints([0])]))

    return Rule(fn)


POOL_RULES: dict[str, Rule] = {
    "max_pool": _pool("MaxPool", -np.inf),
    "avg_pool": _pool("AveragePool", 0.0),
    "global_avg_pool": _global("ReduceMean"),
    "global_max_pool": _global("ReduceMax"),
}

__all__ = ["POOL_RULES"]
