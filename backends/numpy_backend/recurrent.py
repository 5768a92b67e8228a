"""NumPy kernels of Axon's recurrent layers: the shared loops (:mod:`..recurrent`) with
NumPy's activations, and conv_lstm's convs run by :func:`.conv.conv_forward`. The input
projections of all steps are one GEMM (one conv for conv_lstm); each step adds one
``h @ hidden_kernel``."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.ops.nn import ACTIVATIONS as OPTIONS
from graphdsl.windows import kernel_hwio

from .. import recurrent
from .conv import conv_forward, from_last, to_last
from .kernels import ACTIVATIONS

_ACTS = {name: (lambda f, o: lambda y: f(y, o))(fn, OPTIONS[name])
         for name, fn in ACTIVATIONS.items()}


def _zeros(shape: tuple, like: np.ndarray) -> np.ndarray:
    return np.zeros(shape, like.dtype if like.dtype.kind == "f" else np.float32)


def _conv(x: np.ndarray, K: np.ndarray, b: np.ndarray | None, a: Mapping) -> np.ndarray:
    """Axon's channels-first conv of ``x [N, C, *S]`` with ``K [F, C, *k]`` (+ bias)."""
    y = conv_forward(to_last(x, "first"), kernel_hwio(K, "first"), a)
    return from_last(y if b is None else y + b, "first")


KERNELS: dict[str, Callable[..., Any]] = {
    "lstm": recurrent.rnn_kernel("lstm", _ACTS, _zeros),
    "gru": recurrent.rnn_kernel("gru", _ACTS, _zeros),
    "conv_lstm": recurrent.conv_lstm_kernel(_conv, _ACTS["sigmoid"], _ACTS["tanh"], _zeros),
    "reverse": recurrent.reverse,
    "recurrent_state": recurrent.state_kernel(lambda y, x, ctx: y.astype(ctx.dtype)),
}
