"""DoRA / LoRA arithmetic in NumPy, shared by the op specs (magnitude init), the NumPy
kernels and ``merge_adapters``.

Layout (Axon): kernel ``K [in, out]``, ``A [in, r]``, ``B [r, out]``, magnitude
``m [out]``, scale ``s``. The DoRA column norm is taken per output unit (column of K).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import GraphDSLError, RuleError

#: the zero-norm rule, one for every backend: column j counts as zero when
#: ``c_j^2 <= ZERO_NORM_ULPS * eps(dtype) * (colsum(K*K) + s^2 * colsum((A@B)^2))_j``,
#: i.e. when the norm cancels to round-off of the terms it is summed from (a column that
#: ``exact_columns`` recomputed: ``16 * eps^2 * noise``, the rounding of the weights)
ZERO_NORM_ULPS = 16


def exact_norm_tau(eps: float) -> float:
    """The exact-norm rule, one for every backend: a column whose factored ``c^2`` is
    below ``tau * (colsum(K*K) + s^2 * colsum((A@B)^2))`` (an update that nearly cancels
    the column) is recomputed from the materialized column ``K[:, j] + s*(A@B)[:, j]``.
    The factored ``c^2`` errs by about ``3 * eps * noise``, so ``c`` by at most ``1.5 *
    eps / tau``: ``tau = 2 * eps / 1e-6`` keeps that under 1e-6 (float32: 0.24), capped
    at 1/2 for half precision, where 1e-6 is out of reach anyway."""
    return min(0.5, 2.0 * eps / 1e-6)


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """``alpha / rank``, or rsLoRA's ``alpha / sqrt(rank)``."""
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


def lora_uniform(shape: tuple, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """PEFT's default for A (``kaiming_uniform_(a=sqrt(5))`` on ``[r, in]``):
    ``U(-1/sqrt(in), 1/sqrt(in))`` for ``A [in, r]`` (a conv's ``A [*k, in, r]``: fan-in
    ``prod(k) * in``)."""
    bound = 1.0 / math.sqrt(max(1, math.prod(shape[:-1])))
    return rng.uniform(-bound, bound, shape).astype(dtype)


def colsum_prod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b, axis=0) [n]`` for a, b ``[m, n]``, without the ``a * b`` temporary."""
    return np.einsum("ij,ij->j", a, b)


def column_norm_sq_parts(kk: np.ndarray, AtK: np.ndarray, A: np.ndarray, B: np.ndarray,
                         s: float) -> tuple[np.ndarray, np.ndarray]:
    """The factored ``(c^2, noise)`` from ``kk = colsum(K*K) [out]`` and ``AtK = A.T @ K
    [r, out]`` (which a kernel may have computed together with ``x @ K``)."""
    cross = colsum_prod(AtK, B)
    bb = colsum_prod(B, (A.T @ A) @ B)
    c2 = kk + (2.0 * s) * cross + (s * s) * bb
    return c2, kk + (s * s) * bb


def exact_columns(c2: np.ndarray, noise: np.ndarray, K: np.ndarray, A: np.ndarray,
                  B: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray | None]:
    """``(cols, W)``: the columns where the factored ``c2 [out]`` cancelled (the rule of
    ``exact_norm_tau``) and their materialized ``W = K[:, cols] + s*(A@B)[:, cols]
    [in, len(cols)]`` in float64 (the sum cancels, so its own rounding would show), or
    None when there are none; in place, ``c2[cols]`` becomes ``colsum(W*W)`` and
    ``noise[cols]`` is scaled by eps (that c2 is exact to the rounding of the weights, so
    the zero rule applies at that level)."""
    eps = float(np.finfo(c2.dtype).eps)
    cols = np.flatnonzero(c2 < exact_norm_tau(eps) * noise)
    if not cols.size:
        return cols, None
    f8 = np.float64
    W = lora_merged_kernel(K[:, cols].astype(f8), A.astype(f8), B[:, cols].astype(f8), s)
    c2[cols] = colsum_prod(W, W)
    noise[cols] *= eps
    return cols, W


def finish_norm(c2: np.ndarray, noise: np.ndarray, eps: float | None) -> np.ndarray:
    """``c [out] = sqrt(max(c2, 0))`` from ``c2 [out]``; a zero column (by the rule of
    ``ZERO_NORM_ULPS``, ``noise [out]`` being the summed terms' scale) raises a
    RuleError naming the columns unless ``eps`` is given: then ``c = max(c, eps)``."""
    c2 = np.maximum(c2, 0, out=c2) if c2.flags.writeable else np.maximum(c2, 0)
    if not np.all(np.isfinite(c2)):
        bad = np.flatnonzero(~np.isfinite(c2))
        raise RuleError(
            f"the DoRA column norm ||K + s*A@B|| is not finite for output unit(s) "
            f"{_list(bad)}: the weights hold NaN or infinity",
            "check the kernel, A, B and magnitude for NaN/inf (e.g. a diverged update)",
            GraphDSLError)
    zero = c2 <= (ZERO_NORM_ULPS * np.finfo(c2.dtype).eps) * noise
    c = np.sqrt(c2, out=c2)
    if eps is not None:
        return np.maximum(c, np.asarray(eps, c.dtype), out=c)
    if zero.any():
        cols = np.flatnonzero(zero)
        raise RuleError(
            f"{len(cols)} output unit(s) {_list(cols)} have a zero-norm column "
            f"||K[:, j] + s*(A@B)[:, j]|| (of {c.shape[0]}); DoRA divides by this norm, "
            "so the output would be NaN",
            "pass eps=1e-6 (or similar) to dora_layer / wrap / adapt to clamp the norm "
            "(c = max(c, eps)), or give those units a nonzero kernel column",
            GraphDSLError)
    return c


def _list(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:10])
    return f"[{shown}{', ...' if len(idx) > 10 else ''}]"


def dora_column_norm(K: np.ndarray, A: np.ndarray, B: np.ndarray, s: float,
                     eps: float | None = None) -> np.ndarray:
    """``c [out]`` with ``c_j = ||K[:, j] + s*(A@B)[:, j]||`` in factored form:

    ``c^2 = colsum(K*K) + 2s*colsum((A.T@K)*B) + s^2*colsum(B*((A.T@A)@B))``.

    Transient memory is O(r*out) (no ``[in, out]`` temporary); the columns that cancel to
    round-off are recomputed (``exact_columns``) and ``finish_norm`` applies the
    zero-norm rule.
    """
    c2, noise = column_norm_sq_parts(colsum_prod(K, K), A.T @ K, A, B, s)
    exact_columns(c2, noise, K, A, B, s)
    return finish_norm(c2, noise, eps)


def lora_merged_kernel(K: np.ndarray, A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """``K + s*A@B`` (a new ``[in, out]`` array in K's dtype)."""
    W = A @ B
    W *= np.asarray(s, W.dtype)
    W += K
    return W


def dora_merge(K: np.ndarray, p: dict, a: dict) -> np.ndarray:
    """The DoRA op's ``merge`` (adapter contract): ``(K + s*A@B) * (m / c)`` ``[in, out]``,
    the plain kernel equal to a DoRA layer (K [in, out], ``p``: A [in, r], B [r, out],
    magnitude m [out]; ``a``: scale s, eps).

    ``c`` is computed from the materialized matrix (it exists anyway here); the columns
    that cancel (``exact_columns``) are summed in float64 before they are rounded. A
    zero column raises like ``finish_norm``.
    """
    A, B, s = p["A"], p["B"], a["scale"]
    W = lora_merged_kernel(K, A, B, s)
    noise = colsum_prod(K, K) + (s * s) * colsum_prod(B, (A.T @ A) @ B)
    c2 = colsum_prod(W, W)
    cols, exact = exact_columns(c2, noise, K, A, B, s)
    r = p["magnitude"] / finish_norm(c2, noise, a["eps"])
    W *= r
    if exact is not None:
        W[:, cols] = exact * r[cols]
    return W


def lora_merge(K: np.ndarray, p: dict, a: dict) -> np.ndarray:
    """The LoRA op's ``merge`` (adapter contract): ``K + s*A@B`` [in, out]."""
    return lora_merged_kernel(K, p["A"], p["B"], a["scale"])
