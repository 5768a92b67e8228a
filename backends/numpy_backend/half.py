"""Half-precision state values on the NumPy backend: kept as stored (float16, bfloat16),
computed in the plan's float dtype. NumPy has no fast half-precision matmul, so each
kernel call gets its layer's half values upcast (:func:`upcast_fetch`): one layer's
float32 copy lives for one call, never a float32 copy of the whole model (a dense layer's
kernel not even that: :func:`matmul`). Caches that key on a value's identity (DoRA's
norm) key on the stored value (:func:`stored`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.dtypes import HALF, bfloat16_bits_to_float32

#: ops whose kernels take half values themselves: an embedding gathers rows, then upcasts
#: only those; a dense layer upcasts its kernel in column blocks (:func:`matmul`)
TAKES_HALF = frozenset({"embedding", "dense", "tied_dense"})
#: the most elements of a half kernel upcast at once by :func:`matmul` (8 MiB of float32)
BLOCK = 1 << 21


class Upcast(dict):
    """A step's parameters for one kernel call, half values upcast; :attr:`stored` holds
    them as the state stores them."""

    stored: Mapping[str, Any]


def upcast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Half ``a`` as a new ``dtype`` array (same shape and layout). bfloat16 -> float32
    shifts the 16 bits into a float32's high half (exact, and about twice as fast as
    ml_dtypes' cast)."""
    if a.dtype.name == "bfloat16" and dtype == np.float32:
        return bfloat16_bits_to_float32(a.view(np.uint16))
    return a.astype(dtype)


def stored(p: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters ``p`` as stored (before any upcast), by local name."""
    return p.stored if type(p) is Upcast else p


def upcast_fetch(fetch: Callable[[Any, Mapping], Mapping[str, Any]], dtype: np.dtype
                 ) -> Callable[[Any, Mapping], Mapping[str, Any]]:
    """``fetch`` (:func:`..base.state_fetch`) whose result has each float16/bfloat16
    value as a new ``dtype`` array (same shape), for ops outside :data:`TAKES_HALF`."""
    def run(step: Any, data: Mapping) -> Mapping[str, Any]:
        p = fetch(step, data)
        if step.op in TAKES_HALF or not any(v.dtype.name in HALF for v in p.values()):
            return p
        out = Upcast({k: upcast(v, dtype) if v.dtype.name in HALF else v
                      for k, v in p.items()})
        out.stored = p
        return out

    return run


def as_compute(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``y`` in ``dtype`` when it is a half-precision array (any shape), else ``y``."""
    return upcast(y, dtype) if y.dtype.name in HALF else y


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x [M, in] @ w [in, out]`` in ``x``'s dtype for a half-precision ``w``: ``w``
    upcast in blocks of columns (:data:`BLOCK` elements), so a large kernel (an output
    head over the vocabulary) never exists in float32 whole. Returns ``[M, out]``."""
    step = max(1, BLOCK // max(w.shape[0], 1))
    if step >= w.shape[1]:
        return x @ upcast(w, x.dtype)
    y = np.empty((x.shape[0], w.shape[1]), x.dtype)
    for j in range(0, w.shape[1], step):
        np.matmul(x, upcast(w[:, j:j + step], x.dtype), out=y[:, j:j + step])
    return y
