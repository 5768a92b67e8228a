"""Conversion of array-likes (NumPy arrays, tensors, numbers, nested lists) to NumPy,
shared by every entry point that takes arrays (state values, predict inputs)."""
from __future__ import annotations

from typing import Any

import numpy as np

# torch dtypes NumPy has no type for: converted to float32 (no precision is lost)
_WIDEN = ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2",
          "torch.float8_e4m3fnuz", "torch.float8_e5m2fnuz")


def as_numpy(value: Any) -> np.ndarray:
    """``value`` as a NumPy array in native byte order (no copy when it already is one).
    A tensor is detached and moved to the CPU; bfloat16/float8 tensors become float32.
    Shape: unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        t = value.detach().cpu()
        if str(t.dtype) in _WIDEN:
            t = t.float()
        value = t.numpy()
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
