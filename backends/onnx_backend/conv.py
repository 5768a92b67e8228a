"""ONNX rules of the convolutional ops (conv, batch_norm, instance_norm, group_norm; the
pools are :mod:`.pool`), and :func:`conv_nd`, which a merged conv adapter shares.

ONNX's Conv is channels-first (``[N, C, *spatial]``, kernel
``[F, C/groups, *k]``): a channels-last layer is transposed in and out, its HWIO kernel
by a Transpose node on the initializer (ONNX Runtime folds it). The window is graphdsl's
(:func:`graphdsl.windows.window`, as the NumPy kernels use it):

- padding: the ``(lo, hi)`` pairs the window resolves (Conv's ``pads``); "same" is
  Axon's, which does not depend on the input size, so a dynamic (None) size exports
  the same explicit pads (``auto_pad`` is never used: ONNX's SAME_UPPER is TensorFlow's
  rule).
- input dilation (no ONNX operator has it): the zeros are inserted by a depthwise
  ``ConvTranspose`` with stride ``d`` and a 1x1 kernel of ones (size ``(n-1)*d + 1``,
  exact), then the conv runs on the dilated input as XLA's does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphdsl.windows import Window, split_channels, window

from .builder import Builder
from .layer import Layer, Rule, along, normalized


def to_first(b: Builder, x: str, rank: int, channels: str) -> str:
    """``[N, *S, C]`` -> ``[N, C, *S]`` (channels "last"; "first" is as it is)."""
    if channels == "first":
        return x
    return b.op("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)])


def from_first(b: Builder, y: str, rank: int, channels: str) -> str:
    """The inverse of :func:`to_first`."""
    if channels == "first":
        return y
    return b.op("Transpose", [y], perm=[0, *range(2, rank), 1])


def _dilated(b: Builder, x: str, c: int, w: Window) -> str:
    """Channels-first ``x`` with ``d - 1`` zeros between elements on each spatial axis."""
    if all(d == 1 for d in w.input_dilation):
        return x
    n = len(w.kernel)
    ones = b.const(np.ones((c, 1, *(1,) * n), np.float32))
    return b.op("ConvTranspose", [x, ones], group=c, strides=list(w.input_dilation),
                kernel_shape=[1] * n)


def conv_nd(b: Builder, x: str, in_shape: tuple, a: Mapping[str, Any], kernel: str,
            bias: str | None) -> str:
    """``conv(x, kernel) + bias`` for a conv layer's attributes ``a``:
    ``x`` as graphdsl lays it out (``[N, *S, C]`` or channels first), ``kernel`` an
    initializer in graphdsl's layout for ``a["channels"]``, ``bias [F]`` or None."""
    ch, rank = a["channels"], len(in_shape)
    c, spatial, _ = split_channels(in_shape, ch, "conv")
    w = window(spatial, a["kernel_size"], a)
    n = len(w.kernel)
    xf = _dilated(b, to_first(b, x, rank, ch), c, w)
    opts: dict[str, Any] = {}
    if any(lo or hi for lo, hi in w.pads):
        opts["pads"] = [lo for lo, _ in w.pads] + [hi for _, hi in w.pads]
    if ch == "last":  # HWIO [*k, C/g, F] -> [F, C/g, *k]
        kernel = b.op("Transpose", [kernel], perm=[n + 1, n, *range(n)])
    y = b.op("Conv", [xf, kernel] + ([bias] if bias else []), kernel_shape=list(w.kernel),
             strides=list(w.strides), dilations=list(w.kernel_dilation),
             group=a["feature_group_size"], **opts)
    return from_first(b, y, rank, ch)


def _conv(b: Builder, layer: Layer) -> str:
    bias = layer.param("bias") if "bias" in layer.arrays else None
    return conv_nd(b, layer.ins[0], layer.in_shapes[0], layer.attrs, layer.param("kernel"),
                   bias)


def _batch_norm(b: Builder, layer: Layer) -> str:
    """Inference: ``x * scale + shift`` with ``scale = gamma / sqrt(var + eps)``, ``shift =
    beta - mean * scale`` from the running statistics (the NumPy kernel's order); the
    four initializers keep their names, and ONNX Runtime folds scale and shift."""
    x, rank = layer.ins[0], len(layer.shape)
    ax = layer.attrs["axis"] % rank
    var = b.op("Add", [layer.param("var"), b.const(layer.attrs["epsilon"])])
    scale = b.op("Div", [layer.param("gamma"), b.op("Sqrt", [var])])
    shift = b.op("Sub", [layer.param("beta"), b.op("Mul", [layer.param("mean"), scale])])
    return b.op("Add", [b.op("Mul", [x, along(b, scale, rank, ax)]),
                        along(b, shift, rank, ax)])


def _group_norm(b: Builder, layer: Layer) -> str:
    """Decomposed (opset 13; GroupNormalization-18 scales per group, 21 per channel): the
    channels split into ``[..., groups, C/groups]``, mean and variance over each group's
    channels and every spatial axis, then ``* gamma + beta`` per channel."""
    x, rank = layer.ins[0], len(layer.shape)
    ax = layer.attrs["axis"] % rank
    c, g = layer.shape[ax], layer.attrs["num_groups"]
    if ax not in (1, rank - 1):  # the channels last, and back at the end
        perm = [i for i in range(rank) if i != ax] + [ax]
        x = b.op("Transpose", [x], perm=perm)
    last = ax != 1 or rank == 2
    # channels last: [N, S, g, C/g] over (1, 3); channel axis 1: [N, g, C/g * S] over (2,),
    # S the positions (not -1, which ONNX cannot infer for an empty batch)
    spatial = [layer.shape[i] for i in range(1, rank) if i != ax]
    if None not in spatial:
        n_pos: int | str = math.prod(spatial) * (1 if last else c // g)
    else:
        per_sample = b.reduce("ReduceProd", b.slice(b.op("Shape", [x]), 1, None, 0), [0])
        n_pos = b.op("Div", [per_sample, b.ints([c if last else g])])
    target, axes = ([0, n_pos, g, c // g], [1, 3]) if last else ([0, g, n_pos], [2])
    xg = b.reshape(x, target)
    y = b.op("Reshape", [normalized(b, xg, axes, layer.attrs["epsilon"]),
                         b.op("Shape", [x])])
    ch_axis = rank - 1 if last else 1
    y = b.op("Add", [b.op("Mul", [y, along(b, layer.param("gamma"), rank, ch_axis)]),
                     along(b, layer.param("beta"), rank, ch_axis)])
    if ax not in (1, rank - 1):
        y = b.op("Transpose", [y], perm=[int(i) for i in np.argsort(perm)])
    return y


CONV_RULES: dict[str, Rule] = {
    "conv": Rule(_conv),
    "batch_norm": Rule(_batch_norm),
    "instance_norm": Rule(_batch_norm),  # inference uses the running statistics, as batch_norm
    "group_norm": Rule(_group_norm),
}

__all__ = ["CONV_RULES", "conv_nd", "from_first", "to_first"]
