"""NumPy kernels of Axon's conv variants: conv_transpose, depthwise_conv, separable_conv2d/3d.

conv_transpose is a scatter-add (col2im): every input pixel meets every kernel tap in one
GEMM ``[N * pixels, C] @ [C, taps * F]``, then each tap's products are added into the
output at their strided positions (a loop over the taps, never over pixels). That is the
stride-1 conv of the stride-dilated input that Axon computes, without multiplying the
inserted zeros: ``s**d`` times fewer products than running conv on the dilated input.

The depthwise convs loop over the kernel taps with a broadcast multiply-add per tap
(``[N, *out, C, 1] * [C, m]``): each output channel reads one input channel, so no
im2col matrix is formed.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np

from graphdsl.ops.conv_variants import conv_stages, transpose_window
from graphdsl.windows import Window, kernel_hwio

from ..base import KernelContext
from .conv import conv_window, from_last, padded, to_last, windows_view

#: input pixels per conv_transpose GEMM block: the ``[rows, taps * F]`` products live only
#: while their block is scattered, so the transient memory is bounded (``taps`` times the
#: input for one block, not for the batch); speed is the same as one block, measured
_BLOCK_ROWS = 4096


def _tap_slices(w: Window, sizes: tuple, offs: tuple) -> tuple[tuple, tuple] | None:
    """For the kernel tap at ``offs``: the input slices it reads and the strided output
    slices it adds to (input ``i`` lands on ``lo + i*s - t*d``), or None if it adds
    nothing."""
    src, dst = [], []
    for n, o, (lo, _), s, d, out in zip(sizes, offs, w.pads, w.input_dilation,
                                        w.kernel_dilation, w.out):
        off = lo - o * d
        i0, i1 = max(0, -(off // s)), min(n, (out - 1 - off) // s + 1)
        if i1 <= i0:
            return None
        src.append(slice(i0, i1))
        dst.append(slice(off + i0 * s, off + (i1 - 1) * s + 1, s))
    return tuple(src), tuple(dst)


def transpose_forward(x: np.ndarray, K: np.ndarray, a: Mapping) -> np.ndarray:
    """Axon's conv_transpose without bias: channels-last ``x [N, *S, C]``, kernel ``K
    [*k, C, F]`` (HWIO, unflipped) -> ``[N, *out, F]``."""
    sizes = x.shape[1:-1]
    w = transpose_window(sizes, a)
    taps, C, F = math.prod(w.kernel), x.shape[-1], K.shape[-1]
    kmat = np.ascontiguousarray(np.moveaxis(K.reshape(taps, C, F), 0, 1)).reshape(C, taps * F)
    plan = [(t, sl) for t, offs in enumerate(itertools.product(*map(range, w.kernel)))
            if (sl := _tap_slices(w, sizes, offs)) is not None]
    y = np.zeros((x.shape[0], *w.out, F), np.result_type(x, K))
    per = max(1, _BLOCK_ROWS // max(1, math.prod(sizes)))  # images per GEMM block
    for b in range(0, x.shape[0], per):
        xb = x[b:b + per]
        z = (xb.reshape(-1, C) @ kmat).reshape(*xb.shape[:-1], taps, F)
        yb = y[b:b + per]
        for t, (src, dst) in plan:
            yb[(slice(None), *dst)] += z[(slice(None), *src, t)]
    return y


def _conv_transpose(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    y = transpose_forward(to_last(ins[0], a["channels"]),
                          kernel_hwio(p["kernel"], a["channels"]), a)
    if "bias" in p:
        y += p["bias"]
    return from_last(y, a["channels"])


def depthwise_forward(x: np.ndarray, K: np.ndarray, a: Mapping) -> np.ndarray:
    """A conv with one input channel per group: channels-last ``x [N, *S, C]``, kernel
    ``K [*k, 1, C*m]`` (HWIO) -> ``[N, *out, C*m]`` (channel ``c`` feeds ``c*m ...``)."""
    C = x.shape[-1]
    w = conv_window(x, a, K.shape[:-2])
    v = windows_view(padded(x, w, 0.0), w)  # [N, *out, *k, C]
    n = len(w.kernel)
    kt = K.reshape(-1, C, K.shape[-1] // C)  # [taps, C, m]
    y = np.zeros((*v.shape[:n + 1], C, kt.shape[-1]), np.result_type(x, K))
    for t, offs in enumerate(itertools.product(*map(range, w.kernel))):
        y += v[(Ellipsis, *offs, slice(None))][..., None] * kt[t]
    return y.reshape(*y.shape[:-2], y.shape[-2] * y.shape[-1])  # not -1: batch 0


def _depthwise(op: str) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
        ch = a["channels"]
        stages = conv_stages(op, ins[0].shape, a)
        y = to_last(ins[0], ch)
        for st, k_name, b_name in stages:
            y = depthwise_forward(y, kernel_hwio(p[k_name], ch), st)
            if b_name in p:
                y += p[b_name]
        return from_last(y, ch)

    return kernel


KERNELS: dict[str, Callable] = {
    "conv_transpose": _conv_transpose,
    "depthwise_conv": _depthwise("depthwise_conv"),
    "separable_conv2d": _depthwise("separable_conv2d"),
    "separable_conv3d": _depthwise("separable_conv3d"),
}
