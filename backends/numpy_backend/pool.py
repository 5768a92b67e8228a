"""NumPy kernels of the pooling ops (max_pool, avg_pool, global_avg_pool,
global_max_pool).

Work happens channels-last (``[N, *spatial, C]``; channels-first inputs are viewed that
way), on the padded input of :func:`.conv.padded`. Pooling loops over the kernel taps
(never over output pixels).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.windows import Window

from .. import shared
from ..base import KernelContext
from .conv import conv_window, from_last, padded, to_last


def _taps(xp: np.ndarray, w: Window) -> Any:
    """Each kernel tap's strided view ``[N, *out, C]`` of padded ``xp``."""
    for offs in itertools.product(*(range(k) for k in w.kernel)):
        yield xp[(slice(None), *(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in
                                 zip(offs, w.kernel_dilation, w.strides, w.out)), slice(None))]


def _pool(reduce: Callable, mean: bool) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
        x = to_last(ins[0], a["channels"])
        w = conv_window(x, a, a["kernel_size"])
        fill = 0.0 if mean else (-np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min)
        taps = _taps(padded(x, w, fill), w)
        acc = next(taps).copy()
        for t in taps:
            reduce(acc, t, out=acc)
        if mean:
            acc /= np.asarray(math.prod(w.kernel), acc.dtype)
        return from_last(acc, a["channels"])

    return kernel


KERNELS: dict[str, Callable] = {
    "max_pool": _pool(np.maximum, False),
    "avg_pool": _pool(np.add, True),
    "global_avg_pool": shared.global_pool(lambda x, axes, keep: np.mean(x, axes, keepdims=keep)),
    "global_max_pool": shared.global_pool(lambda x, axes, keep: np.max(x, axes, keepdims=keep)),
}
