"""ONNX rules of Axon's conv variants (opset 13): conv_transpose as ``ConvTranspose``,
depthwise_conv and separable_conv2d/3d as chained grouped ``Conv`` nodes (:func:`conv_nd`).

ConvTranspose computes Axon's conv_transpose with the kernel flipped spatially as ``[C, F,
*k]`` (a Transpose and a ``Slice`` with step -1 on the initializer, which ONNX Runtime
folds). Its ``pads`` crop the full output, which is Axon's pads of ``k'-1`` (``k' =
(k-1)*dilation + 1``) on each side: Axon's smaller pads are crops, and wider ones (explicit
padding only) a zero ``Pad`` after it, the bias added after that as Axon adds it.
"""
from __future__ import annotations

from graphdsl.ops.conv_variants import conv_stages, transpose_window
from graphdsl.windows import join_channels, split_channels, window

from .builder import Builder
from .conv import conv_nd, from_first, to_first
from .layer import Layer, Rule, along

_INT64_MIN = -(2**63)


def _flipped(b: Builder, kernel: str, n: int, channels: str) -> str:
    """The stored conv_transpose kernel as ConvTranspose's weight ``[C, F, *k]``, flipped."""
    perm = [n, n + 1, *range(n)] if channels == "last" else [1, 0, *range(2, n + 2)]
    w = b.op("Transpose", [kernel], perm=perm)
    axes = list(range(2, n + 2))
    return b.op("Slice", [w, b.ints([-1] * n), b.ints([_INT64_MIN] * n), b.ints(axes),
                          b.ints([-1] * n)])


def _conv_transpose(b: Builder, layer: Layer) -> str:
    a, shape = layer.attrs, layer.in_shapes[0]
    ch, rank = a["channels"], len(shape)
    _, spatial, _ = split_channels(shape, ch, "conv_transpose")
    w = transpose_window(spatial, a)
    n = len(w.kernel)
    full = [(k - 1) * d for k, d in zip(w.kernel, w.kernel_dilation)]  # k' - 1
    crop = [(max(0, f - lo), max(0, f - hi)) for f, (lo, hi) in zip(full, w.pads)]
    extra = [(max(0, lo - f), max(0, hi - f)) for f, (lo, hi) in zip(full, w.pads)]
    bias = layer.param("bias") if "bias" in layer.arrays else None
    wide = any(lo or hi for lo, hi in extra)
    ins = [to_first(b, layer.ins[0], rank, ch), _flipped(b, layer.param("kernel"), n, ch)]
    y = b.op("ConvTranspose", ins + ([bias] if bias and not wide else []),
             kernel_shape=list(w.kernel), strides=list(w.input_dilation),
             dilations=list(w.kernel_dilation),
             pads=[lo for lo, _ in crop] + [hi for _, hi in crop])
    if wide:
        pads = b.ints([0, 0, *(lo for lo, _ in extra), 0, 0, *(hi for _, hi in extra)])
        y = b.op("Pad", [y, pads, b.const(0.0)], mode="constant")
        if bias:
            y = b.op("Add", [y, along(b, bias, rank, 1)])
    return from_first(b, y, rank, ch)


def _depthwise(op: str) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        shape, ch = layer.in_shapes[0], layer.attrs["channels"]
        y = layer.ins[0]
        for st, k_name, b_name in conv_stages(op, shape, layer.attrs):
            bias = layer.param(b_name) if b_name in layer.arrays else None
            y = conv_nd(b, y, shape, st, layer.param(k_name), bias)
            _, spatial, batch = split_channels(shape, ch, op)
            shape = join_channels(batch, window(spatial, st["kernel_size"], st).out,
                                  st["filters"], ch)
        return y

    return Rule(fn)


VARIANT_RULES: dict[str, Rule] = {
    "conv_transpose": Rule(_conv_transpose),
    "depthwise_conv": _depthwise("depthwise_conv"),
    "separable_conv2d": _depthwise("separable_conv2d"),
    "separable_conv3d": _depthwise("separable_conv3d"),
}

__all__ = ["VARIANT_RULES"]
