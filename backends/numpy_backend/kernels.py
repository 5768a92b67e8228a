"""The NumPy backend's kernels of the core ops (``KERNELS``), keyed by op name; the
adapter ops' kernels are in :mod:`.adapters`. Shapes as the ops' registry entries state.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import reduce
from typing import Any

import numpy as np

from graphdsl.dtypes import HALF, is_float, np_dtype
from graphdsl.mixed_precision import widened
from graphdsl.ops.tensor import pad_widths

from .. import dropouts, resize, shared
from ..base import KernelContext, Stateful, with_updates
from . import half
from .half import as_compute

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_ERF_SERIES_TERMS = 60  # both expansions converge to float64 round-off within 60 terms


def _erf_series(z: np.ndarray) -> np.ndarray:
    """erf(z) for 0 <= z < 2.5: ``2/sqrt(pi) exp(-z^2) sum (2z^2)^n z / (2n+1)!!`` (all
    terms positive, no cancellation)."""
    z2 = 2.0 * z * z
    term, total = z.copy(), z.copy()
    for n in range(1, _ERF_SERIES_TERMS):
        term *= z2 / (2 * n + 1)
        total += term
    return (2.0 / math.sqrt(math.pi)) * np.exp(-z * z) * total


def _erfc_fraction(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 2.5 by its continued fraction, evaluated backwards at fixed depth."""
    t = z.copy()
    for k in range(_ERF_SERIES_TERMS, 0, -1):
        t = z + (k / 2.0) / t
    return np.exp(-z * z) / (math.sqrt(math.pi) * t)


def _erfc64(w: np.ndarray) -> np.ndarray:
    """erfc of float64 ``w`` (any shape) to a relative error of ~1e-12: erfc of |w|
    (no cancellation, unlike 1 - erf for w >= 2.5), reflected."""
    a = np.abs(w)
    c = np.empty_like(a)
    small = a < 2.5
    c[small] = 1.0 - _erf_series(a[small])
    c[~small] = _erfc_fraction(a[~small])
    return np.where(w < 0, 2.0 - c, c)


_ERFCC = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
          0.09678418, 0.37409196, 1.00002368, -1.26551223)


def _erfc_half(x: np.ndarray) -> np.ndarray:
    """erfc(|x| / sqrt 2) of float32 ``x`` (any shape) to ~6e-7 relative: the Chebyshev
    fit erfcc of Numerical Recipes 6.2 (relative error < 1.2e-7), its exp(-x^2/2) taken
    as exp(-h^2/2) exp(-(h l + l^2/2)) with x = h + l, h of 12 bits: h^2 and h l are then
    exact, where a rounded x^2/2 (up to 50) would be off by 3e-6."""
    a = np.minimum(np.abs(x), np.float32(30))  # erfc is 0 in float32 from here (and at inf)
    t = a * np.float32(0.5 * _SQRT1_2)
    t += 1
    np.reciprocal(t, out=t)
    poly = np.full_like(t, _ERFCC[0])
    for coef in _ERFCC[1:]:
        poly *= t
        poly += np.float32(coef)
    h = (a.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
    a -= h  # the low part
    poly -= a * (h + np.float32(0.5) * a)
    np.exp(poly, out=poly)
    np.square(h, out=h)
    h *= np.float32(-0.5)
    poly *= np.exp(h, out=h)
    poly *= t
    return poly


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.tanh(0.5 * x) + 0.5  # exact identity, no overflow


def _max(x: np.ndarray, axis: int) -> np.ndarray:
    return x.max(axis=axis, keepdims=True, initial=-np.inf)  # initial: an empty axis


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - _max(x, axis))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - _max(x, axis)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.zeros((), x.dtype), x)  # no overflow for large |x|


def _log_sumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, kept with size 1; an all -inf (or empty) axis gives
    -inf, as Axon (its shift is 0 where the max is infinite)."""
    m = _max(x, axis)
    m = np.where(np.isinf(m), np.zeros((), x.dtype), m)
    with np.errstate(divide="ignore"):  # log(0): the -inf of an all -inf axis
        return np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m


def _hard_sigmoid(x: np.ndarray, a: Mapping[str, Any]) -> np.ndarray:
    return np.clip(x * a["alpha"] + a["beta"], 0, 1).astype(x.dtype, copy=False)


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    # 0.5 x erfc(-x/sqrt 2), not 0.5 x (1 + erf(x/sqrt 2)), which cancels for x << 0
    if x.dtype == np.float64:
        return 0.5 * x * _erfc64(x * -_SQRT1_2)
    xf = np.asarray(x, np.float32).reshape(-1)
    c = _erfc_half(xf)
    y = np.where(xf < 0, c, 2 - c)
    y *= xf
    y *= np.float32(0.5)
    return y.reshape(x.shape).astype(x.dtype, copy=False)


# op -> fn(x, attrs); attrs carry the activation's options (axis, alpha, approximate)
ACTIVATIONS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "relu": lambda x, a: np.maximum(x, 0),
    "gelu": lambda x, a: _gelu(x, a["approximate"]),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "softmax": lambda x, a: _softmax(x, a["axis"]),
    "log_softmax": lambda x, a: _log_softmax(x, a["axis"]),
    "silu": lambda x, a: x * _sigmoid(x),
    "elu": lambda x, a: np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))),
    "leaky_relu": lambda x, a: np.where(x > 0, x, a["alpha"] * x),
    "softplus": lambda x, a: _softplus(x),
    "celu": lambda x, a: np.where(x > 0, x, a["alpha"] * np.expm1(
        np.minimum(x, 0) / a["alpha"])).astype(x.dtype, copy=False),
    "exp": lambda x, a: np.exp(x),
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": lambda x, a: x * _hard_sigmoid(x, a),
    "hard_tanh": lambda x, a: np.clip(x, -1, 1),
    "linear": lambda x, a: x,
    "log_sigmoid": lambda x, a: -_softplus(-x),
    "log_sumexp": lambda x, a: _log_sumexp(x, a["axis"]),
    "mish": lambda x, a: x * np.tanh(_softplus(x)),
    "relu6": lambda x, a: np.clip(x, 0, 6),
    "selu": lambda x, a: (a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(
        np.minimum(x, 0)))).astype(x.dtype, copy=False),
    "softsign": lambda x, a: x / (1 + np.abs(x)),
}


def _sigmoid_(x: np.ndarray) -> np.ndarray:
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


#: the element-wise activations that can overwrite their input ``fn(x, attrs) -> x``
IN_PLACE: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "relu": lambda x, a: np.maximum(x, 0, out=x), "tanh": lambda x, a: np.tanh(x, out=x),
    "sigmoid": lambda x, a: _sigmoid_(x), "exp": lambda x, a: np.exp(x, out=x),
    "relu6": lambda x, a: np.clip(x, 0, 6, out=x),
    "hard_tanh": lambda x, a: np.clip(x, -1, 1, out=x),
}
#: ops whose kernel returns a buffer of its own (or a view of one) that nothing else holds
FRESH_OUTPUT = frozenset({"dense", "conv", "conv_transpose", "depthwise_conv",
                          "separable_conv2d", "separable_conv3d", "dora", "lora"})


def _as_float(y: np.ndarray, ctx: KernelContext) -> np.ndarray:
    """Keep the compute dtype when ints meet floats (NumPy would promote to float64)."""
    return y.astype(ctx.dtype) if y.dtype.kind == "f" and y.dtype != ctx.dtype else y


def _rows_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x [..., in] @ w [in, out]`` as one 2-D product: NumPy runs a stacked ``matmul``
    slice by slice (8 rows of one token each read the weights 8 times). A half ``w`` is
    upcast by blocks (.half.matmul); a half bias is added to the float32 rows as is."""
    if w.dtype.name in HALF:
        rows = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        return half.matmul(rows, w).reshape(*x.shape[:-1], w.shape[-1])
    if x.ndim <= 2:
        return x @ w
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def _dense(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    y = _rows_matmul(ins[0], p["kernel"])
    if "bias" in p:
        y += p["bias"]
    return y


def inverted_dropout(x: np.ndarray, rate: float, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (any shape) with a fraction ``rate`` zeroed and the rest scaled by
    1/(1-rate), the mask drawn from the layer's RNG ``key`` (a uint64 scalar); returns
    ``(y, new key)``, y of x's shape and dtype. Shared by the dropout op and the adapters'
    lora_dropout, so both use the same mask rule."""
    keep, new = keep_mask(x.shape, rate, key)
    return np.where(keep, x / np.asarray(1.0 - rate, x.dtype), np.zeros((), x.dtype)), new


def keep_mask(shape: tuple, rate: float, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, new key)``: a boolean array of ``shape``, True with probability ``1 -
    rate``, drawn from the RNG ``key`` (a uint64 scalar); every dropout's mask rule."""
    rng = np.random.default_rng(int(key))
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep, np.asarray(rng.integers(0, 2**63 - 1), dtype=np.uint64)


def _mask(shape: tuple, rate: float, p: Mapping, ctx: KernelContext, x: np.ndarray
          ) -> tuple[np.ndarray, dict]:
    keep, key = keep_mask(shape, rate, p["key"])
    return keep, {"key": key}


def _dropout(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    x = ins[0]
    if not ctx.training or a["rate"] == 0.0:
        return x
    y, key = inverted_dropout(x, a["rate"], p["key"])
    return Stateful(y, {"key": key})


def _layer_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = ins[0]
    ax = a["axis"] % x.ndim
    mean = x.mean(axis=ax, keepdims=True)
    var = np.square(x - mean).mean(axis=ax, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.asarray(a["epsilon"], x.dtype))
    if "gamma" in p:
        y = y * shared.along(p["gamma"], x, ax)
    if "beta" in p:
        y = y + shared.along(p["beta"], x, ax)
    return y


def embed(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Rows of ``table [vocab, d]`` at integer ``ids (...)`` -> ``(..., d)``; an id outside
    ``[0, vocab)`` is an InputError (:func:`..shared.check_ids`)."""
    shared.check_ids(ids, table.shape[0])
    return np.take(table, ids, axis=0)


def _embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    return as_compute(embed(ins[0], p["kernel"]), ctx.dtype)  # a half table: rows upcast


def _constant(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    v = a["value"]
    if v.dtype.kind != "f":
        return v
    if "value" not in ctx.cache:
        ctx.cache["value"] = v.astype(ctx.dtype)
    return ctx.cache["value"]


def _custom(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    return _as_float(np.asarray(a["fn"](*ins, xp=np, **a["opts"])), ctx)


# -- transformer ops ----------------------------------------------------------------------------
def _attention(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    q, k, v = ins[:3]
    b, h, n, d = q.shape
    kv, m = k.shape[1], k.shape[2]
    s = np.matmul(shared.grouped_queries(q, kv), np.swapaxes(k, -1, -2))  # [b, kv, rep*n, m]
    s *= a["scale"] if a["scale"] is not None else d ** -0.5
    s = s.reshape(b, h, n, m)
    keep = shared.attention_keep(ins, a, np.arange)
    if keep is not None:
        np.copyto(s, np.finfo(s.dtype).min, where=~keep)
    s -= _max(s, -1)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    updates = {}
    if ctx.training and a.get("dropout", 0.0) > 0:  # on the probabilities [b, h, n, m]
        s, key = inverted_dropout(s, a["dropout"], p["key"])
        updates = {"key": key}
    y = np.matmul(s.reshape(b, kv, (h // kv) * n, m), v).reshape(b, h, n, d)
    return with_updates(y, updates)


def _rms_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = ins[0]
    ax = a["axis"] % x.ndim
    ms = np.square(x).mean(axis=ax, keepdims=True)
    ms += a["epsilon"]
    return shared.along(shared.shifted(p["gamma"], a), x, ax) * (x * (1.0 / np.sqrt(ms)))


def _rotary_embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x, pos = ins
    d = x.shape[-1]

    def make() -> tuple[np.ndarray, np.ndarray]:  # transformers' default rope, in float32
        inv = 1.0 / (a["theta"] ** (np.arange(0, d, 2, dtype=np.float32) / d))
        ang = pos[..., None].astype(np.float32) * inv
        ang = np.concatenate((ang, ang), -1)[:, None]  # [b, 1, s, d]
        return np.cos(ang).astype(x.dtype, copy=False), np.sin(ang).astype(x.dtype, copy=False)

    cos, sin = shared.rotary_tables(("numpy", d, a["theta"], x.dtype), pos, make,
                                    _same_positions, np.array)
    return shared.rotate(x, cos, sin, np.concatenate)


def _same_positions(kept: np.ndarray, pos: np.ndarray) -> bool:
    return kept.shape == pos.shape and bool(np.array_equal(kept, pos))


def _positions(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    x = ins[0]
    ax = a["axis"] % x.ndim
    r = np.arange(a["offset"], a["offset"] + x.shape[ax], dtype=np.int64)
    return np.broadcast_to(r, x.shape[:ax + 1]).copy()


def _tied_dense(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    y = _rows_matmul(ins[0], p["kernel"].T)
    if "bias" in p:
        y += p["bias"]
    return y


def _cast(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> np.ndarray:
    """graphdsl.mixed_precision's cast: a compute cast to a half dtype rounds and keeps
    float32 (NumPy computes half precision in float32); integers pass unchanged."""
    x = ins[0]
    if not is_float(x.dtype):
        return x
    return widened(x, a["dtype"]) if a["compute"] else x.astype(np_dtype(a["dtype"]),
                                                                 copy=False)


def _reduce_kernel(ufunc: np.ufunc):
    return lambda ins, p, a, ctx: _as_float(reduce(ufunc, ins), ctx)


KERNELS: dict[str, Callable] = {
    "constant": _constant,
    "custom": _custom,
    "dense": _dense,
    "dropout": _dropout,
    "layer_norm": _layer_norm,
    "embedding": _embedding,
    "add": _reduce_kernel(np.add),
    "subtract": _reduce_kernel(np.subtract),
    "multiply": _reduce_kernel(np.multiply),
    "concatenate": lambda ins, p, a, ctx: _as_float(np.concatenate(ins, axis=a["axis"]), ctx),
    "transpose": lambda ins, p, a, ctx: np.transpose(ins[0], a["axes"]),
    "pad": lambda ins, p, a, ctx: np.pad(ins[0], pad_widths(ins[0].ndim, a),
                                         constant_values=a["value"]),
    "bias": lambda ins, p, a, ctx: _as_float(ins[0] + p["bias"], ctx),
    "matmul": lambda ins, p, a, ctx: _as_float(np.matmul(ins[0], ins[1]), ctx),
    "attention": _attention,
    "rms_norm": _rms_norm,
    "rotary_embedding": _rotary_embedding,
    "positions": _positions,
    "tied_dense": _tied_dense,
    "cast": _cast,
    **shared.KERNELS,
    **resize.KERNELS,
    **dropouts.kernels(_mask),
    **shared.activation_kernels(ACTIVATIONS),
}


