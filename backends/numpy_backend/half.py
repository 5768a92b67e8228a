"""Half-precision state values on the NumPy backend: kept as stored (float16, bfloat16),
computed in the plan's float dtype. NumPy has no fast half-precision matmul, so each
kernel call gets its layer's half values upcast (:func:`upcast_fetch`): one layer's
float32 copy lives for one call, never a float32 copy of the whole model. Caches that key
on a value's identity (a merged adapter kernel) key on the stored value (:func:`stored`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.dtypes import HALF

#: ops whose kernels take half values themselves (an embedding gathers rows, then
#: upcasts only those)
TAKES_HALF = frozenset({"embedding"})


class Upcast(dict):
    """A step's parameters for one kernel call, half values upcast; :attr:`stored` holds
    them as the state stores them."""

    stored: Mapping[str, Any]


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
        out = Upcast({k: v.astype(dtype) if v.dtype.name in HALF else v
                      for k, v in p.items()})
        out.stored = p
        return out

    return run


def as_compute(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``y`` in ``dtype`` when it is a half-precision array (any shape), else ``y``."""
    return y.astype(dtype) if y.dtype.name in HALF else y
