"""The NumPy kernel of ``cache_append``: a key/value cache that grows in place.

Each result is a prefix view of a buffer with spare room on the cache axis; the buffer
records how many entries are filled. When the ``past`` of a call is such a view and
covers exactly the filled entries (it is the latest result, as in a decode loop), the new
entries are written after it and a longer view is returned: nothing any caller holds
changes, since earlier views end before the written entries. Any other ``past`` is copied
once into a fresh buffer of twice the needed size, so n steps copy O(n) entries in all.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphdsl.shapes import normalize_axis

from ..base import KernelContext

_FILLED: dict[int, tuple[weakref.ref, int]] = {}  # id(buffer) -> (its ref, entries filled)
_LOCK = threading.Lock()


def _fresh(past: np.ndarray, total: int, axis: int, dtype: np.dtype) -> np.ndarray:
    shape = list(past.shape)
    shape[axis] = max(2 * total, 16)
    buf = np.empty(shape, dtype)
    buf[(slice(None),) * axis + (slice(0, past.shape[axis]),)] = past
    key = id(buf)
    _FILLED[key] = (weakref.ref(buf, lambda _r, k=key: _FILLED.pop(k, None)), 0)
    return buf


def _growable(past: np.ndarray, buf: Any, axis: int, n: int, dtype: np.dtype) -> bool:
    """``past`` is the filled prefix of the buffer ``buf`` with room for ``n`` more."""
    entry = _FILLED.get(id(buf)) if isinstance(buf, np.ndarray) else None
    return (entry is not None and entry[0]() is buf and entry[1] == past.shape[axis]
            and buf.dtype == dtype and buf.shape[axis] >= past.shape[axis] + n
            and past.shape == buf.shape[:axis] + past.shape[axis:axis + 1]
            + buf.shape[axis + 1:] and past.strides == buf.strides
            and past.__array_interface__["data"][0] == buf.__array_interface__["data"][0])


def cache_append(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    """``concatenate([past, new], axis)`` as a view of a growing buffer (module docstring)."""
    past, new = ins
    axis = normalize_axis(a["axis"], past.ndim)
    dtype = np.result_type(past, new) if past.dtype.kind in "iu" and new.dtype.kind in "iu" \
        else ctx.dtype
    n0, n = past.shape[axis], new.shape[axis]
    lead = (slice(None),) * axis
    with _LOCK:
        buf = past.base
        if not _growable(past, buf, axis, n, dtype):
            buf = _fresh(past, n0 + n, axis, dtype)
        _FILLED[id(buf)] = (_FILLED[id(buf)][0], n0 + n)
    buf[lead + (slice(n0, n0 + n),)] = new
    return buf[lead + (slice(0, n0 + n),)]


KERNELS = {"cache_append": cache_append}
