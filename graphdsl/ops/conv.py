"""Convolutional layers with Axon's names, options and layouts: conv, batch_norm,
instance_norm, group_norm (the pools are ``.pool``).

Inputs are ``[batch, *spatial, channels]`` (``channels="last"``, Axon's default) or
``[batch, channels, *spatial]`` (``channels="first"``), with 1 to 3 spatial axes. The
window arithmetic (strides, padding, dilations) is ``graphdsl.windows``.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import OptionError, RuleError, fmt_shape
from ..node import Node, caller_location, make_node
from ..registry import OpDef, ParamSpec, register_op
from ..shapes import check_rank, normalize_axis
from ..windows import (
    channels_option,
    expand,
    join_channels,
    padding_option,
    spatial_option,
    split_channels,
    window,
)
from ._attrs import MAX_SIZE, number, positive_int
from .nn import kernel_and_bias, kernel_options, norm_initializers, with_activation


def conv_attrs(a: dict) -> dict:
    """The checked options of a conv layer (also used by adapters wrapping one)."""
    return {
        "filters": positive_int(a.get("filters"), "filters"),
        "kernel_size": spatial_option(a.get("kernel_size", 1), "kernel_size"),
        "strides": spatial_option(a.get("strides", 1), "strides"),
        "padding": padding_option(a.get("padding", "valid")),
        "input_dilation": spatial_option(a.get("input_dilation", 1), "input_dilation"),
        "kernel_dilation": spatial_option(a.get("kernel_dilation", 1), "kernel_dilation"),
        "feature_group_size": positive_int(a.get("feature_group_size", 1),
                                           "feature_group_size"),
        "channels": channels_option(a.get("channels", "last")),
        **kernel_options(a),
    }


def _conv_channels(s: tuple, a: dict) -> tuple[int, tuple, Any]:
    c, spatial, batch = split_channels(s, a["channels"], "conv")
    if len(spatial) > 3:
        raise RuleError(f"conv supports 1 to 3 spatial axes, got {len(spatial)} "
                        f"(input {fmt_shape(s)})", "reshape the input to rank 3, 4 or 5")
    if c is None:
        raise RuleError(f"conv needs a known channel axis, got {fmt_shape(s)}",
                        "give the input a fixed channel count, e.g. (None, 28, 28, 1)")
    g = a["feature_group_size"]
    if c % g or a["filters"] % g:
        raise RuleError(f"feature_group_size={g} must divide both the input channels ({c}) "
                        f"and filters ({a['filters']})",
                        "pick a group count that divides both (feature_group_size=channels "
                        "with filters a multiple of it is a depthwise conv)", OptionError)
    return c, spatial, batch


def conv_shape(s: list, a: dict) -> tuple:
    """Output shape of conv for input shape ``s[0]``."""
    _, spatial, batch = _conv_channels(s[0], a)
    w = window(spatial, a["kernel_size"], a, "the conv window")
    return join_channels(batch, w.out, a["filters"], a["channels"])


def conv_kernel_shape(in_shape: tuple, a: dict) -> tuple:
    """The kernel shape: ``[*kernel_size, in/groups, filters]`` (channels last) or
    ``[filters, in/groups, *kernel_size]`` (first)."""
    c, spatial, _ = _conv_channels(in_shape, a)
    k = expand(a["kernel_size"], len(spatial), "kernel_size")
    f = a["filters"]
    cg = c // a["feature_group_size"]
    if math.prod(k) * cg * f > MAX_SIZE:
        raise RuleError(f"the conv kernel (kernel_size {k}, {cg} input channels per group, "
                        f"{f} filters) would hold {math.prod(k) * cg * f:,} values, more "
                        f"than {MAX_SIZE:,}", "use a smaller kernel_size or fewer filters",
                        OptionError)
    return (*k, cg, f) if a["channels"] == "last" else (f, cg, *k)


def conv_params(s: list, a: dict) -> list[ParamSpec]:
    return kernel_and_bias(conv_kernel_shape(s[0], a), a["filters"], a)


register_op(OpDef(
    "conv", conv_shape, params=conv_params, check_attrs=conv_attrs,
    doc="N-d convolution (1-3 spatial axes), Axon's options: kernel_size, strides, padding "
        "('valid', 'same', [(lo, hi), ...]), input_dilation, kernel_dilation, "
        "feature_group_size, channels ('last': [batch, *spatial, C]; 'first'). "
        "kernel [*kernel_size, C/groups, filters] (channels first: [filters, C/groups, "
        "*kernel_size]), bias [filters].",
))


def conv(x: Node, filters: int, kernel_size: int | tuple = 1, strides: int | tuple = 1,
         padding: Any = "valid", input_dilation: int | tuple = 1,
         kernel_dilation: int | tuple = 1, feature_group_size: int = 1,
         channels: str = "last", activation: str | None = None, use_bias: bool = True,
         kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
         name: str | None = None) -> Node:
    """Convolution with 1-3 spatial axes: ``[batch, *spatial, C] -> [batch, *out, filters]``.

    Parameters ``kernel [*kernel_size, C/groups, filters]`` (``channels="first"``: Axon's
    ``[filters, C/groups, *kernel_size]``) and ``bias [filters]``. With "same" padding
    ``out = ceil(n_dilated / strides)``.

    Args:
        x: input node of rank 3-5, channels known.
        filters: output channels, a positive int.
        kernel_size: window size, an int (every spatial axis) or one per axis.
        strides: step, an int or one per axis.
        padding: ``"valid"``, ``"same"`` (Axon's rule: ``((k'-1)//2, (k'-1) - (k'-1)//2)``
            with ``k' = (k-1)*kernel_dilation + 1``, whatever the strides) or one ``(lo, hi)``
            pair per spatial axis.
        input_dilation: dilation of the input, an int or one per axis.
        kernel_dilation: dilation of the kernel, an int or one per axis.
        feature_group_size: groups; ``C`` and ``filters`` must be multiples of it.
        channels: ``"last"`` (``[batch, *spatial, C]``) or ``"first"`` (``[batch, C, *spatial]``).
        activation: activation added after the layer as its own node, or None.
        use_bias: add the bias.
        kernel_initializer: initializer for the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer for the bias (default ``"zeros"``).
        name: layer name (default ``"conv_{n}"``).

    Returns:
        (Node): ``[batch, *out, filters]`` (``channels="first"``: ``[batch, filters, *out]``).

    Raises:
        ShapeError: the input rank is not 3-5 or a spatial size is too small for the window.
        OptionError: a bad size, padding, channels, activation or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 28, 28, 1))
        >>> y = gd.conv(x, 8, kernel_size=3, padding="same", activation="relu")
        >>> gd.get_output_shape(y, (2, 28, 28, 1))
        (2, 28, 28, 8)
    """
    where = caller_location()
    return with_activation(make_node("conv", [x], {
        "filters": filters, "kernel_size": kernel_size, "strides": strides,
        "padding": padding, "input_dilation": input_dilation,
        "kernel_dilation": kernel_dilation, "feature_group_size": feature_group_size,
        "channels": channels, "use_bias": use_bias,
        "kernel_initializer": kernel_initializer, "bias_initializer": bias_initializer,
    }, name, where=where), activation, where)


# -- normalization -------------------------------------------------------------------------
def _norm_dim(s: tuple, a: dict, op: str) -> int:
    check_rank(s, 2, op, "pass a tensor [batch, ..., channels]")
    ax = normalize_axis(a["axis"], len(s))
    if ax == 0:
        raise RuleError(f"{op} cannot normalize along the batch axis",
                        "pass the channel axis, e.g. axis=-1 (channels last) or 1")
    if s[ax] is None:
        raise RuleError(f"{op} needs a known size on axis {a['axis']}, got {fmt_shape(s)}",
                        "normalize over a fixed-size channel axis")
    return s[ax]


def norm_params(c: int, a: dict) -> list[ParamSpec]:
    """``gamma``/``beta [c]`` with the layer's initializers."""
    return [ParamSpec("gamma", (c,), a["gamma_initializer"]),
            ParamSpec("beta", (c,), a["beta_initializer"])]


def _bn_attrs(a: dict) -> dict:
    return {"axis": a.get("axis", -1),
            "epsilon": number(a.get("epsilon", 1e-5), "epsilon", 0.0),
            "momentum": number(a.get("momentum", 0.1), "momentum", 0.0, 1.0),
            **norm_initializers(a)}


def _stats_params(c: int, a: dict) -> list[ParamSpec]:
    return norm_params(c, a) + [ParamSpec("mean", (c,), "zeros", False, kind="state"),
                                ParamSpec("var", (c,), "ones", False, kind="state")]


register_op(OpDef(
    "batch_norm", lambda s, a: (_norm_dim(s[0], a, "batch_norm"), s[0])[1],
    params=lambda s, a: _stats_params(_norm_dim(s[0], a, "batch_norm"), a),
    check_attrs=_bn_attrs,
    doc="(x - mean) / sqrt(var + epsilon) * gamma + beta per channel (`axis`). Inference: "
        "the running mean/var (state); train: the batch's, and returns the new running "
        "values as torch does (running = (1-momentum)*running + momentum*batch, unbiased "
        "var). gamma, beta, mean, var: [channels]. Shape unchanged.",
))


def batch_norm(x: Node, axis: int = -1, epsilon: float = 1e-5, momentum: float = 0.1,
               gamma_initializer: Any = "ones", beta_initializer: Any = "zeros",
               name: str | None = None) -> Node:
    """Batch normalization over every axis but ``axis`` (the channels).

    Parameters ``gamma``/``beta [C]``; state ``mean``/``var [C]``, the running statistics,
    updated in ``mode="train"`` by torch's rule ``running = (1 - momentum) * running +
    momentum * batch`` with the unbiased variance (Axon's runs the other way).

    Args:
        x: input node, known size on ``axis``.
        axis: the channel axis.
        epsilon: added to the variance, >= 0.
        momentum: weight of the batch statistics, in ``[0, 1]``.
        gamma_initializer: initializer for ``gamma`` (default ``"ones"``).
        beta_initializer: initializer for ``beta`` (default ``"zeros"``).
        name: layer name (default ``"batch_norm_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: unknown channel size.
        OptionError: a bad ``epsilon``, ``momentum`` or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> y = gd.batch_norm(x, name="bn")
        >>> sorted(gd.build(y)[0](np.zeros((1, 3), np.float32)).data["bn"])
        ['beta', 'gamma', 'mean', 'var']
    """
    return make_node("batch_norm", [x], {"axis": axis, "epsilon": epsilon,
                                         "momentum": momentum,
                                         "gamma_initializer": gamma_initializer,
                                         "beta_initializer": beta_initializer},
                     name, where=caller_location())


def _in_dim(s: tuple, a: dict) -> int:
    check_rank(s, 3, "instance_norm", "pass a tensor [batch, *spatial, channels] with at "
               "least one spatial axis")
    return _norm_dim(s, a, "instance_norm")


register_op(OpDef(
    "instance_norm", lambda s, a: (_in_dim(s[0], a), s[0])[1],
    params=lambda s, a: _stats_params(_in_dim(s[0], a), a), check_attrs=_bn_attrs,
    doc="Per sample and channel (`axis`), (x - mean) / sqrt(var + epsilon) * gamma + beta "
        "over the spatial axes. Inference: the running mean/var (state), as Axon does; "
        "train: each instance's, and returns the new running values as batch_norm does "
        "(torch's rule: the batch average of the instance means and unbiased variances). "
        "gamma, beta, mean, var: [channels]. Rank >= 3; shape unchanged.",
))


def instance_norm(x: Node, axis: int = -1, epsilon: float = 1e-5, momentum: float = 0.1,
                  gamma_initializer: Any = "ones", beta_initializer: Any = "zeros",
                  name: str | None = None) -> Node:
    """Instance normalization of ``x [batch, *spatial, C]`` over the spatial axes.

    Parameters ``gamma``/``beta [C]``, state ``mean``/``var [C]`` (running statistics, as
    ``batch_norm``).

    Args:
        x: input node of rank >= 3, channels on ``axis`` known.
        axis: the channel axis.
        epsilon: added to the variance, >= 0.
        momentum: weight of the batch statistics in the running ones.
        gamma_initializer: initializer for ``gamma`` (default ``"ones"``).
        beta_initializer: initializer for ``beta`` (default ``"zeros"``).
        name: layer name (default ``"instance_norm_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: rank below 3 or unknown channels.
        OptionError: a bad option.

    Examples:
        >>> x = gd.input("x", shape=(None, 8, 8, 3))
        >>> gd.get_output_shape(gd.instance_norm(x), (2, 8, 8, 3))
        (2, 8, 8, 3)
    """
    return make_node("instance_norm", [x], {"axis": axis, "epsilon": epsilon,
                                            "momentum": momentum,
                                            "gamma_initializer": gamma_initializer,
                                            "beta_initializer": beta_initializer},
                     name, where=caller_location())


def _gn_attrs(a: dict) -> dict:
    return {"num_groups": positive_int(a.get("num_groups"), "num_groups"),
            "axis": a.get("axis", -1),
            "epsilon": number(a.get("epsilon", 1e-5), "epsilon", 0.0),
            **norm_initializers(a)}


def _gn_dim(s: tuple, a: dict) -> int:
    c = _norm_dim(s, a, "group_norm")
    if c % a["num_groups"]:
        raise RuleError(f"num_groups={a['num_groups']} does not divide the {c} channels",
                        f"pick a num_groups that divides {c}", OptionError)
    return c


register_op(OpDef(
    "group_norm", lambda s, a: (_gn_dim(s[0], a), s[0])[1], check_attrs=_gn_attrs,
    params=lambda s, a: norm_params(_gn_dim(s[0], a), a),
    doc="Per sample, normalizes each of num_groups channel groups over its channels and "
        "the spatial axes, then * gamma + beta per channel. gamma, beta: [channels].",
))


def group_norm(x: Node, num_groups: int, axis: int = -1, epsilon: float = 1e-5,
               gamma_initializer: Any = "ones", beta_initializer: Any = "zeros",
               name: str | None = None) -> Node:
    """Group normalization: channels on ``axis`` split into ``num_groups`` groups.

    Each group is normalized over its channels and the spatial axes; parameters
    ``gamma``/``beta [C]``.

    Args:
        x: input node ``[batch, ..., C]``, ``C`` known and a multiple of ``num_groups``.
        num_groups: number of groups, a positive int.
        axis: the channel axis.
        epsilon: added to the variance, >= 0.
        gamma_initializer: initializer for ``gamma`` (default ``"ones"``).
        beta_initializer: initializer for ``beta`` (default ``"zeros"``).
        name: layer name (default ``"group_norm_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: ``C`` unknown.
        OptionError: ``C`` not a multiple of ``num_groups``, or a bad option.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 4, 6))
        >>> gd.get_output_shape(gd.group_norm(x, 3), (2, 4, 4, 6))
        (2, 4, 4, 6)
    """
    return make_node("group_norm", [x], {"num_groups": num_groups, "axis": axis,
                                         "epsilon": epsilon,
                                         "gamma_initializer": gamma_initializer,
                                         "beta_initializer": beta_initializer},
                     name, where=caller_location())
