"""What an ONNX rule works with: the :class:`Layer` it lowers, the :class:`Rule` record,
and the lowerings several rule modules share (activations, ``affine``, ``along``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphdsl.node import Node

from .builder import Builder

#: the lowest opset an export uses: Softmax over one axis, Squeeze/Unsqueeze/ReduceSum
#: with axes as inputs, and the int64 Range/Slice forms all need 13
FLOOR = 13


@dataclass
class Layer:
    """One graphdsl layer as a rule sees it (shapes as graphdsl infers them: None = a
    size known only at run time)."""

    name: str
    op: str
    node: Node | None
    ins: list[Any]  # input tensor names (None: an optional input left out)
    in_shapes: list[Any]
    in_dtypes: list[str]
    attrs: Mapping[str, Any]
    shape: Any
    dtype: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)  # params by local name
    param: Callable[[str], str] = lambda local: local  # local name -> initializer name


@dataclass(frozen=True)
class Rule:
    fn: Callable[[Builder, Layer], Any]
    min_opset: int = FLOOR


# -- activations -----------------------------------------------------------------------------
def _gelu(b: Builder, x: str, a: Mapping[str, Any]) -> str:
    approx = a["approximate"]
    if b.opset >= 20:
        return b.op("Gelu", [x], approximate="tanh" if approx else "none")
    if approx:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", [b.op("Mul", [x, x]), x])
        inner = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715)])])
        t = b.op("Tanh", [b.op("Mul", [inner, b.const(math.sqrt(2.0 / math.pi))])])
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        t = b.op("Erf", [b.op("Mul", [x, b.const(1.0 / math.sqrt(2.0))])])
    return b.op("Mul", [b.op("Mul", [x, b.const(0.5)]), b.op("Add", [t, b.const(1.0)])])


def _clip(b: Builder, x: str, lo: float, hi: float) -> str:
    return b.op("Clip", [x, b.const(lo), b.const(hi)])


def _softplus(b: Builder, x: str) -> str:
    return b.op("Softplus", [x])


# ops of opset 13 only (an export's floor): Mish (18) and HardSwish (14) are composed
ACTIVATIONS: dict[str, Callable[[Builder, str, Mapping[str, Any]], str]] = {
    "relu": lambda b, x, a: b.op("Relu", [x]),
    "gelu": _gelu,
    "sigmoid": lambda b, x, a: b.op("Sigmoid", [x]),
    "tanh": lambda b, x, a: b.op("Tanh", [x]),
    "softmax": lambda b, x, a: b.op("Softmax", [x], axis=a["axis"]),
    "log_softmax": lambda b, x, a: b.op("LogSoftmax", [x], axis=a["axis"]),
    "silu": lambda b, x, a: b.op("Mul", [x, b.op("Sigmoid", [x])]),
    "elu": lambda b, x, a: b.op("Elu", [x], alpha=a["alpha"]),
    "leaky_relu": lambda b, x, a: b.op("LeakyRelu", [x], alpha=a["alpha"]),
    "softplus": lambda b, x, a: _softplus(b, x),
    "celu": lambda b, x, a: b.op("Celu", [x], alpha=a["alpha"]),
    "exp": lambda b, x, a: b.op("Exp", [x]),
    "hard_sigmoid": lambda b, x, a: b.op("HardSigmoid", [x], alpha=a["alpha"], beta=a["beta"]),
    "hard_silu": lambda b, x, a: b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=a["alpha"],
                                                      beta=a["beta"])]),
    "hard_tanh": lambda b, x, a: _clip(b, x, -1.0, 1.0),
    "linear": lambda b, x, a: b.op("Identity", [x]),
    "log_sigmoid": lambda b, x, a: b.op("Neg", [_softplus(b, b.op("Neg", [x]))]),
    "log_sumexp": lambda b, x, a: b.reduce("ReduceLogSumExp", x, [a["axis"]]),
    "mish": lambda b, x, a: b.op("Mul", [x, b.op("Tanh", [_softplus(b, x)])]),
    "relu6": lambda b, x, a: _clip(b, x, 0.0, 6.0),
    "selu": lambda b, x, a: b.op("Selu", [x], alpha=a["alpha"], gamma=a["gamma"]),
    "softsign": lambda b, x, a: b.op("Softsign", [x]),
}


def affine(b: Builder, x: str, kernel: str, bias: str | None) -> str:
    """``x @ kernel + bias`` on the last axis (dense, tied_dense, merged adapters)."""
    y = b.op("MatMul", [x, kernel])
    if bias is not None:
        y = b.op("Add", [y, bias])
    return y


def gather_rows(b: Builder, table: str, ids: str, vocab: int, ids_dtype: str) -> str:
    """Rows of ``table [vocab, d]`` at integer ``ids (...)`` -> ``(..., d)``. Gather wraps
    ids in [-vocab, 0) to the last rows; a negative id is moved below -vocab first, so
    ONNX Runtime refuses it ("indices element out of data bounds", the id shown minus
    vocab) as it refuses an id >= vocab, where NumPy and torch raise a GraphDSLError."""
    below = b.op("Sub", [ids, b.const(vocab, ids_dtype)])  # int64 min wraps high: refused too
    ids = b.op("Where", [b.op("Less", [ids, b.const(0, ids_dtype)]), below, ids])
    return b.op("Gather", [table, ids], axis=0)


def normalized(b: Builder, x: str, axes: list[int], eps: float) -> str:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (the NumPy kernels' order)."""
    xc = b.op("Sub", [x, b.reduce("ReduceMean", x, axes)])
    var = b.reduce("ReduceMean", b.op("Mul", [xc, xc]), axes)
    return b.op("Div", [xc, b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])])


def along(b: Builder, v: str, rank: int, axis: int) -> str:
    """A vector ``v`` reshaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if axis == rank - 1:
        return v
    return b.op("Reshape", [v, b.ints([-1] + [1] * (rank - 1 - axis))])


__all__ = ["ACTIVATIONS", "FLOOR", "Layer", "Rule", "affine", "along", "gather_rows",
           "normalized"]
