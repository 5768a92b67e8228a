"""Pooling layers with Axon's names, options and layouts: max_pool, avg_pool,
global_avg_pool, global_max_pool.

Inputs are ``[batch, *spatial, channels]`` (``channels="last"``, Axon's default) or
``[batch, channels, *spatial]`` (``channels="first"``), with 1 to 3 spatial axes. The
window arithmetic (strides, padding, dilations) is :mod:`graphdsl.windows`.
"""
from __future__ import annotations

from typing import Any

from ..errors import OptionError, RuleError
from ..node import Node, caller_location, make_node
from ..registry import OpDef, register_op
from ..windows import (
    channels_option,
    join_channels,
    padding_option,
    spatial_option,
    split_channels,
    window,
)
from ._attrs import boolean


def _pool_attrs(a: dict) -> dict:
    st = a.get("strides")
    return {"kernel_size": spatial_option(a.get("kernel_size", 1), "kernel_size"),
            "strides": None if st is None else spatial_option(st, "strides"),
            "padding": padding_option(a.get("padding", "valid")),
            "channels": channels_option(a.get("channels", "last"))}


def _pool_shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        c, spatial, batch = split_channels(s[0], a["channels"], op)
        w = window(spatial, a["kernel_size"], a, f"the {op} window")
        wide = [(i, p, k) for i, (p, k) in enumerate(zip(w.pads, w.kernel)) if max(p) > k // 2]
        if op == "max_pool" and wide:
            # torch's rule: a wider pad makes windows of padding only (-inf, then NaN)
            i, p, k = wide[0]
            raise RuleError(f"max_pool padding {p} on spatial axis {i} is more than half "
                            f"the window (kernel_size {k})",
                            f"pad at most {k // 2} on each side (or padding='same')",
                            OptionError)
        return join_channels(batch, w.out, c, a["channels"])

    return rule


for _op, _how in (("max_pool", "maximum"), ("avg_pool", "mean (padding counts as zeros, "
                                                          "Axon's window_mean)")):
    register_op(OpDef(
        _op, _pool_shape(_op), check_attrs=_pool_attrs,
        doc=f"Window {_how} over the spatial axes: kernel_size, strides (default: "
            "kernel_size), padding, channels; [batch, *spatial, C] -> [batch, *out, C]."))


def max_pool(x: Node, kernel_size: int | tuple = 1, strides: int | tuple | None = None,
             padding: Any = "valid", channels: str = "last", name: str | None = None) -> Node:
    """Max over windows of ``kernel_size`` (strides default to the kernel size, as Axon);
    padded positions never win, and a pad is at most ``kernel_size // 2`` (torch's rule).
    "same" pads ``((k-1)//2, k//2)`` whatever the stride (Axon's rule), so ``out =
    ceil(n / strides)``. ``[batch, *spatial, C] -> [batch, *out, C]``."""
    return make_node("max_pool", [x], {"kernel_size": kernel_size, "strides": strides,
                                       "padding": padding, "channels": channels},
                     name, where=caller_location())


def avg_pool(x: Node, kernel_size: int | tuple = 1, strides: int | tuple | None = None,
             padding: Any = "valid", channels: str = "last", name: str | None = None) -> Node:
    """Mean over windows of ``kernel_size``; padded positions count as zeros (Axon's
    ``window_mean``, torch's ``count_include_pad=True``). Shapes as :func:`max_pool`."""
    return make_node("avg_pool", [x], {"kernel_size": kernel_size, "strides": strides,
                                       "padding": padding, "channels": channels},
                     name, where=caller_location())


def _global_attrs(a: dict) -> dict:
    return {"keep_axes": boolean(a.get("keep_axes", False), "keep_axes"),
            "channels": channels_option(a.get("channels", "last"))}


def _global_shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        c, spatial, batch = split_channels(s[0], a["channels"], op)
        if not a["keep_axes"]:
            return (batch, c)
        return join_channels(batch, (1,) * len(spatial), c, a["channels"])

    return rule


for _op in ("global_avg_pool", "global_max_pool"):
    register_op(OpDef(
        _op, _global_shape(_op), check_attrs=_global_attrs,
        doc=f"{'Mean' if 'avg' in _op else 'Max'} over every spatial axis: [batch, *spatial, "
            "C] -> [batch, C] (keep_axes=True: [batch, 1, ..., C]); channels as conv."))


def global_avg_pool(x: Node, keep_axes: bool = False, channels: str = "last",
                    name: str | None = None) -> Node:
    """Mean over the spatial axes: ``[batch, *spatial, C] -> [batch, C]``."""
    return make_node("global_avg_pool", [x], {"keep_axes": keep_axes, "channels": channels},
                     name, where=caller_location())


def global_max_pool(x: Node, keep_axes: bool = False, channels: str = "last",
                    name: str | None = None) -> Node:
    """Max over the spatial axes: ``[batch, *spatial, C] -> [batch, C]``."""
    return make_node("global_max_pool", [x], {"keep_axes": keep_axes, "channels": channels},
                     name, where=caller_location())
