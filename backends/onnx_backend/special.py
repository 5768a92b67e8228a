"""ONNX rules of Axon's special layers: blur_pool (a grouped Conv with the fixed filter),
mask (Cast, Equal) and cond (Where on the scalar predicate)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from graphdsl.ops.special import BLUR_FILTER
from graphdsl.windows import split_channels

from .builder import Builder
from .conv import from_first, to_first
from .layer import Layer, Rule


def _blur_pool(b: Builder, layer: Layer) -> str:
    ch = layer.attrs["channels"]
    c = split_channels(layer.in_shapes[0], ch, "blur_pool")[0]
    x = to_first(b, b.cast(layer.ins[0], layer.in_dtypes[0], "float32"), 4, ch)
    w = b.const(np.broadcast_to(BLUR_FILTER, (c, 1, 3, 3)))
    y = b.op("Conv", [x, w], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return from_first(b, y, 4, ch)


def _mask(b: Builder, layer: Layer) -> str:
    x = layer.ins[0]  # Cast to int64 truncates a float toward zero, as Axon's as_type
    if layer.in_dtypes[0] != "int64":
        x = b.op("Cast", [x], to=TensorProto.INT64)
    eq = b.op("Equal", [x, b.const(layer.attrs["eos_token"], "int64")])
    return b.op("Cast", [eq], to=TensorProto.INT64)


def _cond(b: Builder, layer: Layer) -> str:
    pred = b.op("Cast", [layer.ins[0]], to=TensorProto.BOOL)
    return b.op("Where", [pred, layer.ins[1], layer.ins[2]])


SPECIAL_RULES: dict[str, Rule] = {"blur_pool": Rule(_blur_pool), "mask": Rule(_mask),
                                  "cond": Rule(_cond)}
