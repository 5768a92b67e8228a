"""Floating-point dtypes by name, half precision included. NumPy has float16 but no
bfloat16: that comes from ``ml_dtypes`` (the ``half`` extra), imported only when a bfloat16
value is asked for, so ``import graphdsl`` needs NumPy alone."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import GraphDSLError

HALF = ("float16", "bfloat16")
FLOATS = ("float16", "bfloat16", "float32", "float64")


def np_dtype(name: Any) -> np.dtype:
    """The NumPy dtype of ``name``; bfloat16 is ``ml_dtypes.bfloat16`` (the ``half`` extra).

    Args:
        name: a dtype name, a NumPy dtype, or a torch dtype such as ``torch.bfloat16``.

    Returns:
        (np.dtype): the dtype.

    Raises:
        GraphDSLError: an unknown name, or bfloat16 without ml_dtypes (with the fix).

    Examples:
        >>> from graphdsl.dtypes import np_dtype
        >>> np_dtype("float16"), np_dtype("bfloat16").name
        (dtype('float16'), 'bfloat16')
    """
    key = dtype_name(name)
    if key != "bfloat16":
        try:
            return np.dtype(key)
        except TypeError:
            raise GraphDSLError(f"unknown dtype {name!r}",
                                fix=f"use one of {', '.join(FLOATS)}") from None
    try:
        import ml_dtypes
    except ImportError:
        raise GraphDSLError("bfloat16 values need the ml_dtypes package",
                            fix="pip install 'graphdsl[half]' (or ml_dtypes), or ask for "
                                "dtype='float32'") from None
    return np.dtype(ml_dtypes.bfloat16)


def dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype given as a string, NumPy dtype or torch dtype.

    Args:
        dtype: e.g. ``"torch.bfloat16"``, ``np.float32``, ``torch.float16``.

    Returns:
        (str): ``"bfloat16"``, ``"float32"``, ...

    Raises:
        GraphDSLError: not a dtype.

    Examples:
        >>> from graphdsl.dtypes import dtype_name
        >>> dtype_name("torch.bfloat16"), dtype_name(np.float32)
        ('bfloat16', 'float32')
    """
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if type(dtype).__module__ == "torch":  # torch.dtype, without importing torch
        return str(dtype).removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise GraphDSLError(f"unknown dtype {dtype!r}",
                            fix=f"use one of {', '.join(FLOATS)}") from None


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given by their 16 bits (``uint16``, any shape) as a new float32
    array of that shape, exactly: a bfloat16 is the high half of a float32, so this is one
    shift (about twice as fast as ml_dtypes' cast, and needs no ml_dtypes).

    Args:
        bits: the values' bits, ``uint16`` (native or little-endian), any shape.

    Returns:
        (np.ndarray): float32, ``bits``' shape and layout.

    Examples:
        >>> from graphdsl.dtypes import bfloat16_bits_to_float32
        >>> bfloat16_bits_to_float32(np.array([0x3F80, 0xC000], np.uint16))
        array([ 1., -2.], dtype=float32)
    """
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)


def float_name(dtype: Any) -> str | None:
    """The name of ``dtype`` when it is one of the four floating dtypes, else None.

    Args:
        dtype: anything; a dtype as ``dtype_name`` takes it.

    Returns:
        (str | None): ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``; None
        for any other dtype and for what is no dtype at all (callers say why it is wrong).

    Examples:
        >>> from graphdsl.dtypes import float_name
        >>> float_name("torch.bfloat16"), float_name("int8"), float_name("nonsense")
        ('bfloat16', None, None)
    """
    try:
        name = dtype_name(dtype)
    except GraphDSLError:
        return None
    return name if name in FLOATS else None


def is_float(dtype: Any) -> bool:
    """Whether ``dtype`` is float16, bfloat16, float32 or float64 (bfloat16's NumPy kind is 'V').

    Args:
        dtype: a dtype, as ``dtype_name`` takes it.

    Returns:
        (bool): True for the four floating dtypes.

    Raises:
        GraphDSLError: not a dtype.

    Examples:
        >>> from graphdsl.dtypes import is_float
        >>> is_float("bfloat16"), is_float(np.int64)
        (True, False)
    """
    return dtype_name(dtype) in FLOATS
