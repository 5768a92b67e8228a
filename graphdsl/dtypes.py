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
    """The NumPy dtype of ``name`` (a dtype name, a NumPy dtype, or a torch dtype such as
    ``torch.bfloat16``); bfloat16 is ``ml_dtypes.bfloat16``. Unknown names and a missing
    ml_dtypes are a GraphDSLError with the fix."""
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
    """The canonical name of a dtype given as a string, NumPy dtype or torch dtype:
    ``"bfloat16"``, ``"float32"``, ...; ``torch.bfloat16`` -> ``"bfloat16"``."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if type(dtype).__module__ == "torch":  # torch.dtype, without importing torch
        return str(dtype).removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise GraphDSLError(f"unknown dtype {dtype!r}",
                            fix=f"use one of {', '.join(FLOATS)}") from None


def is_float(dtype: Any) -> bool:
    """True for float16, bfloat16, float32 and float64 (bfloat16's NumPy kind is 'V')."""
    return dtype_name(dtype) in FLOATS
