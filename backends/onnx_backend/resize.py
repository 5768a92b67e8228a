"""ONNX rules of Axon's resize and bilinear layers and of the dropouts of
:mod:`graphdsl.ops.dropouts` (opset 13).

resize: per changed spatial axis a ``Gather`` of the nearest indices, or an ``Einsum``
with the constant ``[n_out, n_in]`` weight matrix (:func:`graphdsl.ops.resize.
resize_weights`, float32), the NumPy and torch kernels' weights. bilinear: one ``Einsum``
``x1 K x2`` and the bias. The dropouts export inference, the identity.
"""
from __future__ import annotations

from graphdsl.ops.dropouts import SPATIAL
from graphdsl.ops.resize import nearest_indices, resize_weights, spatial_axes

from .builder import Builder
from .layer import Layer, Rule

_AXES = "abcd"


def _resize(b: Builder, layer: Layer) -> str:
    a, shape, y = layer.attrs, layer.in_shapes[0], layer.ins[0]
    for axis, n_out in zip(spatial_axes(a["channels"]), a["size"]):
        n_in = shape[axis]
        if n_in == n_out:
            continue
        if a["method"] == "nearest":
            y = b.op("Gather", [y, b.ints(nearest_indices(n_in, n_out))], axis=axis)
            continue
        w = b.weight(resize_weights(n_in, n_out, a["method"], a["antialias"]),
                     f"{layer.name}/weights")
        out = _AXES[:axis] + "z" + _AXES[axis + 1:]
        y = b.op("Einsum", [w, y], equation=f"z{_AXES[axis]},{_AXES}->{out}")
    return y


def _bilinear(b: Builder, layer: Layer) -> str:
    x1, x2 = layer.ins
    y = b.op("Einsum", [x1, layer.param("kernel"), x2], equation="...i,uij,...j->...u")
    return b.op("Add", [y, layer.param("bias")]) if "bias" in layer.arrays else y


RESIZE_RULES: dict[str, Rule] = {
    "resize": Rule(_resize), "bilinear": Rule(_bilinear),
    **{op: Rule(lambda b, layer: layer.ins[0]) for op in (*SPATIAL, "alpha_dropout")},
}

__all__ = ["RESIZE_RULES"]
