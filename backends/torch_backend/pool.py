"""PyTorch kernels of the pooling ops: ``torch.nn.functional`` max / avg pooling on
channels-first views of the graph's tensors, the padding done first by
:func:`.conv.prepare` (``-inf`` for max, zeros counted in the mean for avg: Axon's
``window_mean`` = torch's ``count_include_pad``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from graphdsl.windows import window

from .. import shared
from ..base import KernelContext
from .conv import from_first, prepare, to_first

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool(table: dict, fill: float) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
        x = to_first(ins[0], a["channels"])
        w = window(tuple(x.shape[2:]), a["kernel_size"], a)
        xp, _ = prepare(x, w, fill)
        y = table[len(w.kernel)](xp, w.kernel, w.strides)
        return from_first(y, a["channels"])

    return kernel


KERNELS: dict[str, Callable] = {
    "max_pool": _pool(_MAX, float("-inf")),
    "avg_pool": _pool(_AVG, 0.0),
    "global_avg_pool": shared.global_pool(torch.mean),  # (x, dim, keepdim)
    "global_max_pool": shared.global_pool(torch.amax),
}
