"""NumPy kernels of the pooling ops (max, avg and lp pools, their adaptive forms, the
global pools).

Work happens channels-last (``[N, *spatial, C]``; channels-first inputs are viewed that
way), on the padded input of :func:`.conv.padded`, over the window of
:func:`graphdsl.ops.pool.pool_window`. A window of few taps is reduced one strided view
per tap, in place; a large one (an adaptive pool's) in one reduction over the strided
windows view; never a loop over output pixels.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.ops.pool import pool_window
from graphdsl.windows import Window

from .. import shared
from ..base import KernelContext
from .conv import from_last, padded, to_last, windows_view

_MANY_TAPS = 64  # from here one reduction over the windows view beats a loop over taps


def _taps(xp: np.ndarray, w: Window) -> Any:
    """Each kernel tap's strided view ``[N, *out, C]`` of padded ``xp``."""
    for offs in itertools.product(*(range(k) for k in w.kernel)):
        yield xp[(slice(None), *(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in
                                 zip(offs, w.kernel_dilation, w.strides, w.out)), slice(None))]


def window_reduce(xp: np.ndarray, w: Window, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` (np.add, np.maximum) over each window of padded channels-last ``xp``:
    ``[N, *out, C]``, a new array."""
    n = len(w.kernel)
    if math.prod(w.kernel) >= _MANY_TAPS:
        return ufunc.reduce(windows_view(xp, w), axis=tuple(range(n + 1, 2 * n + 1)))
    taps = _taps(xp, w)
    acc = next(taps).copy()
    for t in taps:
        ufunc(acc, t, out=acc)
    return acc


def _pool(kind: str) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
        x = to_last(ins[0], a["channels"])
        w = pool_window(x.shape[1:-1], a, ctx.op)
        if kind == "max":
            fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
            y = window_reduce(padded(x, w, fill), w, np.maximum)
        elif kind == "avg":
            y = window_reduce(padded(x, w, 0.0), w, np.add)
            y /= np.asarray(math.prod(w.kernel), y.dtype)
        else:
            xn = shared.lp_power(x, a["norm"], ctx.op)
            y = shared.lp_root(window_reduce(padded(xn, w, 0.0), w, np.add), a["norm"], ctx.op)
        return from_last(y, a["channels"])

    return kernel


KERNELS: dict[str, Callable] = {
    "max_pool": _pool("max"),
    "avg_pool": _pool("avg"),
    "lp_pool": _pool("lp"),
    "adaptive_max_pool": _pool("max"),
    "adaptive_avg_pool": _pool("avg"),
    "adaptive_lp_pool": _pool("lp"),
    "global_avg_pool": shared.global_pool(lambda x, axes, keep: np.mean(x, axes, keepdims=keep)),
    "global_max_pool": shared.global_pool(lambda x, axes, keep: np.max(x, axes, keepdims=keep)),
    "global_lp_pool": shared.global_lp_pool(
        lambda x, axes, keep: np.sum(x, axes, keepdims=keep)),
}
