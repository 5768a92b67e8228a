"""NumPy kernels of the adapter ops ``dora`` and ``lora``.

Inference (``ctx.training`` False) uses the merged kernel ``W`` (DoRA: ``(K + s*A@B) *
(m/c)``; LoRA: ``K + s*A@B``), so an adapted layer costs one dense matmul. ``W`` is
cached in ``ctx.cache`` keyed on the identity of the arrays it came from (K, bias, A, B,
m). State values are immutable (graphdsl.state), so an unchanged identity means
unchanged weights, and a value replaced in ``state.data`` is a cache miss.

Training (``ctx.training`` True) computes the unmerged form with the factored column
norm (``x @ K`` and ``A.T @ K`` in one matmul; ``colsum(K*K)`` of the frozen kernel
cached like the merged kernel) and PEFT's dropout formula, and returns
``(y, {"key": new_key})`` (``(y, {})`` when there is no dropout).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.adapters._math import (
    colsum_prod,
    column_norm_sq_parts,
    finish_norm,
)
from graphdsl.adapters.contract import base_kernel, merged_kernel

from ..base import KernelContext
from .kernels import apply_activation, inverted_dropout


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


def _finish(y: np.ndarray, b: np.ndarray | None, a: Mapping) -> np.ndarray:
    if b is not None:
        y += b
    return apply_activation(y, a["activation"])


def _dora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x (..., in) -> (..., units). See graphdsl.adapters.ops for the math."""
    x = ins[0]
    K, b, A, B, m = base_kernel(p), p.get("bias"), p["A"], p["B"], p["magnitude"]
    s = a["scale"]
    if not ctx.training:
        W = cached_merge(ctx, (K, b, A, B, m),
                         lambda: merged_kernel("dora", p, a))
        return _finish(x @ W, b, a)
    sd = np.asarray(s, x.dtype)
    lead, n_in, rank = x.shape[:-1], x.shape[-1], A.shape[1]
    x2 = x.reshape(-1, n_in)
    rows = x2.shape[0]
    if a["dropout"] == 0.0:
        xd, key, parts = None, None, [x2, A.T]
    else:
        xd, key = inverted_dropout(x, a["dropout"], p["key"])
        parts = [x2, xd.reshape(-1, n_in), A.T]
    # one matmul gives x @ K (and xd @ K) and A.T @ K: a thin A.T @ K alone runs slowly
    prod = np.concatenate(parts) @ K
    kk = cached_merge(ctx, (K,), lambda: colsum_prod(K, K), "kk")  # K is frozen
    c2, noise = column_norm_sq_parts(kk, prod[-rank:], A, B, s)
    r = m / finish_norm(c2, noise, a["eps"])  # c is a constant (no autograd here)
    y = prod[:rows]
    if xd is None:
        y += sd * ((x2 @ A) @ B)
        y *= r
        return _finish(y.reshape(*lead, K.shape[1]), b, a), {}
    y += (r - 1) * prod[rows:2 * rows]
    y += (r * sd) * ((xd.reshape(-1, n_in) @ A) @ B)
    return _finish(y.reshape(*lead, K.shape[1]), b, a), {"key": key}


def _lora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x (..., in) -> (..., units): x @ K + b + s * (dropout(x) @ A) @ B, then act."""
    x = ins[0]
    K, b, A, B = base_kernel(p), p.get("bias"), p["A"], p["B"]
    s = a["scale"]
    if not ctx.training:
        W = cached_merge(ctx, (K, b, A, B), lambda: merged_kernel("lora", p, a))
        return _finish(x @ W, b, a)
    sd = np.asarray(s, x.dtype)
    if a["dropout"] == 0.0:
        y = x @ K
        y += sd * ((x @ A) @ B)
        return _finish(y, b, a), {}
    xd, key = inverted_dropout(x, a["dropout"], p["key"])
    y = x @ K
    y += sd * ((xd @ A) @ B)
    return _finish(y, b, a), {"key": key}


KERNELS: dict[str, Callable] = {"dora": _dora, "lora": _lora}
