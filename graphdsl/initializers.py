"""Backend-independent initializers (Axon's set), seeded per parameter.

Every array is drawn in NumPy from ``seed`` and a stable hash of ``"layer.param"``,
so the same seed gives the same weights on every backend, and adding an unrelated
layer changes no other layer's weights.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .dtypes import HALF, np_dtype
from .errors import OptionError, RuleError
from .registry import DerivedInit

Initializer = Callable[[tuple, np.dtype, np.random.Generator], np.ndarray]


def _fans(shape: tuple) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _scaled(mode: str, dist: str, scale: float) -> Initializer:
    def init(shape: tuple, dtype: Any, rng: np.random.Generator) -> np.ndarray:
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if dist == "uniform":
            lim = math.sqrt(3.0 * var)
            return rng.uniform(-lim, lim, shape).astype(dtype)
        return (rng.standard_normal(shape) * math.sqrt(var)).astype(dtype)

    return init


INITIALIZERS: dict[str, Initializer] = {
    "zeros": lambda s, d, r: np.zeros(s, d),
    "ones": lambda s, d, r: np.ones(s, d),
    "uniform": lambda s, d, r: r.uniform(-1e-2, 1e-2, s).astype(d),
    "normal": lambda s, d, r: (r.standard_normal(s) * 1e-2).astype(d),
    "glorot_uniform": _scaled("fan_avg", "uniform", 1.0),
    "glorot_normal": _scaled("fan_avg", "normal", 1.0),
    "he_uniform": _scaled("fan_in", "uniform", 2.0),
    "he_normal": _scaled("fan_in", "normal", 2.0),
    "lecun_uniform": _scaled("fan_in", "uniform", 1.0),
    "lecun_normal": _scaled("fan_in", "normal", 1.0),
    # one uint64 seed for a stochastic layer's RNG (dropout)
    "rng_key": lambda s, d, r: np.asarray(r.integers(0, 2**63 - 1), dtype=np.uint64),
}


def check_initializer(init: Any, what: str) -> Any:
    """An initializer name from INITIALIZERS, a callable ``(shape, dtype, rng)``, or a
    registered function name."""
    known_name = isinstance(init, str) and init in INITIALIZERS
    if known_name or callable(init) or isinstance(init, DerivedInit):
        return init
    raise RuleError(f"unknown {what} {init!r}",
                    f"use one of {sorted(k for k in INITIALIZERS if k != 'rng_key')} "
                    "or a callable (shape, dtype, rng) -> array", OptionError)


def param_rng(seed: int, layer: str, param: str) -> np.random.Generator:
    """A generator that depends only on the seed and ``"layer.param"``."""
    digest = hashlib.blake2b(f"{int(seed)}:{layer}.{param}".encode(), digest_size=16).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def initialize(init: Any, shape: tuple, dtype: Any, seed: int, layer: str, param: str,
               derived_from: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One new array of ``shape`` and ``dtype`` from initializer ``init``, drawn from
    ``seed`` and ``"layer.param"``. ``derived_from`` (``{local name: array}`` of the
    layer's parameters made before it) feeds a DerivedInit, e.g. DoRA's magnitude
    ``[out]`` from the kernel ``[in, out]``, computed in ``dtype`` from a half-precision
    kernel (as PEFT computes the magnitude in the adapter's float32)."""
    dt = np_dtype(dtype)  # a half dtype (a policy's params) is drawn in float32, rounded
    draw = np.dtype(np.float32) if dt.name in HALF else dt
    if isinstance(init, DerivedInit):
        src = {k: v.astype(draw) if v.dtype.name in HALF else v
               for k, v in (derived_from or {}).items()}
        return np.asarray(init.fn(src), dtype=draw).reshape(shape).astype(dt, copy=False)
    fn = INITIALIZERS[init] if isinstance(init, str) else init
    arr = np.asarray(fn(tuple(shape), draw, param_rng(seed, layer, param)))
    if arr.shape != tuple(shape):
        raise RuleError(f"initializer for {layer}.{param} returned shape {arr.shape}, "
                        f"expected {tuple(shape)}", "return an array of the given shape")
    return arr.astype(dt, copy=False)
