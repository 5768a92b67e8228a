"""Pooling layers with Axon's names, options and layouts: max_pool, avg_pool, lp_pool,
their adaptive forms (adaptive_avg_pool, adaptive_max_pool, adaptive_lp_pool) and the
global pools (global_avg_pool, global_max_pool, global_lp_pool).

Inputs are ``[batch, *spatial, channels]`` (``channels="last"``, Axon's default) or
``[batch, channels, *spatial]`` (``channels="first"``), with 1 to 3 spatial axes. The
window arithmetic (strides, padding, dilations) is ``graphdsl.windows``;
``pool_window`` resolves a pool's window for every backend, the adaptive pools' too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import OptionError, RuleError
from ..node import Node, caller_location, make_node
from ..registry import OpDef, register_op
from ..windows import (
    Window,
    channels_option,
    expand,
    join_channels,
    padding_option,
    spatial_option,
    split_channels,
    window,
)
from ._attrs import boolean

WINDOWED = ("max_pool", "avg_pool", "lp_pool")
ADAPTIVE = ("adaptive_avg_pool", "adaptive_max_pool", "adaptive_lp_pool")
#: the ops whose values are ``(sum of x**norm) ** (1/norm)`` (Axon's power average)
LP = ("lp_pool", "adaptive_lp_pool", "global_lp_pool")


def _norm(a: dict) -> dict:
    norm = a.get("norm", 2)
    if not (isinstance(norm, (int, float)) and not isinstance(norm, bool)
            and math.isfinite(norm) and norm > 0):
        raise RuleError(f"norm must be a finite number above 0 (the root is 1/norm), got "
                        f"{norm!r}", "pass norm=2 (Axon's default) or another positive "
                        "number", OptionError)
    return {"norm": float(norm)}


def _pool_attrs(op: str):
    def check(a: dict) -> dict:
        st = a.get("strides")
        return {"kernel_size": spatial_option(a.get("kernel_size", 1), "kernel_size"),
                "strides": None if st is None else spatial_option(st, "strides"),
                "padding": padding_option(a.get("padding", "valid")),
                "dilations": spatial_option(a.get("dilations", 1), "dilations"),
                "channels": channels_option(a.get("channels", "last")),
                **(_norm(a) if op in LP else {})}

    return check


def _adaptive_attrs(op: str):
    def check(a: dict) -> dict:
        size = a.get("output_size")
        return {"output_size": None if size is None else spatial_option(size, "output_size"),
                "channels": channels_option(a.get("channels", "last")),
                **(_norm(a) if op in LP else {})}

    return check


def _spatial(shape: tuple, a: Mapping, op: str) -> tuple[Any, tuple, Any]:
    c, spatial, batch = split_channels(shape, a["channels"], op)
    if len(spatial) > 3:
        raise RuleError(f"{op} supports 1 to 3 spatial axes, got {len(spatial)} "
                        f"(input {tuple(shape)})", "reshape the input to rank 3, 4 or 5")
    return c, spatial, batch


def _adaptive_window(spatial: Sequence[int | None], a: Mapping, op: str) -> Window:
    """Axon's adaptive window: per axis of size ``n`` and output size ``o``, strides
    ``n // o`` and size ``n - (o - 1) * strides``, no padding (``output_size`` None: the
    input's own sizes, a window of 1)."""
    n = len(spatial)
    if a["output_size"] is None:
        return window(spatial, 1, {"strides": 1})
    out = expand(a["output_size"], n, "output_size")
    for i, (size, o) in enumerate(zip(spatial, out)):
        if size is not None and size < o:
            raise RuleError(f"{op} output_size {o} on spatial axis {i} is larger than the "
                            f"input's size {size} (Axon's strides would be {size} // {o} = 0)",
                            f"pass an output_size of at most {size} on that axis", OptionError)
    if any(size is None for size in spatial):  # the window depends on the sizes
        return Window((1,) * n, (1,) * n, (1,) * n, (1,) * n, ((0, 0),) * n, tuple(out))
    strides = tuple(size // o for size, o in zip(spatial, out))
    kernel = tuple(size - (o - 1) * s for size, o, s in zip(spatial, out, strides))
    return window(spatial, kernel, {"strides": strides})


def pool_window(spatial: Sequence[int | None], a: Mapping, op: str) -> Window:
    """The window of pool ``op`` (a windowed or an adaptive one) with options ``a`` over
    inputs of ``spatial`` sizes; an adaptive pool's needs the sizes (its placeholder over
    an unknown size is a window of 1)."""
    if op in ADAPTIVE:
        return _adaptive_window(spatial, a, op)
    dilations = expand(a["dilations"], len(spatial), "dilations")
    return window(spatial, a["kernel_size"], {**a, "kernel_dilation": dilations},
                  f"the {op} window")


def _check_max_pads(w: Window, spatial: tuple) -> None:
    """max_pool's padding: at most half the dilated window on each side (torch's rule
    without dilations; torch keeps ``kernel_size // 2`` with them), so that no window is
    padding only (its max would be -inf, as torch returns), and none where the input is
    smaller than a dilation and a window's taps step over it."""
    for i, (p, k, d, s, out, size) in enumerate(zip(w.pads, w.kernel, w.kernel_dilation,
                                                     w.strides, w.out, spatial)):
        span = (k - 1) * d + 1
        what = f"kernel_size {k}" + (f", dilations {d}: span {span}" if d > 1 else "")
        if max(p) > span // 2:
            raise RuleError(f"max_pool padding {p} on spatial axis {i} is more than half "
                            f"the window ({what})",
                            f"pad at most {span // 2} on each side (or padding='same')",
                            OptionError)
        if size is None or size >= d:
            continue  # then every window holds an input position
        for o in range(out):
            j = max(0, -(-(p[0] - o * s) // d))  # the first tap at or after the input
            if j >= k or o * s + j * d >= p[0] + size:
                raise RuleError(f"max_pool window {o} on spatial axis {i} holds padding only "
                                f"(input size {size}, padding {p}, {what})",
                                "use smaller dilations or less padding", OptionError)


def _pool_shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        c, spatial, batch = _spatial(s[0], a, op)
        w = pool_window(spatial, a, op)
        if op == "max_pool":
            _check_max_pads(w, spatial)
        return join_channels(batch, w.out, c, a["channels"])

    return rule


_HOW = {"max": "maximum", "avg": "mean (padding counts as zeros, Axon's window_mean)",
        "lp": "power average (sum of x**norm) ** (1/norm) (padding counts as zeros; Axon's, "
              "no abs: NaN-making values are refused)"}
for _op in WINDOWED:
    register_op(OpDef(
        _op, _pool_shape(_op), check_attrs=_pool_attrs(_op),
        doc=f"Window {_HOW[_op.split('_')[0]]} over the spatial axes: kernel_size, strides "
            "(default: kernel_size), padding, dilations, channels"
            f"{', norm (default 2)' if _op in LP else ''}; [batch, *spatial, C] -> "
            "[batch, *out, C]."))
for _op in ADAPTIVE:
    register_op(OpDef(
        _op, _pool_shape(_op), check_attrs=_adaptive_attrs(_op),
        doc=f"Adaptive {_HOW[_op.split('_')[1]]}: output_size (default: the input's sizes), "
            f"channels{', norm (default 2)' if _op in LP else ''}; Axon's window (strides "
            "n // out, size n - (out - 1) * strides); [batch, *spatial, C] -> "
            "[batch, *output_size, C]."))


def _windowed(op: str, x: Node, opts: dict, name: str | None) -> Node:
    return make_node(op, [x], opts, name, where=caller_location())


def max_pool(x: Node, kernel_size: int | tuple = 1, strides: int | tuple | None = None,
             padding: Any = "valid", dilations: int | tuple = 1, channels: str = "last",
             name: str | None = None) -> Node:
    """Max over windows of ``kernel_size`` taps ``dilations`` apart.

    ``[batch, *spatial, C] -> [batch, *out, C]``.

    Padded positions never win; a pad is at most half the dilated window (torch's rule
    without dilations) and no window is padding only.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        kernel_size: window size, an int or one per spatial axis.
        strides: step, an int or one per axis; default the kernel size (Axon's).
        padding: ``"valid"``, ``"same"`` (Axon's rule, ``out = ceil(n / strides)``) or one
            ``(lo, hi)`` pair per spatial axis.
        dilations: window dilation, an int or one per axis.
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"max_pool_{n}"``).

    Returns:
        (Node): ``[batch, *out, C]``.

    Raises:
        ShapeError: rank below 3 or a window larger than the padded input.
        OptionError: a bad size, padding or channels.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.max_pool(x, kernel_size=2), (1, 8, 8, 3))
        (1, 4, 4, 3)
    """
    return _windowed("max_pool", x, {"kernel_size": kernel_size, "strides": strides,
                                     "padding": padding, "dilations": dilations,
                                     "channels": channels}, name)


def avg_pool(x: Node, kernel_size: int | tuple = 1, strides: int | tuple | None = None,
             padding: Any = "valid", dilations: int | tuple = 1, channels: str = "last",
             name: str | None = None) -> Node:
    """Mean over windows of ``kernel_size`` (Axon's ``window_mean``).

    Padded positions count as zeros (torch's ``count_include_pad=True``) and the mean
    divides by ``prod(kernel_size)``. Shapes as ``max_pool``.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        kernel_size: window size, an int or one per spatial axis.
        strides: step, an int or one per axis; default the kernel size (Axon's).
        padding: ``"valid"``, ``"same"`` (Axon's rule, ``out = ceil(n / strides)``) or one
            ``(lo, hi)`` pair per spatial axis.
        dilations: window dilation, an int or one per axis.
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"avg_pool_{n}"``).

    Returns:
        (Node): ``[batch, *out, C]``.

    Raises:
        ShapeError: rank below 3 or a window larger than the padded input.
        OptionError: a bad size, padding or channels.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.avg_pool(x, 3, strides=1, padding='same'), (1, 8, 8, 3))
        (1, 8, 8, 3)
    """
    return _windowed("avg_pool", x, {"kernel_size": kernel_size, "strides": strides,
                                     "padding": padding, "dilations": dilations,
                                     "channels": channels}, name)


def lp_pool(x: Node, kernel_size: int | tuple = 1, strides: int | tuple | None = None,
            padding: Any = "valid", dilations: int | tuple = 1, channels: str = "last",
            norm: float = 2, name: str | None = None) -> Node:
    """Axon's power average over windows: ``(sum of x**norm) ** (1/norm)``.

    Padding counts as zeros.

    No ``abs`` (Axon's and torch's formula), so where a negative value would make NaN (a
    negative input with a fractional norm, a negative window sum with an odd one) the run
    is refused. Shapes as ``max_pool``.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        kernel_size: window size, an int or one per spatial axis.
        strides: step, an int or one per axis; default the kernel size (Axon's).
        padding: ``"valid"``, ``"same"`` (Axon's rule, ``out = ceil(n / strides)``) or one
            ``(lo, hi)`` pair per spatial axis.
        dilations: window dilation, an int or one per axis.
        channels: ``"last"`` or ``"first"``.
        norm: the power, > 0.
        name: layer name (default ``"lp_pool_{n}"``).

    Returns:
        (Node): ``[batch, *out, C]``.

    Raises:
        ShapeError: rank below 3 or a window larger than the padded input.
        OptionError: a bad size, padding or channels.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.lp_pool(x, kernel_size=2, norm=2), (1, 8, 8, 3))
        (1, 4, 4, 3)
    """
    return _windowed("lp_pool", x, {"kernel_size": kernel_size, "strides": strides,
                                    "padding": padding, "dilations": dilations,
                                    "channels": channels, "norm": norm}, name)


def adaptive_avg_pool(x: Node, output_size: int | tuple | None = None,
                      channels: str = "last", name: str | None = None) -> Node:
    """Mean over Axon's adaptive windows: ``[batch, *spatial, C] -> [batch, *output_size, C]``.

    On an axis of size ``n`` to ``o`` outputs: strides ``n // o`` and window
    ``n - (o-1) * (n // o)`` (torch's adaptive pools agree where ``o`` divides ``n``).

    Args:
        x: input node ``[batch, *spatial, C]``, spatial sizes known.
        output_size: the output's spatial sizes, an int or one per axis (default: the
            input's).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"adaptive_avg_pool_{n}"``).

    Returns:
        (Node): ``[batch, *output_size, C]``.

    Raises:
        ShapeError: rank below 3.
        OptionError: ``output_size`` above the input's size.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.adaptive_avg_pool(x, output_size=2), (1, 8, 8, 3))
        (1, 2, 2, 3)
    """
    return _windowed("adaptive_avg_pool", x, {"output_size": output_size,
                                              "channels": channels}, name)


def adaptive_max_pool(x: Node, output_size: int | tuple | None = None,
                      channels: str = "last", name: str | None = None) -> Node:
    """Max over Axon's adaptive windows (see ``adaptive_avg_pool``).

    Args:
        x: input node ``[batch, *spatial, C]``, spatial sizes known.
        output_size: the output's spatial sizes, an int or one per axis (default: the
            input's).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"adaptive_max_pool_{n}"``).

    Returns:
        (Node): ``[batch, *output_size, C]``.

    Raises:
        ShapeError: rank below 3.
        OptionError: ``output_size`` above the input's size.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.adaptive_max_pool(x, output_size=(4, 2)), (1, 8, 8, 3))
        (1, 4, 2, 3)
    """
    return _windowed("adaptive_max_pool", x, {"output_size": output_size,
                                              "channels": channels}, name)


def adaptive_lp_pool(x: Node, output_size: int | tuple | None = None,
                     channels: str = "last", norm: float = 2,
                     name: str | None = None) -> Node:
    """``lp_pool``'s power average over Axon's adaptive windows.

    Windows as ``adaptive_avg_pool``.

    Args:
        x: input node ``[batch, *spatial, C]``, spatial sizes known.
        output_size: the output's spatial sizes, an int or one per axis (default: the
            input's).
        channels: ``"last"`` or ``"first"``.
        norm: the power, > 0.
        name: layer name (default ``"adaptive_lp_pool_{n}"``).

    Returns:
        (Node): ``[batch, *output_size, C]``.

    Raises:
        ShapeError: rank below 3.
        OptionError: ``output_size`` above the input's size.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.adaptive_lp_pool(x, output_size=4), (1, 8, 8, 3))
        (1, 4, 4, 3)
    """
    return _windowed("adaptive_lp_pool", x, {"output_size": output_size,
                                             "channels": channels, "norm": norm}, name)


def _global_attrs(op: str):
    def check(a: dict) -> dict:
        return {"keep_axes": boolean(a.get("keep_axes", False), "keep_axes"),
                "channels": channels_option(a.get("channels", "last")),
                **(_norm(a) if op in LP else {})}

    return check


def _global_shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        c, spatial, batch = split_channels(s[0], a["channels"], op)
        if not a["keep_axes"]:
            return (batch, c)
        return join_channels(batch, (1,) * len(spatial), c, a["channels"])

    return rule


for _op, _how in (("global_avg_pool", "Mean"), ("global_max_pool", "Max"),
                  ("global_lp_pool", "(sum of x**norm) ** (1/norm) (norm: default 2)")):
    register_op(OpDef(
        _op, _global_shape(_op), check_attrs=_global_attrs(_op),
        doc=f"{_how} over every spatial axis: [batch, *spatial, C] -> [batch, C] "
            "(keep_axes=True: [batch, 1, ..., C]); channels as conv."))


def global_avg_pool(x: Node, keep_axes: bool = False, channels: str = "last",
                    name: str | None = None) -> Node:
    """Mean over the spatial axes: ``[batch, *spatial, C] -> [batch, C]``.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        keep_axes: keep the spatial axes with size 1 (``[batch, 1, ..., C]``).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"global_avg_pool_{n}"``).

    Returns:
        (Node): ``[batch, C]`` (or ``[batch, 1, ..., C]`` with ``keep_axes``).

    Raises:
        ShapeError: rank below 3.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.global_avg_pool(x), (2, 8, 8, 3))
        (2, 3)
    """
    return make_node("global_avg_pool", [x], {"keep_axes": keep_axes, "channels": channels},
                     name, where=caller_location())


def global_max_pool(x: Node, keep_axes: bool = False, channels: str = "last",
                    name: str | None = None) -> Node:
    """Max over the spatial axes: ``[batch, *spatial, C] -> [batch, C]``.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        keep_axes: keep the spatial axes with size 1 (``[batch, 1, ..., C]``).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"global_max_pool_{n}"``).

    Returns:
        (Node): ``[batch, C]`` (or ``[batch, 1, ..., C]`` with ``keep_axes``).

    Raises:
        ShapeError: rank below 3.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.global_max_pool(x, keep_axes=True), (2, 8, 8, 3))
        (2, 1, 1, 3)
    """
    return make_node("global_max_pool", [x], {"keep_axes": keep_axes, "channels": channels},
                     name, where=caller_location())


def global_lp_pool(x: Node, keep_axes: bool = False, channels: str = "last",
                   norm: float = 2, name: str | None = None) -> Node:
    """Axon's power average over the spatial axes, ``(sum of x**norm) ** (1/norm)``.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3).
        keep_axes: keep the spatial axes with size 1 (``[batch, 1, ..., C]``).
        channels: ``"last"`` or ``"first"``.
        norm: the power, > 0.
        name: layer name (default ``"global_lp_pool_{n}"``).

    Returns:
        (Node): ``[batch, C]`` (or ``[batch, 1, ..., C]`` with ``keep_axes``).

    Raises:
        ShapeError: rank below 3.
        OptionError: a bad ``norm``.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.global_lp_pool(x), (2, 8, 8, 3))
        (2, 3)
    """
    return make_node("global_lp_pool", [x], {"keep_axes": keep_axes, "channels": channels,
                                             "norm": norm}, name, where=caller_location())
