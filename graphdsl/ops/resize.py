"""Axon's resize layer (``Axon.resize`` / ``Axon.Layers.resize``): rank-4 images resized
on their two spatial axes by nearest, bilinear, bicubic, lanczos3 or lanczos5 sampling,
with jax.image.resize's (``scale_and_translate``'s) arithmetic, as Axon has it.

Each spatial axis is resized on its own (an axis whose size does not change is left as
it is). ``nearest`` takes input ``floor((j + 0.5) * n_in / n_out)`` for output ``j``
(torch's "nearest-exact"), in float32 as Axon computes it. The other methods multiply the
axis by a weight matrix ``[n_out, n_in]`` (``resize_weights``): output ``j`` samples
the input at ``(j + 0.5) * n_in / n_out - 0.5``, each input ``i`` weighted by the
method's filter at ``|sample - i| / s`` (``s = max(1, n_in / n_out)`` with ``antialias``,
so downsampling widens the filter; 1 without), the weights normalized to sum to 1 and
those of magnitude at most ``1000 * 2**-23`` (before normalizing) zeroed. Every backend
uses the same indices and weights, which need the spatial sizes at graph construction.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from ..errors import OptionError, RuleError, fmt_shape
from ..node import Node, caller_location, make_node
from ..registry import OpDef, register_op
from ..windows import channels_option
from ._attrs import MAX_SIZE, boolean, positive_int


def _cubic(x: np.ndarray) -> np.ndarray:  # Keys' cubic with a = -0.5 (jax's; torch: -0.75)
    out = np.where(x >= 1, ((-0.5 * x + 2.5) * x - 4) * x + 2, (1.5 * x - 2.5) * x * x + 1)
    return np.where(x >= 2, 0.0, out)


def _lanczos(r: int) -> Callable[[np.ndarray], np.ndarray]:
    def fill(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = r * np.sin(np.pi * x) * np.sin(np.pi * x / r) / (np.pi**2 * x**2)
        return np.where(x > r, 0.0, np.where(x > 1e-3, y, 1.0))

    return fill


#: the filters of the weighted methods, of the distance in input steps
FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bilinear": lambda x: np.maximum(0.0, 1.0 - x), "bicubic": _cubic,
    "lanczos3": _lanczos(3), "lanczos5": _lanczos(5)}
METHODS = ("nearest", *FILTERS)


@lru_cache(maxsize=256)
def resize_weights(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """The float64 ``[n_out, n_in]`` matrix that resizes an axis of ``n_in`` to ``n_out``
    by ``method`` (bilinear, bicubic, lanczos3, lanczos5): output = weights @ input on
    that axis (read-only, cached)."""
    inv = n_in / n_out
    scale = max(1.0, inv) if antialias else 1.0
    sample = (np.arange(n_out) + 0.5) * inv - 0.5
    w = FILTERS[method](np.abs(sample[None, :] - np.arange(n_in)[:, None]) / scale)
    total = w.sum(0, keepdims=True)
    w = np.where(np.abs(w) > 1000 * 2.0**-23, w / np.where(total != 0, total, 1.0), 0.0)
    out = np.ascontiguousarray(w.T)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def nearest_indices(n_in: int, n_out: int) -> tuple[int, ...]:
    """The input index of each of ``n_out`` outputs: ``floor((j + 0.5) * (n_in /
    n_out))`` in float32 (Axon's arithmetic), at most ``n_in - 1``."""
    pos = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
    return tuple(int(i) for i in np.minimum(np.floor(pos), n_in - 1))


def spatial_axes(channels: str) -> tuple[int, int]:
    """The two spatial axes of a rank-4 input: (1, 2) channels last, (2, 3) first."""
    return (1, 2) if channels == "last" else (2, 3)


def _attrs(a: dict) -> dict:
    size = a.get("size")
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise RuleError(f"size must be a pair (height, width) of the output's spatial "
                        f"sizes, got {size!r}", "pass e.g. size=(4, 4)", OptionError)
    method = a.get("method", "nearest")
    if method not in METHODS:
        raise RuleError(f"method must be one of {', '.join(METHODS)}, got {method!r}",
                        "pass method='nearest' (Axon's default) or another of them",
                        OptionError)
    return {"size": tuple(positive_int(s, "size") for s in size), "method": method,
            "antialias": boolean(a.get("antialias", True), "antialias"),
            "channels": channels_option(a.get("channels", "last"))}


def _shape(s: list, a: dict) -> tuple:
    shape = s[0]
    if len(shape) != 4:
        raise RuleError(f"resize needs a rank-4 input (Axon's rule: [batch, H, W, C], or "
                        f"[batch, C, H, W] with channels='first'), got {fmt_shape(shape)}",
                        "reshape the input to rank 4 (e.g. add a size-1 axis)")
    out = list(shape)
    for axis, n in zip(spatial_axes(a["channels"]), a["size"]):
        if shape[axis] is None:
            raise RuleError(f"resize needs known spatial sizes (its sampling weights are "
                            f"fixed at construction), got {fmt_shape(shape)}",
                            "give the input fixed spatial sizes, e.g. (None, 28, 28, 3)")
        out[axis] = n
    if math.prod(a["size"]) > MAX_SIZE:
        raise RuleError(f"resize to {a['size']} makes more than {MAX_SIZE:,} positions per "
                        "image", "pass a smaller size", OptionError)
    return tuple(out)


register_op(OpDef(
    "resize", _shape, check_attrs=_attrs, output_alias="inputs",  # a size kept: x itself
    doc="Axon's resize of a rank-4 image on its 2 spatial axes to `size` (h, w): method "
        "nearest (floor((j+0.5)*in/out), torch's nearest-exact), bilinear, bicubic (Keys "
        "a=-0.5), lanczos3 or lanczos5 (jax.image.resize's weights); antialias (default "
        "True) widens the filter when downsampling; channels last/first. No parameters.",
))


def resize(x: Node, size: tuple[int, int], *, method: str = "nearest",
           antialias: bool = True, channels: str = "last", name: str | None = None) -> Node:
    """Resize a ``[batch, H, W, C]`` image to ``[batch, *size, C]`` (Axon's ``resize``).

    jax.image.resize's sampling. Methods: ``"nearest"`` (torch's ``nearest-exact``),
    ``"bilinear"`` (with ``antialias=False``: torch's ``bilinear``, ``align_corners=False``),
    ``"bicubic"`` (Keys' cubic with a = -0.5, torch's antialiased bicubic's; torch's plain
    bicubic uses -0.75), ``"lanczos3"``, ``"lanczos5"``.

    Args:
        x: ``[batch, H, W, C]`` (``channels="first"``: ``[batch, C, H, W]``), spatial sizes
            known.
        size: ``(H', W')``.
        method: the sampling method above.
        antialias: widen the filter by the scale when downsampling (no effect when
            upsampling or with ``"nearest"``).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"resize_{n}"``).

    Returns:
        (Node): ``[batch, H', W', C]``.

    Raises:
        ShapeError: rank is not 4 or a spatial size is unknown.
        OptionError: an unknown method or a bad size.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 4, 3))
        >>> gd.get_output_shape(gd.resize(x, (8, 8), method="bilinear"), (1, 4, 4, 3))
        (1, 8, 8, 3)
    """
    return make_node("resize", [x], {"size": size, "method": method, "antialias": antialias,
                                     "channels": channels}, name, where=caller_location())
