"""Window arithmetic of conv and pooling (Axon / XLA semantics), shared by the shape rules
and every backend's kernels.

Per spatial axis of size ``n``: the input is dilated (``input_dilation`` d_in: d_in - 1
zeros between elements, size ``(n-1)*d_in + 1``), padded by ``(lo, hi)``, and a window of
``k`` taps ``kernel_dilation`` apart (span ``(k-1)*d + 1``) slides with stride ``s``:
``out = (dilated + lo + hi - span) // s + 1``. "same" is Axon's padding (Nx's
``Nx.Shape.to_padding_config``): ``((span-1)//2, (span-1) - (span-1)//2)`` whatever the
stride and the input size, so ``out = ceil(dilated / s)``. (Files of format version 1
padded "same" as TensorFlow does; ``tf_same_pads`` reads them.)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import OptionError, RuleError
from .shapes import is_int

#: the largest window size, stride, dilation or pad, and window (taps) a layer may have:
#: beyond this it is a mistake, not a model (as ops' MAX_SIZE for layer sizes)
MAX_WINDOW = 2**31 - 1


def _plain(value: Any) -> Any:
    """NumPy arrays and scalars as the Python lists / values they hold."""
    return value.tolist() if hasattr(value, "tolist") and hasattr(value, "dtype") else value


def _bounded(v: Any, lo: int) -> bool:
    return is_int(v) and lo <= int(v) <= MAX_WINDOW


def spatial_option(value: Any, what: str, lo: int = 1) -> int | tuple[int, ...]:
    """An int (broadcast over the spatial axes) or a tuple of ints, each >= ``lo`` (a NumPy
    integer or 1-d array is the same)."""
    value = _plain(value)
    vals = value if isinstance(value, (tuple, list)) else (value,)
    if not vals or not all(_bounded(v, lo) for v in vals):
        raise RuleError(f"{what} must be an int from {lo} to {MAX_WINDOW:,} or a tuple of "
                        f"them, got {value!r}", f"pass e.g. {what}=1 or {what}=(1, 1)",
                        OptionError)
    return tuple(int(v) for v in vals) if isinstance(value, (tuple, list)) else int(value)


def padding_option(value: Any) -> str | tuple[tuple[int, int], ...]:
    """"valid", "same", or explicit ``((lo, hi), ...)`` pairs (ints >= 0) per spatial axis
    (a NumPy array ``[n, 2]`` is the same)."""
    value = _plain(value)
    if isinstance(value, str) and value in ("valid", "same"):
        return value
    ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(_bounded(v, 0) for v in p)
        for p in value)
    if not ok:
        raise RuleError(f"padding must be 'valid', 'same' or a list of (lo, hi) pairs, got "
                        f"{value!r}", "pass padding='same' or padding=[(1, 1), (1, 1)]",
                        OptionError)
    return tuple((int(lo), int(hi)) for lo, hi in value)


def channels_option(value: Any) -> str:
    value = _plain(value)
    if not isinstance(value, str) or value not in ("last", "first"):
        raise RuleError(f"channels must be 'last' or 'first', got {value!r}",
                        "pass channels='last' ([batch, *spatial, channels]) or 'first'",
                        OptionError)
    return str(value)


def expand(value: int | tuple[int, ...], n: int, what: str) -> tuple[int, ...]:
    """``value`` for each of ``n`` spatial axes (a scalar is broadcast)."""
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise RuleError(f"{what} {value} has {len(value)} entries for an input with {n} "
                        "spatial axes", "pass one value per spatial axis, or one int",
                        OptionError)
    return value


@dataclass(frozen=True)
class Window:
    """The resolved geometry of one conv / pool over concrete or unknown spatial sizes:
    per axis ``kernel``, ``strides``, ``input_dilation``, ``kernel_dilation``, ``pads``
    ``(lo, hi)`` and ``out`` (None where the input size is unknown)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    out: tuple[int | None, ...]

    @property
    def trivial_dilation(self) -> bool:
        return all(d == 1 for d in self.input_dilation + self.kernel_dilation)


def window(spatial: Sequence[int | None], kernel: Any, a: Mapping[str, Any],
           what: str = "the window") -> Window:
    """Resolve ``a``'s strides / padding / dilations for inputs of ``spatial`` sizes.
    ``a["strides"]`` None means the kernel size (Axon's pooling default). A window larger
    than the padded input, or of more than MAX_WINDOW positions, is a RuleError."""
    n = len(spatial)
    k = expand(kernel, n, "kernel_size")
    s = expand(a["strides"] if a.get("strides") is not None else k, n, "strides")
    di = expand(a.get("input_dilation", 1), n, "input_dilation")
    dk = expand(a.get("kernel_dilation", 1), n, "kernel_dilation")
    pad = a.get("padding", "valid")
    if isinstance(pad, tuple) and len(pad) != n:
        raise RuleError(f"padding has {len(pad)} (lo, hi) pairs for an input with {n} "
                        "spatial axes", "pass one (lo, hi) pair per spatial axis", OptionError)
    spans = [(ki - 1) * d + 1 for ki, d in zip(k, dk)]
    if math.prod(spans) > MAX_WINDOW:
        raise RuleError(f"{what} (kernel_size {k}, kernel_dilation {dk}) spans "
                        f"{math.prod(spans):,} positions, more than {MAX_WINDOW:,}",
                        "use a kernel_size that fits the input, e.g. 3", OptionError)
    pads: list[tuple[int, int]] = []
    out: list[int | None] = []
    for i, (size, span) in enumerate(zip(spatial, spans)):
        if pad == "same":
            p = ((span - 1) // 2, span - 1 - (span - 1) // 2)
        else:
            p = (0, 0) if pad == "valid" else pad[i]
        pads.append(p)
        if size is None:
            out.append(None)
            continue
        full = (size - 1) * di[i] + 1 + p[0] + p[1] if size > 0 else p[0] + p[1]
        if full < span:
            raise RuleError(
                f"{what} (span {span} on spatial axis {i}) is larger than the padded input "
                f"({full}: size {size}, padding {p})",
                "use a smaller kernel_size / kernel_dilation, more padding, or "
                "padding='same'")
        out.append((full - span) // s[i] + 1)
    return Window(k, s, di, dk, tuple(pads), tuple(out))


def tf_same_pads(spatial: Sequence[int | None], kernel: Any, a: Mapping[str, Any]
                 ) -> tuple[tuple[int, int], ...] | None:
    """The pads "same" meant in files of format version 1 (TensorFlow's rule: total
    ``max((ceil(m/s)-1)*s + span - m, 0)``, the smaller half first, ``m`` the dilated
    size), or None where it depends on a size that is unknown (None)."""
    w = window([None] * len(spatial), kernel, {**a, "padding": "valid"})
    pads = []
    for size, k, s, di, dk in zip(spatial, w.kernel, w.strides, w.input_dilation,
                                  w.kernel_dilation):
        span = (k - 1) * dk + 1
        if s == 1 or span == 1:  # the rule does not depend on the size: Axon's pads
            pads.append(((span - 1) // 2, span - 1 - (span - 1) // 2))
            continue
        if size is None:
            return None
        m = (size - 1) * di + 1
        total = max((-(-m // s) - 1) * s + span - m, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def split_channels(shape: tuple, channels: str, what: str) -> tuple[int | None, tuple, Any]:
    """``(channel count, spatial sizes, batch)`` of a ``[batch, *spatial, C]`` (channels
    last) or ``[batch, C, *spatial]`` input; it needs at least one spatial axis."""
    if len(shape) < 3:
        raise RuleError(f"{what} needs an input [batch, *spatial, channels] with 1 to 3 "
                        f"spatial axes, got rank {len(shape)}",
                        "reshape the input to e.g. (None, 28, 28, 1) (channels last), or "
                        "(None, 1, 28, 28) with channels='first'")
    if channels == "last":
        return shape[-1], tuple(shape[1:-1]), shape[0]
    return shape[1], tuple(shape[2:]), shape[0]


def join_channels(batch: Any, spatial: tuple, c: Any, channels: str) -> tuple:
    return (batch, *spatial, c) if channels == "last" else (batch, c, *spatial)


def kernel_hwio(K: Any, channels: str) -> Any:
    """A conv kernel as ``[*kernel_size, in/groups, filters]``: as stored for channels
    "last"; Axon's ``[filters, in/groups, *kernel_size]`` (channels "first") permuted (a
    view). Works on NumPy arrays and torch tensors."""
    if channels == "last":
        return K
    return _permuted(K, (*range(2, K.ndim), 1, 0))


def kernel_from_hwio(W: Any, channels: str) -> Any:
    """The inverse of ``kernel_hwio``."""
    if channels == "last":
        return W
    return _permuted(W, (W.ndim - 1, W.ndim - 2, *range(W.ndim - 2)))


def _permuted(x: Any, order: tuple[int, ...]) -> Any:
    """``x`` with its axes in ``order``: a torch tensor's permute or a NumPy transpose."""
    return x.permute(*order) if hasattr(x, "permute") else x.transpose(*order)
