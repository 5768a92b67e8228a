"""Axon's conv variants: conv_transpose, depthwise_conv, separable_conv2d, separable_conv3d.

Each is an XLA conv with Axon's bookkeeping (``Axon.Layers`` / ``Axon.Shape``):

- ``conv_transpose`` is Axon's fractionally strided conv: the input is dilated by the
  strides (``s - 1`` zeros between elements), padded by ``transpose_pads`` (Axon's
  ``conv_transpose_padding``; explicit pads are used as given, on the dilated input) and
  convolved with stride 1 by the kernel as it is stored, never flipped. That equals
  torch's ``conv_transpose`` with the kernel flipped spatially and its in/out axes
  swapped, the output cropped or zero-extended to Axon's pads.
- ``depthwise_conv`` is a conv with ``feature_group_size`` = the input channels and
  ``channels * channel_multiplier`` filters: kernel ``[*kernel_size, 1, C*m]``.
- ``separable_conv2d`` / ``3d`` chain 2 / 3 depthwise convs, the i-th with a kernel of
  ``kernel_size[i]`` on spatial axis i and 1 elsewhere (``kernel_i``, ``bias_i``), the
  first growing the channels by ``channel_multiplier``; strides, padding and dilations
  apply to each conv, as Axon applies them.

``conv_stages`` gives every backend the plain conv attributes of each stage.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import OptionError, RuleError, fmt_shape
from ..node import Node, caller_location, make_node
from ..registry import OpDef, ParamSpec, register_op
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
from ._attrs import MAX_SIZE, positive_int
from .nn import kernel_options, with_activation

#: the number of spatial axes each op takes (None: 1 to 3)
SPATIAL = {"conv_transpose": None, "depthwise_conv": None, "separable_conv2d": 2,
           "separable_conv3d": 3}


def _window_options(a: dict, input_dilation: bool = True) -> dict:
    out = {"kernel_size": spatial_option(a.get("kernel_size", 1), "kernel_size"),
           "strides": spatial_option(a.get("strides", 1), "strides"),
           "padding": padding_option(a.get("padding", "valid"))}
    if input_dilation:
        out["input_dilation"] = spatial_option(a.get("input_dilation", 1), "input_dilation")
    return {**out, "kernel_dilation": spatial_option(a.get("kernel_dilation", 1),
                                                     "kernel_dilation"),
            "channels": channels_option(a.get("channels", "last"))}


def _channels(s: tuple, a: dict, op: str) -> tuple[int, tuple, Any]:
    """``(channels, spatial sizes, batch)`` of ``op``'s input, its rank checked."""
    c, spatial, batch = split_channels(s, a["channels"], op)
    want = SPATIAL[op]
    if want is not None and len(spatial) != want:
        raise RuleError(f"{op} needs an input with {want} spatial axes (rank {want + 2}), "
                        f"got {fmt_shape(s)}", f"use a [batch, {', '.join('S' * want)}, "
                        "channels] input, or depthwise_conv for other ranks")
    if len(spatial) > 3:
        raise RuleError(f"{op} supports 1 to 3 spatial axes, got {len(spatial)} (input "
                        f"{fmt_shape(s)})", "reshape the input to rank 3, 4 or 5")
    if c is None:
        raise RuleError(f"{op} needs a known channel axis, got {fmt_shape(s)}",
                        "give the input a fixed channel count, e.g. (None, 28, 28, 3)")
    return c, spatial, batch


def _kernel_shape(k: tuple, c_in: int, f: int, channels: str, op: str) -> tuple:
    """``[*k, c_in, f]`` (channels last) or ``[f, c_in, *k]`` (first), size-checked."""
    n = math.prod(k) * c_in * f
    if n > MAX_SIZE:
        raise RuleError(f"the {op} kernel (kernel_size {k}, {c_in} input channels per "
                        f"group, {f} filters) would hold {n:,} values, more than "
                        f"{MAX_SIZE:,}", "use a smaller kernel_size or fewer filters",
                        OptionError)
    return (*k, c_in, f) if channels == "last" else (f, c_in, *k)


# -- conv_transpose --------------------------------------------------------------------------
def transpose_pads(kernel: tuple, dilation: tuple, strides: tuple, padding: Any
                   ) -> tuple[tuple[int, int], ...]:
    """Axon's ``conv_transpose_padding``: the ``(lo, hi)`` pads of the dilated input per
    spatial axis. With the dilated window ``k = (kernel-1)*dilation + 1`` and stride ``s``:
    "valid" pads ``(k-1, s-1 + max(k-s, 0))`` (``out = n*s + max(k-s, 0)``), "same"
    ``(k-1 if s > k-1 else ceil((k+s-2)/2), rest of k+s-2)`` (``out = n*s``); explicit
    pairs are returned as they are."""
    if not isinstance(padding, str):
        return padding
    pads = []
    for kk, d, s in zip(kernel, dilation, strides):
        k = (kk - 1) * d + 1
        if padding == "valid":
            total, lo = k + s - 2 + max(k - s, 0), k - 1
        else:
            total = k + s - 2
            lo = k - 1 if s > k - 1 else (total + 1) // 2
        pads.append((lo, total - lo))
    return tuple(pads)


def transpose_window(spatial: tuple, a: Any) -> Window:
    """The stride-1 window conv_transpose runs over its input dilated by the strides:
    ``input_dilation`` = ``a["strides"]``, pads from ``transpose_pads``."""
    n = len(spatial)
    k = expand(a["kernel_size"], n, "kernel_size")
    s = expand(a["strides"], n, "strides")
    d = expand(a["kernel_dilation"], n, "kernel_dilation")
    return window(spatial, k, {"strides": 1, "padding": transpose_pads(k, d, s, a["padding"]),
                               "input_dilation": s, "kernel_dilation": d},
                  "the conv_transpose window")


def _transpose_attrs(a: dict) -> dict:
    return {"filters": positive_int(a.get("filters"), "filters"),
            **_window_options(a, input_dilation=False), **kernel_options(a)}


def _transpose_shape(s: list, a: dict) -> tuple:
    _, spatial, batch = _channels(s[0], a, "conv_transpose")
    return join_channels(batch, transpose_window(spatial, a).out, a["filters"], a["channels"])


def _transpose_params(s: list, a: dict) -> list[ParamSpec]:
    c, spatial, _ = _channels(s[0], a, "conv_transpose")
    k = expand(a["kernel_size"], len(spatial), "kernel_size")
    ps = [ParamSpec("kernel", _kernel_shape(k, c, a["filters"], a["channels"],
                                            "conv_transpose"), a["kernel_initializer"])]
    if a["use_bias"]:
        ps.append(ParamSpec("bias", (a["filters"],), a["bias_initializer"]))
    return ps


register_op(OpDef(
    "conv_transpose", _transpose_shape, params=_transpose_params, check_attrs=_transpose_attrs,
    doc="Axon's transposed conv (1-3 spatial axes): the input dilated by `strides`, padded "
        "by Axon's conv_transpose_padding ('valid': out = n*s + max(k-s, 0); 'same': out = "
        "n*s; explicit (lo, hi) pairs pad the dilated input), then a stride-1 conv with the "
        "kernel unflipped. kernel [*kernel_size, C, filters] (channels first: [filters, C, "
        "*kernel_size]), bias [filters].",
))


def conv_transpose(x: Node, filters: int, kernel_size: int | tuple = 1,
                   strides: int | tuple = 1, padding: Any = "valid",
                   kernel_dilation: int | tuple = 1, channels: str = "last",
                   activation: str | None = None, use_bias: bool = True,
                   kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                   name: str | None = None) -> Node:
    """Transposed convolution (Axon's ``conv_transpose``; its ``units`` is ``filters`` here).

    ``[batch, *spatial, C] -> [batch, *out, filters]``, ``out = n*s + max(k'-s, 0)``
    ("valid") or ``n*s`` ("same"), ``k' = (k-1)*kernel_dilation + 1``; explicit ``padding``
    pairs pad the input dilated by the strides (``out = (n-1)*s + 1 + lo + hi - k' + 1``).
    Parameters ``kernel [*kernel_size, C, filters]`` (``channels="first"``: ``[filters, C,
    *kernel_size]``), never flipped (torch's weight is this kernel flipped spatially, as
    ``[C, filters, *kernel_size]``), and ``bias [filters]``.

    Args:
        x: input node of rank 3-5.
        filters: output channels.
        kernel_size: window size, an int or one per axis.
        strides: upsampling step, an int or one per axis.
        padding: ``"valid"``, ``"same"`` or ``(lo, hi)`` pairs.
        kernel_dilation: kernel dilation, an int or one per axis.
        channels: ``"last"`` (``[batch, *spatial, C]``) or ``"first"`` (``[batch, C, *spatial]``).
        activation: activation added after the layer as its own node, or None.
        use_bias: add the bias.
        kernel_initializer: initializer for the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer for the bias (default ``"zeros"``).
        name: layer name (default ``"conv_transpose_{n}"``).

    Returns:
        (Node): ``[batch, *out, filters]``.

    Raises:
        ShapeError: the input rank is not 3-5 or a spatial size is too small for the window.
        OptionError: a bad size, padding, channels, activation or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 7, 7, 4))
        >>> gd.get_output_shape(gd.conv_transpose(x, 2, kernel_size=2, strides=2), (1, 7, 7, 4))
        (1, 14, 14, 2)
    """
    where = caller_location()
    node = make_node("conv_transpose", [x], {
        "filters": filters, "kernel_size": kernel_size, "strides": strides,
        "padding": padding, "kernel_dilation": kernel_dilation, "channels": channels,
        "use_bias": use_bias, "kernel_initializer": kernel_initializer,
        "bias_initializer": bias_initializer}, name, where=where)
    return with_activation(node, activation, where)


# -- depthwise_conv, separable_conv2d, separable_conv3d --------------------------------------
def _depthwise_attrs(a: dict) -> dict:
    return {"channel_multiplier": positive_int(a.get("channel_multiplier"),
                                               "channel_multiplier"),
            **_window_options(a), **kernel_options(a)}


def conv_stages(op: str, in_shape: tuple, a: Any) -> list[tuple[dict, str, str]]:
    """The depthwise convs ``op`` runs, in order: ``(conv attrs, kernel name, bias name)``
    each, the attrs those of ``graphdsl.conv`` (``filters``, ``feature_group_size``,
    ``kernel_size`` as a tuple, ...), so any backend's conv runs them."""
    c, spatial, _ = _channels(in_shape, a, op)
    n = len(spatial)
    k = expand(a["kernel_size"], n, "kernel_size")
    f = c * a["channel_multiplier"]
    base = {key: a[key] for key in ("strides", "padding", "input_dilation", "kernel_dilation",
                                    "channels", "use_bias", "kernel_initializer",
                                    "bias_initializer")}
    if op == "depthwise_conv":
        return [({**base, "filters": f, "kernel_size": k, "feature_group_size": c},
                 "kernel", "bias")]
    return [({**base, "filters": f, "kernel_size": tuple(k[i] if j == i else 1
                                                         for j in range(n)),
              "feature_group_size": c if i == 0 else f},
             f"kernel_{i + 1}", f"bias_{i + 1}") for i in range(n)]


def _output_shape(op: str, s: tuple, a: dict) -> tuple:
    for i, (st, _, _) in enumerate(conv_stages(op, s, a)):
        _, spatial, batch = split_channels(s, a["channels"], op)
        what = f"the {op} window" + (f" (kernel_{i + 1})" if op != "depthwise_conv" else "")
        w = window(spatial, st["kernel_size"], st, what)
        s = join_channels(batch, w.out, st["filters"], a["channels"])
    return s


def _depthwise_params(op: str):
    def params(s: list, a: dict) -> list[ParamSpec]:
        ps = []
        for st, kernel, bias in conv_stages(op, s[0], a):  # one input channel per group
            ps.append(ParamSpec(kernel, _kernel_shape(st["kernel_size"], 1, st["filters"],
                                                      a["channels"], op),
                                a["kernel_initializer"]))
            if a["use_bias"]:
                ps.append(ParamSpec(bias, (st["filters"],), a["bias_initializer"]))
        return ps

    return params


_DOCS = {
    "depthwise_conv": "Depthwise conv (1-3 spatial axes): feature_group_size = the input "
                      "channels C, C*channel_multiplier filters (channel c feeds filters "
                      "c*m ... c*m+m-1). kernel [*kernel_size, 1, C*m] (channels first: "
                      "[C*m, 1, *kernel_size]), bias [C*m].",
    "separable_conv2d": "Two depthwise convs, kernel_1 [k0, 1, 1, C*m] then kernel_2 [1, k1, "
                        "1, C*m] (channels first: [C*m, 1, k0, 1], [C*m, 1, 1, k1]), bias_1 "
                        "and bias_2 [C*m]; strides, padding and dilations apply to each. "
                        "Rank 4 input.",
    "separable_conv3d": "Three depthwise convs, kernel_i [C*m, 1, ...] with kernel_size[i] on "
                        "spatial axis i (channels last: [k0, 1, 1, 1, C*m], ...), bias_1..3 "
                        "[C*m]; strides, padding and dilations apply to each. Rank 5 input.",
}
for _op, _doc in _DOCS.items():
    register_op(OpDef(_op, (lambda op: lambda s, a: _output_shape(op, s[0], a))(_op),
                      params=_depthwise_params(_op), check_attrs=_depthwise_attrs,
                      doc=_doc + " Options as Axon's: kernel_size, strides, padding, "
                                 "input_dilation, kernel_dilation, channels."))


def _depthwise_node(op: str, x: Node, channel_multiplier: int, opts: dict, name: str | None,
                    where: str) -> Node:
    act = opts.pop("activation")
    return with_activation(make_node(op, [x], {"channel_multiplier": channel_multiplier,
                                               **opts}, name, where=where), act, where)


def depthwise_conv(x: Node, channel_multiplier: int, kernel_size: int | tuple = 1,
                   strides: int | tuple = 1, padding: Any = "valid",
                   input_dilation: int | tuple = 1, kernel_dilation: int | tuple = 1,
                   channels: str = "last", activation: str | None = None,
                   use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                   bias_initializer: Any = "zeros", name: str | None = None) -> Node:
    """Depthwise convolution: ``[batch, *spatial, C] -> [batch, *out, C*channel_multiplier]``.

    Each input channel ``c`` is convolved by its own ``m = channel_multiplier`` filters
    (outputs ``c*m ... c*m + m-1``). Parameters ``kernel [*kernel_size, 1, C*m]``
    (``channels="first"``: ``[C*m, 1, *kernel_size]``) and ``bias [C*m]``.

    Args:
        x: input node of rank 3-5.
        channel_multiplier: filters per input channel, a positive int.
        kernel_size: window size, an int (every spatial axis) or one per axis.
        strides: step, an int or one per axis.
        padding: ``"valid"``, ``"same"`` (Axon's rule: ``((k'-1)//2, (k'-1) - (k'-1)//2)``
            with ``k' = (k-1)*kernel_dilation + 1``, whatever the strides) or one ``(lo, hi)``
            pair per spatial axis.
        input_dilation: dilation of the input, an int or one per axis.
        kernel_dilation: dilation of the kernel, an int or one per axis.
        channels: ``"last"`` (``[batch, *spatial, C]``) or ``"first"`` (``[batch, C, *spatial]``).
        activation: activation added after the layer as its own node, or None.
        use_bias: add the bias.
        kernel_initializer: initializer for the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer for the bias (default ``"zeros"``).
        name: layer name (default ``"depthwise_conv_{n}"``).

    Returns:
        (Node): ``[batch, *out, C*channel_multiplier]``.

    Raises:
        ShapeError: the input rank is not 3-5 or a spatial size is too small for the window.
        OptionError: a bad size, padding, channels, activation or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.depthwise_conv(x, 2, kernel_size=3), (1, 8, 8, 3))
        (1, 6, 6, 6)
    """
    opts = dict(locals())
    for k in ("x", "channel_multiplier", "name"):
        del opts[k]
    return _depthwise_node("depthwise_conv", x, channel_multiplier, opts, name,
                           caller_location())


def separable_conv2d(x: Node, channel_multiplier: int, kernel_size: int | tuple = 1,
                     strides: int | tuple = 1, padding: Any = "valid",
                     input_dilation: int | tuple = 1, kernel_dilation: int | tuple = 1,
                     channels: str = "last", activation: str | None = None,
                     use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                     bias_initializer: Any = "zeros", name: str | None = None) -> Node:
    """Axon's depthwise separable 2-d convolution of ``[batch, H, W, C]``.

    A depthwise conv with ``kernel_1 [kh, 1, 1, C*m]`` (+ ``bias_1 [C*m]``), then one with
    ``kernel_2 [1, kw, 1, C*m]`` (+ ``bias_2``), each with the layer's strides, padding and
    dilations (so ``strides=2`` halves each axis twice). ``channels="first"``: kernels
    ``[C*m, 1, kh, 1]`` and ``[C*m, 1, 1, kw]``.

    Args:
        x: input node of rank 4.
        channel_multiplier: filters per input channel (``m``).
        kernel_size: window size, an int (every spatial axis) or one per axis.
        strides: step, an int or one per axis.
        padding: ``"valid"``, ``"same"`` (Axon's rule: ``((k'-1)//2, (k'-1) - (k'-1)//2)``
            with ``k' = (k-1)*kernel_dilation + 1``, whatever the strides) or one ``(lo, hi)``
            pair per spatial axis.
        input_dilation: dilation of the input, an int or one per axis.
        kernel_dilation: dilation of the kernel, an int or one per axis.
        channels: ``"last"`` (``[batch, *spatial, C]``) or ``"first"`` (``[batch, C, *spatial]``).
        activation: activation added after the layer as its own node, or None.
        use_bias: add the bias.
        kernel_initializer: initializer for the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer for the bias (default ``"zeros"``).
        name: layer name (default ``"separable_conv2d_{n}"``).

    Returns:
        (Node): ``[batch, H', W', C*m]``.

    Raises:
        ShapeError: the input rank is not 3-5 or a spatial size is too small for the window.
        OptionError: a bad size, padding, channels, activation or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.separable_conv2d(x, 2, kernel_size=3), (1, 8, 8, 3))
        (1, 6, 6, 6)
    """
    opts = dict(locals())
    for k in ("x", "channel_multiplier", "name"):
        del opts[k]
    return _depthwise_node("separable_conv2d", x, channel_multiplier, opts, name,
                           caller_location())


def separable_conv3d(x: Node, channel_multiplier: int, kernel_size: int | tuple = 1,
                     strides: int | tuple = 1, padding: Any = "valid",
                     input_dilation: int | tuple = 1, kernel_dilation: int | tuple = 1,
                     channels: str = "last", activation: str | None = None,
                     use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                     bias_initializer: Any = "zeros", name: str | None = None) -> Node:
    """Axon's depthwise separable 3-d convolution of ``[batch, D, H, W, C]``.

    Three depthwise convs, ``kernel_i`` with ``kernel_size[i]`` on spatial axis ``i`` and 1
    elsewhere (channels last ``[kd, 1, 1, 1, C*m]``, ``[1, kh, 1, 1, C*m]``, ``[1, 1, kw,
    1, C*m]``; first ``[C*m, 1, kd, 1, 1]``, ...), ``bias_1..3 [C*m]``, the first growing
    the channels by ``channel_multiplier``; strides, padding and dilations apply to each.

    Args:
        x: input node of rank 5.
        channel_multiplier: filters per input channel (``m``).
        kernel_size: window size, an int (every spatial axis) or one per axis.
        strides: step, an int or one per axis.
        padding: ``"valid"``, ``"same"`` (Axon's rule: ``((k'-1)//2, (k'-1) - (k'-1)//2)``
            with ``k' = (k-1)*kernel_dilation + 1``, whatever the strides) or one ``(lo, hi)``
            pair per spatial axis.
        input_dilation: dilation of the input, an int or one per axis.
        kernel_dilation: dilation of the kernel, an int or one per axis.
        channels: ``"last"`` (``[batch, *spatial, C]``) or ``"first"`` (``[batch, C, *spatial]``).
        activation: activation added after the layer as its own node, or None.
        use_bias: add the bias.
        kernel_initializer: initializer for the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer for the bias (default ``"zeros"``).
        name: layer name (default ``"separable_conv3d_{n}"``).

    Returns:
        (Node): ``[batch, D', H', W', C*m]``.

    Raises:
        ShapeError: the input rank is not 3-5 or a spatial size is too small for the window.
        OptionError: a bad size, padding, channels, activation or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 6, 6, 6, 2))
        >>> gd.get_output_shape(gd.separable_conv3d(x, 1, kernel_size=3), (1, 6, 6, 6, 2))
        (1, 4, 4, 4, 2)
    """
    opts = dict(locals())
    for k in ("x", "channel_multiplier", "name"):
        del opts[k]
    return _depthwise_node("separable_conv3d", x, channel_multiplier, opts, name,
                           caller_location())
