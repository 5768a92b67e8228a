"""NumPy kernels of Axon's special layers: blur_pool (a depthwise conv with the fixed
filter), and the shared ones (:mod:`..special`)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from graphdsl.ops.special import BLUR_WINDOW, blur_kernel

from .. import special
from ..base import KernelContext
from .conv import conv_forward, from_last, to_last


def _blur_pool(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = to_last(ins[0], a["channels"])
    if x.dtype.kind != "f":
        x = x.astype(ctx.dtype)
    c = x.shape[-1]
    y = conv_forward(x, blur_kernel(c).astype(x.dtype, copy=False),
                     {**BLUR_WINDOW, "feature_group_size": c})
    return from_last(y, a["channels"])


KERNELS: dict[str, Callable] = {**special.KERNELS, "blur_pool": _blur_pool}
