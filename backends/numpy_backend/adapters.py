"""NumPy kernels of the adapter ops ``dora`` and ``lora`` (on dense, conv and embedding
layers: a conv works on the im2col rows of its input against the flat kernel
``[prod(kernel_size) * in, filters]``, so the math is the dense one).

Inference (``ctx.training`` False) uses the merged kernel ``W`` (DoRA: ``(K + s*A@B) *
(m/c)``; LoRA: ``K + s*A@B``), so an adapted layer costs what the plain layer costs. ``W`` is
cached in ``ctx.cache`` keyed on the identity of the arrays it came from (K, bias, A, B,
m). State values are immutable (graphdsl.state), so an unchanged identity means
unchanged weights, and a value replaced in ``state.data`` is a cache miss. Over a
half-precision base (kept as stored, upcast per call: .half) inference runs the
unmerged form instead, with DoRA's norm ratio ``m/c`` (a vector) cached on the stored
values: no merged copy of the base kernel is kept at all.

Training (``ctx.training`` True) computes the unmerged form with the factored column
norm (``x @ K`` and ``A.T @ K`` in one matmul; ``colsum(K*K)`` of the frozen kernel
cached like the merged kernel; the columns where it cancels, and their output, from their
own materialized kernel: graphdsl.adapters._math.exact_columns) and PEFT's dropout
formula, and returns ``Stateful(y, {"key": new_key})`` with dropout (graphdsl.backends.
base.with_updates). Each kind's unmerged forward is one row of :data:`_UNMERGED`; its
merged forward is the base op's own kernel (:data:`_PLAIN`).
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
from graphdsl.adapters.contract import (
    ADAPTABLE,
    base_kernel,
    base_options,
    flat_A,
    flat_kernel,
    layer_of,
    merged_kernel,
)

from ..base import KernelContext, with_updates
from . import conv, kernels
from .conv import conv_window, from_last, im2col, to_last
from .half import stored
from .kernels import embed, inverted_dropout

#: the plain forward of each adaptable kind: the base op's own kernel
_PLAIN: dict[str, Callable] = {k: f for k, f in {**kernels.KERNELS, **conv.KERNELS}.items()
                               if k in ADAPTABLE}


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


def _rows(x: np.ndarray, a: Mapping, p: Mapping, to_rows: Callable) -> tuple:
    """The adapted layer's input as rows against the flat kernel ``[fan_in, out]``:
    ``(x2 [M, fan_in], xd2 (dropped-out rows, or None), updates, back)`` where
    ``to_rows([x, (xd)], a) -> ([x2, (xd2)], back)`` is the kind's (:data:`_UNMERGED`);
    ``back(y2)`` puts rows ``[M, out]`` into the layer's output layout."""
    xs, updates = [x], {}
    if a["dropout"] > 0:
        xd, key = inverted_dropout(x, a["dropout"], p["key"])
        xs, updates = [x, xd], {"key": key}
    rows, back = to_rows(xs, a)
    return rows[0], rows[1] if len(rows) > 1 else None, updates, back


def _dense_rows(xs: list, a: Mapping) -> tuple[list, Callable]:
    """Dense rows: the input's leading axes flattened; ``back`` restores them."""
    lead, n_in = xs[0].shape[:-1], xs[0].shape[-1]
    return [x.reshape(-1, n_in) for x in xs], lambda y: y.reshape(*lead, y.shape[-1])


def _conv_rows(xs: list, a: Mapping) -> tuple[list, Callable]:
    """Conv rows: im2col of the channels-last input; ``back`` gives ``[N, *out,
    filters]`` in the layer's channel order."""
    ch = a["channels"]
    xl = [to_last(x, ch) for x in xs]
    w = conv_window(xl[0], a, a["kernel_size"])
    cols = [im2col(x, w) for x in xl]
    n, out = xs[0].shape[0], cols[0][1]
    return [c[0] for c in cols], lambda y: from_last(y.reshape(n, *out, y.shape[-1]), ch)


def _dora_norm_ratio(ctx: KernelContext, K: Any, K2: np.ndarray, A2: np.ndarray,
                     AtK: np.ndarray, B: np.ndarray, m: np.ndarray, a: Mapping) -> tuple:
    """``(m / c [out], cols, W)``: c the factored column norm of ``K2 + s*A2@B`` (a
    constant: no autograd here), ``cols`` the columns where it cancels and ``W [fan_in,
    len(cols)]`` their materialized kernel or None (the caller takes their output from
    ``W``, which does not cancel); ``colsum(K2*K2)`` of the frozen kernel cached on the
    identity of ``K`` (the stored base kernel)."""
    kk = cached_merge(ctx, (K,), lambda: colsum_prod(K2, K2), "kk")
    c2, noise = column_norm_sq_parts(kk, AtK, A2, B, a["scale"])
    cols, W = exact_columns(c2, noise, K2, A2, B, a["scale"])
    return m / finish_norm(c2, noise, a["eps"]), cols, W


def _ratio(ctx: KernelContext, p: Mapping, K2: np.ndarray, A2: np.ndarray, B: np.ndarray,
           m: np.ndarray, a: Mapping, AtK: np.ndarray | None) -> tuple:
    """:func:`_dora_norm_ratio` of the layer with parameters ``p``. With ``AtK`` None
    (inference over a half base, see :func:`_kernel`) the norm is a constant: computed
    once and cached on the stored K, A, B and m."""
    src = stored(p)
    K0 = base_kernel(src)
    if AtK is not None:
        return _dora_norm_ratio(ctx, K0, K2, A2, AtK, B, m, a)
    return cached_merge(ctx, (K0, src["A"], src["B"], src["magnitude"]),
                        lambda: _dora_norm_ratio(ctx, K0, K2, A2, A2.T @ K2, B, m, a),
                        "ratio")


def _embedding_adapter(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
                       m: np.ndarray | None) -> Any:
    """PEFT's embedding LoRA/DoRA, unmerged: ``r * (K[ids] + s * A[ids] @ B)`` with
    ``r = m/c`` (DoRA, norm over the vocab axis) or 1 (LoRA: ``m`` None)."""
    ids = ins[0]
    K, A, B = base_kernel(p), p["A"], p["B"]
    y = embed(ids, K)
    y += np.asarray(a["scale"], y.dtype) * (embed(ids, A) @ B)
    if m is not None:
        r, cols, W = _ratio(ctx, p, K, A, B, m, a, A.T @ K if ctx.training else None)
        if W is not None:
            y[..., cols] = embed(ids, W)
        y *= r
    return y


def _dora_rows(x2: np.ndarray, xd2: np.ndarray | None, p: Mapping, a: Mapping,
               ctx: KernelContext) -> np.ndarray:
    """DoRA on rows ``x2 [M, fan_in]`` (``xd2``: their dropped-out copy) -> ``[M, out]``
    before the bias: ``(m/c) * (x@K + s*(x@A)@B)``, or PEFT's dropout form."""
    K, A, B, m = base_kernel(p), p["A"], p["B"], p["magnitude"]
    sd = np.asarray(a["scale"], x2.dtype)
    K2, A2 = flat_kernel(K, a), flat_A(A)
    rows, rank = x2.shape[0], A2.shape[1]
    if ctx.training:
        parts = [x2, A2.T] if xd2 is None else [x2, xd2, A2.T]
        # one matmul gives x @ K (and xd @ K) and A.T @ K: a thin A.T @ K alone runs slowly
        prod = np.concatenate(parts) @ K2
        AtK = prod[-rank:]
    else:  # inference over a half base (see _kernel): the norm is cached
        prod, AtK = x2 @ K2, None
    r, cols, W = _ratio(ctx, p, K2, A2, B, m, a, AtK)
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
    return y


def _lora_rows(x2: np.ndarray, xd2: np.ndarray | None, p: Mapping, a: Mapping,
               ctx: KernelContext) -> np.ndarray:
    """LoRA on rows ``x2 [M, fan_in]`` -> ``[M, out]`` before the bias: ``x@K +
    s*(xd@A)@B`` (``xd2``: the dropped-out rows, or None)."""
    y = x2 @ flat_kernel(base_kernel(p), a)
    y += np.asarray(a["scale"], x2.dtype) * (((x2 if xd2 is None else xd2) @ flat_A(p["A"]))
                                             @ p["B"])
    return y


def _on_rows(to_rows: Callable) -> Callable:
    """The unmerged forward of a kind whose input runs as rows against the flat kernel
    (``to_rows``, see :func:`_rows`): DoRA's or LoRA's math on them, bias, layout."""
    def forward(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
                m: np.ndarray | None) -> Any:
        x2, xd2, updates, back = _rows(ins[0], a, p, to_rows)
        y = (_lora_rows if m is None else _dora_rows)(x2, xd2, p, a, ctx)
        if "bias" in p:  # on the channels-last rows
            y += p["bias"]
        return with_updates(back(y), updates)
    return forward


#: the unmerged (training) forward of each adaptable kind (graphdsl.adapters.kinds):
#: ``(ins, p, a, ctx, m) -> y``, ``m`` DoRA's magnitude or None (LoRA)
_UNMERGED: dict[str, Callable] = {"dense": _on_rows(_dense_rows),
                                  "conv": _on_rows(_conv_rows),
                                  "embedding": _embedding_adapter}


def _kernel(op: str) -> Callable:
    """The kernel of adapter ``op``. Inference: the base op's own kernel (:data:`_PLAIN`)
    with the merged kernel ``W`` (cached), so it costs what the plain layer costs; over a
    half-precision base, the unmerged forward without dropout (no merged copy kept).
    Training: the kind's unmerged forward (:data:`_UNMERGED`); see graphdsl.adapters.ops
    for the math."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        m, b = p.get("magnitude"), p.get("bias")  # LoRA has no magnitude
        if ctx.training or stored(p) is not p:
            return _UNMERGED[layer_of(a)](ins, p, a if ctx.training else {**a, "dropout": 0},
                                          ctx, m)
        W = cached_merge(ctx, (base_kernel(p), b, p["A"], p["B"], m),
                         lambda: merged_kernel(op, p, a))
        base = ctx.cache.get("base") or ctx.cache.setdefault("base", base_options(a))
        return _PLAIN[base[0]](ins, {"kernel": W} if b is None else {"kernel": W, "bias": b},
                               base[1], ctx)
    return kernel


KERNELS: dict[str, Callable] = {op: _kernel(op) for op in ("dora", "lora")}
