"""NumPy kernels of the adapter ops ``dora`` and ``lora`` (on dense, conv and embedding
layers: a conv works on the im2col rows of its input against the flat kernel
``[prod(kernel_size) * in, filters]``, so the math is the dense one).

Inference (``ctx.training`` False) uses the merged kernel ``W`` (DoRA: ``(K + s*A@B) *
(m/c)``; LoRA: ``K + s*A@B``), so an adapted layer costs what the plain layer costs. ``W`` is
cached in ``ctx.cache`` keyed on the identity of the arrays it came from (K, bias, A, B,
m). State values are immutable (graphdsl.state), so an unchanged identity means
unchanged weights, and a value replaced in ``state.data`` is a cache miss.

Training (``ctx.training`` True) computes the unmerged form with the factored column
norm (``x @ K`` and ``A.T @ K`` in one matmul; ``colsum(K*K)`` of the frozen kernel
cached like the merged kernel; the columns where it cancels, and their output, from their
own materialized kernel: graphdsl.adapters._math.exact_columns) and PEFT's dropout
formula, and returns ``(y, {"key": new_key})`` (``(y, {})`` when there is no dropout).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.adapters._math import (
    colsum_prod,
    column_norm_sq_parts,
    exact_columns,
    finish_norm,
)
from graphdsl.adapters.contract import base_kernel, flat_A, flat_kernel, layer_of, merged_kernel
from graphdsl.windows import kernel_hwio

from ..base import KernelContext, with_updates
from .conv import conv_forward, conv_window, from_last, im2col, to_last
from .kernels import apply_activation, embed, inverted_dropout


def cached_merge(ctx: KernelContext, sources: tuple, make: Callable[[], np.ndarray],
                 slot: str = "merged") -> np.ndarray:
    """``make()`` cached in ``ctx.cache[slot]`` on the identity of ``sources`` (immutable
    state values, see the module docstring)."""
    hit = ctx.cache.get(slot)
    if hit is not None and all(a is b for a, b in zip(hit[0], sources)):
        return hit[1]
    W = make()
    ctx.cache[slot] = (sources, W)
    return W


def _finish(y: np.ndarray, b: np.ndarray | None, a: Mapping,
            back: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> np.ndarray:
    """Bias on the channels-last rows, ``back`` to the layer's layout, then the activation
    (which sees the output in the layer's own layout: Axon's softmax axis)."""
    if b is not None:
        y += b
    return apply_activation(back(y), a["activation"])


def _plain(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, a: Mapping) -> np.ndarray:
    """The adapted layer's own forward with kernel ``W`` (a merged adapter at inference
    costs exactly this): dense ``x @ W``, conv, or an embedding lookup."""
    layer = layer_of(a)
    if layer == "embedding":
        return embed(x, W)
    if layer == "dense":
        return _finish(x @ W, b, a)
    ch = a["channels"]
    y = conv_forward(to_last(x, ch), kernel_hwio(W, ch), a)
    return _finish(y, b, a, lambda v: from_last(v, ch))


def _rows(x: np.ndarray, a: Mapping, p: Mapping) -> tuple:
    """The adapted layer's input as rows against the flat kernel ``[fan_in, out]``:
    ``(x2 [M, fan_in], xd2 (dropped-out rows, or None), updates, back)``; ``back(y2)``
    puts rows ``[M, out]`` into the layer's output layout (dense: the input's leading
    axes; conv: ``[N, *out, filters]`` in its channel order). Conv rows are im2col."""
    xd, updates = None, {}
    if a["dropout"] > 0:
        xd, key = inverted_dropout(x, a["dropout"], p["key"])
        updates = {"key": key}
    if layer_of(a) == "conv":
        ch = a["channels"]
        xl = to_last(x, ch)
        w = conv_window(xl, a, a["kernel_size"])
        x2, out = im2col(xl, w)
        xd2 = None if xd is None else im2col(to_last(xd, ch), w)[0]
        return x2, xd2, updates, lambda y: from_last(
            y.reshape(x.shape[0], *out, y.shape[-1]), ch)
    lead, n_in = x.shape[:-1], x.shape[-1]
    xd2 = None if xd is None else xd.reshape(-1, n_in)
    return x.reshape(-1, n_in), xd2, updates, lambda y: y.reshape(*lead, y.shape[-1])


def _dora_norm_ratio(ctx: KernelContext, K: np.ndarray, K2: np.ndarray, A2: np.ndarray,
                     AtK: np.ndarray, B: np.ndarray, m: np.ndarray, a: Mapping) -> tuple:
    """``(m / c [out], cols, W)``: c the factored column norm of ``K2 + s*A2@B`` (a
    constant: no autograd here), ``cols`` the columns where it cancels and ``W [fan_in,
    len(cols)]`` their materialized kernel or None (the caller takes their output from
    ``W``, which does not cancel); ``colsum(K2*K2)`` of the frozen kernel cached on K's
    identity."""
    kk = cached_merge(ctx, (K,), lambda: colsum_prod(K2, K2), "kk")
    c2, noise = column_norm_sq_parts(kk, AtK, A2, B, a["scale"])
    cols, W = exact_columns(c2, noise, K2, A2, B, a["scale"])
    return m / finish_norm(c2, noise, a["eps"]), cols, W


def _embedding_adapter(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
                       dora: bool) -> Any:
    """PEFT's embedding LoRA/DoRA, unmerged: ``r * (K[ids] + s * A[ids] @ B)`` with
    ``r = m/c`` (DoRA, norm over the vocab axis) or 1 (LoRA)."""
    ids = ins[0]
    K, A, B = base_kernel(p), p["A"], p["B"]
    y = embed(ids, K)
    y += np.asarray(a["scale"], y.dtype) * (embed(ids, A) @ B)
    if dora:
        r, cols, W = _dora_norm_ratio(ctx, K, K, A, A.T @ K, B, p["magnitude"], a)
        if W is not None:
            y[..., cols] = embed(ids, W)
        y *= r
    return y


def _dora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x -> the adapted layer's output. See graphdsl.adapters.ops for the math."""
    x = ins[0]
    K, b, A, B, m = base_kernel(p), p.get("bias"), p["A"], p["B"], p["magnitude"]
    if not ctx.training:
        W = cached_merge(ctx, (K, b, A, B, m), lambda: merged_kernel("dora", p, a))
        return _plain(x, W, b, a)
    if layer_of(a) == "embedding":
        return _embedding_adapter(ins, p, a, ctx, True)
    sd = np.asarray(a["scale"], x.dtype)
    K2, A2 = flat_kernel(K, a), flat_A(A)
    x2, xd2, updates, back = _rows(x, a, p)
    rows, rank = x2.shape[0], A2.shape[1]
    parts = [x2, A2.T] if xd2 is None else [x2, xd2, A2.T]
    # one matmul gives x @ K (and xd @ K) and A.T @ K: a thin A.T @ K alone runs slowly
    prod = np.concatenate(parts) @ K2
    r, cols, W = _dora_norm_ratio(ctx, K, K2, A2, prod[-rank:], B, m, a)
    y = prod[:rows]
    if xd2 is None:
        y += sd * ((x2 @ A2) @ B)
        if W is not None:
            y[:, cols] = x2 @ W
        y *= r
    else:
        y += (r - 1) * prod[rows:2 * rows]
        y += (r * sd) * ((xd2 @ A2) @ B)
        if W is not None:
            y[:, cols] = (x2 - xd2) @ K2[:, cols] + r[cols] * (xd2 @ W)
    return with_updates(_finish(y, b, a, back), updates)


def _lora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x -> the adapted layer's output: base(x) + s * B(A(dropout(x))), then act."""
    x = ins[0]
    K, b, A, B = base_kernel(p), p.get("bias"), p["A"], p["B"]
    if not ctx.training:
        W = cached_merge(ctx, (K, b, A, B), lambda: merged_kernel("lora", p, a))
        return _plain(x, W, b, a)
    if layer_of(a) == "embedding":
        return _embedding_adapter(ins, p, a, ctx, False)
    x2, xd2, updates, back = _rows(x, a, p)
    y = x2 @ flat_kernel(K, a)
    y += np.asarray(a["scale"], x.dtype) * (((x2 if xd2 is None else xd2) @ flat_A(A)) @ B)
    return with_updates(_finish(y, b, a, back), updates)


KERNELS: dict[str, Callable] = {"dora": _dora, "lora": _lora}
