"""Attribute values as JSON data and back: numbers, strings, booleans, None, tuples (JSON
arrays, read back as tuples), string-keyed dicts, NumPy arrays as ``{"$array": {dtype,
shape, data}}`` and registered functions as ``{"$function": name}`` / ``{"$derived":
name}`` (looked up in ``graphdsl.custom``, never imported). Non-finite floats, unknown
dtypes and unregistered functions are SerializationErrors.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..custom import FUNCTIONS, function_name
from ..dtypes import is_float, np_dtype
from ..errors import SerializationError
from ..registry import DerivedInit

#: dtypes an inline ``{"$array": ...}`` attribute may have
ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "float16", "bfloat16", "float32", "float64")
MAX_DEPTH = 32  # nesting of attribute values (lists in lists ...); also the most axes of a shape


def encode_value(value: Any, ctx: str, depth: int = 0) -> Any:
    """An attribute value as JSON data. Tuples and lists become arrays, NumPy arrays become
    ``{"$array": {dtype, shape, data}}``, registered functions ``{"$function": name}``."""
    if depth > MAX_DEPTH:
        raise SerializationError(f"{ctx} is nested more than {MAX_DEPTH} levels deep",
                                 fix="flatten the attribute value")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):  # np.bool_ is neither
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise SerializationError(f"{ctx} is {float(value)}, which JSON cannot hold",
                                     fix="use a finite number")
        return float(value)
    if isinstance(value, (tuple, list)):
        return [encode_value(v, f"{ctx}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.name not in ARRAY_DTYPES:
            raise SerializationError(f"{ctx} is an array of dtype {value.dtype}",
                                     fix=f"use one of {ARRAY_DTYPES}")
        if is_float(value.dtype) and not np.all(np.isfinite(value)):
            raise SerializationError(f"{ctx} holds NaN or infinity", fix="use finite values")
        return {"$array": {"dtype": value.dtype.name, "shape": list(value.shape),
                           "data": value.tolist()}}  # a half value's decimal is exact
    if isinstance(value, Mapping):
        out = {}
        for k in sorted(value, key=str):
            if not isinstance(k, str):
                raise SerializationError(f"{ctx} has a non-string key {k!r}",
                                         fix="use string keys in attribute dicts")
            if k.startswith("$"):
                raise SerializationError(f"{ctx} has the key {k!r}; keys starting with '$' "
                                         "are reserved by the file format",
                                         fix="rename the key")
            out[k] = encode_value(value[k], f"{ctx}.{k}", depth + 1)
        return out
    if isinstance(value, DerivedInit) or callable(value):
        fn = value.fn if isinstance(value, DerivedInit) else value
        name = function_name(fn)
        if name is None:
            label = getattr(fn, "__qualname__", type(fn).__name__)
            raise SerializationError(
                f"{ctx} is the function {label}, which is not registered, so the file "
                "could not name it",
                fix="register it before saving: @graphdsl.register_function(\"my_fn\") "
                    "on the function (loading looks the name up in the same registry)")
        return {"$derived" if isinstance(value, DerivedInit) else "$function": name}
    raise SerializationError(f"{ctx} is a {type(value).__name__}, which the file format "
                             "cannot hold",
                             fix="use numbers, strings, booleans, None, tuples, dicts, "
                                 "NumPy arrays or registered functions")


def _check_nested(data: Any, shape: tuple, kind: str, ctx: str) -> None:
    """Check that nested lists ``data`` have exactly ``shape`` and leaves of ``kind``."""
    if not shape:
        if kind == "b":
            ok = isinstance(data, bool)
        elif kind in "iu":
            ok = isinstance(data, int) and not isinstance(data, bool)
        else:
            ok = isinstance(data, (int, float)) and not isinstance(data, bool)
        if not ok:
            raise SerializationError(f"{ctx}: array element {data!r} does not fit the dtype",
                                     fix="write numbers that fit the declared dtype")
        return
    if not isinstance(data, list) or len(data) != shape[0]:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise SerializationError(f"{ctx}: array data does not match its shape "
                                 f"(expected {shape[0]} entries, got {got})",
                                 fix="make 'data' nested lists of exactly 'shape'")
    for item in data:
        _check_nested(item, shape[1:], kind, ctx)


def _decode_array(spec: Any, ctx: str) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise SerializationError(f"{ctx}: '$array' needs exactly the keys dtype, shape, data",
                                 fix='write {"$array": {"dtype": "float32", "shape": [2], '
                                     '"data": [1.0, 2.0]}}')
    dt, shape = spec["dtype"], spec["shape"]
    if dt not in ARRAY_DTYPES:
        raise SerializationError(f"{ctx}: unsupported array dtype {dt!r}",
                                 fix=f"use one of {ARRAY_DTYPES}")
    if (not isinstance(shape, list) or len(shape) > MAX_DEPTH or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise SerializationError(f"{ctx}: array shape {shape!r} is not a list of sizes",
                                 fix="write the shape as a list of non-negative ints")
    kind = "f" if is_float(dt) else np.dtype(dt).kind
    _check_nested(spec["data"], tuple(shape), kind, ctx)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            arr = np.array(spec["data"], dtype=np_dtype(dt)).reshape(shape)
    except (ValueError, OverflowError, TypeError) as e:
        raise SerializationError(f"{ctx}: array data does not fit dtype {dt} ({e})",
                                 fix="write values in the dtype's range") from None
    if kind == "f" and not np.all(np.isfinite(arr)):
        raise SerializationError(f"{ctx}: array data overflows dtype {dt}",
                                 fix="write values in the dtype's range")
    return arr


def lookup_function(name: Any, ctx: str) -> Callable[..., Any]:
    """The registered function called ``name``; anything else is a SerializationError
    naming ``ctx`` (loading never imports code)."""
    if not isinstance(name, str) or name not in FUNCTIONS:
        raise SerializationError(
            f"{ctx} names the function {name!r}, which is not registered here "
            "(loading never imports code)",
            fix=f"register it before loading: @graphdsl.register_function({name!r}) on "
                f"the function; registered now: {sorted(FUNCTIONS) or 'none'}")
    return FUNCTIONS[name]


def decode_value(value: Any, ctx: str, depth: int = 0) -> Any:
    """The inverse of ``encode_value``: arrays come back as tuples."""
    if depth > MAX_DEPTH:
        raise SerializationError(f"{ctx} is nested more than {MAX_DEPTH} levels deep",
                                 fix="flatten the attribute value")
    if isinstance(value, list):
        return tuple(decode_value(v, f"{ctx}[{i}]", depth + 1) for i, v in enumerate(value))
    if isinstance(value, dict):
        special = [k for k in value if k.startswith("$")]
        if special:
            if len(value) != 1 or special[0] not in ("$array", "$function", "$derived"):
                raise SerializationError(
                    f"{ctx} has reserved key(s) {special}; a tagged value is exactly one of "
                    '{"$array": ...}, {"$function": name}, {"$derived": name}',
                    fix="remove the '$' keys or use one tagged form")
            tag = special[0]
            if tag == "$array":
                return _decode_array(value[tag], ctx)
            fn = lookup_function(value[tag], ctx)
            return fn if tag == "$function" else DerivedInit(fn, value[tag])
        return {k: decode_value(v, f"{ctx}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise SerializationError(f"{ctx} is {value}", fix="use a finite number")
    return value
