"""NumPy kernels of the convolutional ops (conv, batch/instance/group norm; the pools are
:mod:`.pool`).

Work happens channels-last (``[N, *spatial, C]``; channels-first inputs are viewed that
way). conv is im2col: the windows of the padded input are gathered once with
``sliding_window_view`` into ``[N * out_pixels, prod(kernel) * C]`` and multiplied by
the kernel ``[prod(kernel) * C, filters]`` in one BLAS call (one batched call per group
for grouped convs). Pooling loops over the kernel taps (never over output pixels).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from graphdsl.errors import RuleError
from graphdsl.windows import Window, kernel_hwio, window

from .. import shared
from ..base import KernelContext, Stateful


def to_last(x: np.ndarray, channels: str) -> np.ndarray:
    return x if channels == "last" else np.moveaxis(x, 1, -1)


def from_last(y: np.ndarray, channels: str) -> np.ndarray:
    return y if channels == "last" else np.moveaxis(y, -1, 1)


def conv_window(x: np.ndarray, a: Mapping, kernel: Any) -> Window:
    """The window of ``a`` over channels-last ``x`` [N, *spatial, C]."""
    return window(x.shape[1:-1], kernel, a)


def padded(x: np.ndarray, w: Window, fill: float) -> np.ndarray:
    """Channels-last ``x`` with its spatial axes dilated and padded (``fill`` in the
    padding, zeros between dilated elements); ``x`` itself when there is nothing to do."""
    if all(d == 1 for d in w.input_dilation) and all(p == (0, 0) for p in w.pads):
        return x
    dil = [(n - 1) * d + 1 for n, d in zip(x.shape[1:-1], w.input_dilation)]
    out = np.full((x.shape[0], *[m + lo + hi for m, (lo, hi) in zip(dil, w.pads)],
                   x.shape[-1]), fill, x.dtype)
    if any(d > 1 for d in w.input_dilation):
        inner = tuple(slice(lo, lo + m) for m, (lo, _) in zip(dil, w.pads))
        out[(slice(None), *inner, slice(None))] = 0
    idx = tuple(slice(lo, lo + m, d) for m, (lo, _), d in zip(dil, w.pads, w.input_dilation))
    out[(slice(None), *idx, slice(None))] = x
    return out


def windows_view(xp: np.ndarray, w: Window) -> np.ndarray:
    """``[N, *out, *kernel, C]``: a strided view of the windows of padded ``xp``."""
    n = len(w.kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(w.kernel, w.kernel_dilation)]
    v = sliding_window_view(xp, spans, axis=tuple(range(1, n + 1)))  # [N, *full, C, *span]
    v = v[(slice(None), *(slice(None, None, s) for s in w.strides), slice(None),
           *(slice(None, None, d) for d in w.kernel_dilation))]
    return np.moveaxis(v, n + 1, -1)


def im2col(x: np.ndarray, w: Window) -> tuple[np.ndarray, tuple]:
    """Channels-last ``x`` -> ``(cols [N * prod(out), prod(kernel) * C], out)``; the
    column order is (kernel taps, channel), matching ``kernel.reshape(-1, filters)``."""
    out = tuple(w.out)
    if all(k == 1 for k in w.kernel) and w.trivial_dilation and all(
            s == 1 for s in w.strides) and all(p == (0, 0) for p in w.pads):
        return x.reshape(-1, x.shape[-1]), out  # 1x1 conv: the input is its own im2col
    v = windows_view(padded(x, w, 0.0), w)
    return v.reshape(-1, math.prod(w.kernel) * x.shape[-1]), out


def conv_matmul(cols: np.ndarray, K: np.ndarray, groups: int) -> np.ndarray:
    """``cols [M, taps * C] @ kernel`` for ``K [*kernel, C/groups, F]`` (HWIO), grouped:
    group g's columns of channels ``g*C/G ...`` meet its filters ``g*F/G ...``. [M, F]."""
    F = K.shape[-1]
    if groups == 1:
        return cols @ K.reshape(-1, F)
    taps, cg = math.prod(K.shape[:-2]), K.shape[-2]
    M = cols.shape[0]
    cg_cols = cols.reshape(M, taps, groups, cg).transpose(2, 0, 1, 3).reshape(
        groups, M, taps * cg)  # not -1: M is 0 for an empty batch
    kg = K.reshape(taps, cg, groups, F // groups).transpose(2, 0, 1, 3).reshape(
        groups, taps * cg, F // groups)
    return np.matmul(cg_cols, kg).transpose(1, 0, 2).reshape(M, F)


def conv_forward(x: np.ndarray, K: np.ndarray, a: Mapping) -> np.ndarray:
    """Conv without bias: channels-last ``x`` -> ``[N, *out, F]`` (HWIO K)."""
    w = conv_window(x, a, K.shape[:-2])
    cols, out = im2col(x, w)
    return conv_matmul(cols, K, a["feature_group_size"]).reshape(x.shape[0], *out, K.shape[-1])


def _conv(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = to_last(ins[0], a["channels"])
    y = conv_forward(x, kernel_hwio(p["kernel"], a["channels"]), a)
    if "bias" in p:
        y += p["bias"]
    return from_last(y, a["channels"])


def batch_statistics(x: np.ndarray, ax: int, running_mean: Any, running_var: Any,
                     momentum: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Batch mean and biased variance [C] of ``x`` over every axis but ``ax``, and the new
    running values as torch computes them (unbiased variance): ``{"mean", "var"}``."""
    axes = tuple(i for i in range(x.ndim) if i != ax)
    n = x.size // x.shape[ax]
    if n <= 1:
        raise RuleError(f"batch_norm in training needs more than 1 value per channel, got "
                        f"an input of shape {x.shape}",
                        "train with a batch of 2 or more (or spatial axes), or use "
                        "mode='inference'")
    mean = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
    var = np.square(x - shared.along(mean, x, ax)).mean(axis=axes, dtype=np.float64)
    m = momentum
    new = {"mean": ((1 - m) * running_mean + m * mean).astype(x.dtype),
           "var": ((1 - m) * running_var + m * var * (n / (n - 1))).astype(x.dtype)}
    return mean.astype(x.dtype), var.astype(x.dtype), new


def _batch_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    x = ins[0]
    ax = a["axis"] % x.ndim
    if ctx.training:
        mean, var, new = batch_statistics(x, ax, p["mean"], p["var"], a["momentum"])
    else:
        mean, var = p["mean"], p["var"]
    scale = p["gamma"] / np.sqrt(var + np.asarray(a["epsilon"], x.dtype))
    shift = p["beta"] - mean * scale
    y = x * shared.along(scale, x, ax)
    y += shared.along(shift, x, ax)
    return Stateful(y, new) if ctx.training else y


def _instance_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """Train: each ``[batch, channel]``'s mean and biased variance over the spatial axes,
    and the running values updated with their batch averages (unbiased variances), as
    torch's instance_norm does. Inference: batch_norm's formula on the running values."""
    if not ctx.training:
        return _batch_norm(ins, p, a, ctx)
    x = ins[0]
    xm = np.moveaxis(x, a["axis"] % x.ndim, -1)
    axes = tuple(range(1, xm.ndim - 1))
    n = shared.instance_values(x.shape, a["axis"])
    mean = xm.mean(axis=axes, keepdims=True)
    xc = xm - mean
    var = np.square(xc).mean(axis=axes, keepdims=True)
    y = xc / np.sqrt(var + np.asarray(a["epsilon"], x.dtype)) * p["gamma"] + p["beta"]
    m = a["momentum"]
    new = {"mean": ((1 - m) * p["mean"] + m * mean.mean(axis=0).reshape(-1)).astype(x.dtype),
           "var": ((1 - m) * p["var"]
                   + m * var.mean(axis=0).reshape(-1) * (n / (n - 1))).astype(x.dtype)}
    return Stateful(np.moveaxis(y, -1, a["axis"] % x.ndim), new)


def _group_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = ins[0]
    ax = a["axis"] % x.ndim
    xm = np.moveaxis(x, ax, -1)
    c, g = xm.shape[-1], a["num_groups"]
    xg = xm.reshape(xm.shape[0], math.prod(xm.shape[1:-1]), g, c // g)  # -1 fails at batch 0
    mean = xg.mean(axis=(1, 3), keepdims=True)
    xc = xg - mean
    var = np.square(xc).mean(axis=(1, 3), keepdims=True)
    xc /= np.sqrt(var + np.asarray(a["epsilon"], x.dtype))
    y = xc.reshape(xm.shape) * p["gamma"] + p["beta"]
    return np.moveaxis(y, -1, ax)


KERNELS: dict[str, Callable] = {
    "conv": _conv,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "group_norm": _group_norm,
}
