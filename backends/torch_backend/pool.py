"""PyTorch kernels of the pooling ops: ``torch.nn.functional`` max / avg pooling on
channels-first views of the graph's tensors, over the window of
:func:`graphdsl.ops.pool.pool_window`, the padding done first by :func:`.conv.prepare`
(``-inf`` for max, zeros for avg and lp, which the mean counts: Axon's ``window_mean`` =
torch's ``count_include_pad``).

A dilated window sum (avg and lp pools; ``F.avg_pool`` has no dilation) is a conv with
a window of ones over the channels folded into the batch; the lp pools are Axon's
``(sum of x**norm) ** (1/norm)`` (torch's ``F.lp_pool`` is the same on its windows).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from graphdsl.ops.pool import pool_window
from graphdsl.windows import Window

from .. import shared
from ..base import KernelContext
from .conv import from_first, prepare, to_first

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _avg(xp: torch.Tensor, w: Window) -> torch.Tensor:
    """``F.avg_pool`` of ``xp``; torch's CPU avg_pool3d has no half-precision kernel
    (torch 2.13): there in float32, rounded back."""
    if len(w.kernel) == 3 and xp.device.type == "cpu" and xp.dtype in (torch.bfloat16,
                                                                        torch.float16):
        return F.avg_pool3d(xp.float(), w.kernel, w.strides).to(xp.dtype)
    return _AVG[len(w.kernel)](xp, w.kernel, w.strides)


def _window_mean(xp: torch.Tensor, w: Window) -> torch.Tensor:
    """The mean of each window of padded channels-first ``xp`` over its taps."""
    if w.trivial_dilation:
        return _avg(xp, w)
    return _window_sum(xp, w) / math.prod(w.kernel)


def _window_sum(xp: torch.Tensor, w: Window) -> torch.Tensor:
    if w.trivial_dilation:  # F.lp_pool's own way
        return _avg(xp, w) * math.prod(w.kernel)
    n, c = xp.shape[:2]
    ones = xp.new_ones((1, 1, *w.kernel))
    y = _CONV[len(w.kernel)](xp.reshape(n * c, 1, *xp.shape[2:]), ones, stride=w.strides,
                             dilation=w.kernel_dilation)
    return y.reshape(n, c, *y.shape[2:])


def _pool(kind: str) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
        x = to_first(ins[0], a["channels"])
        w = pool_window(tuple(x.shape[2:]), a, ctx.op)
        if kind == "max":
            xp, _ = prepare(x, w, float("-inf"))
            y = _MAX[len(w.kernel)](xp, w.kernel, w.strides, 0, w.kernel_dilation)
        elif kind == "avg":
            y = _window_mean(prepare(x, w, 0.0)[0], w)
        else:
            xn = shared.lp_power(x, a["norm"], ctx.op)
            y = shared.lp_root(_window_sum(prepare(xn, w, 0.0)[0], w), a["norm"], ctx.op)
        return from_first(y, a["channels"])

    return kernel


KERNELS: dict[str, Callable] = {
    "max_pool": _pool("max"),
    "avg_pool": _pool("avg"),
    "lp_pool": _pool("lp"),
    "adaptive_max_pool": _pool("max"),
    "adaptive_avg_pool": _pool("avg"),
    "adaptive_lp_pool": _pool("lp"),
    "global_avg_pool": shared.global_pool(torch.mean),  # (x, dim, keepdim)
    "global_max_pool": shared.global_pool(torch.amax),
    "global_lp_pool": shared.global_lp_pool(torch.sum),
}
