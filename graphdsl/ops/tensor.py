"""Tensor ops: element-wise arithmetic, bias, concatenate, reshape, flatten, transpose,
matmul, pad.

Axes and permutations count the batch axis and accept negatives, like NumPy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce
from typing import Any

from ..errors import OptionError, RuleError, fmt_shape
from ..initializers import check_initializer
from ..node import Node, caller_location, make_node
from ..registry import OpDef, ParamSpec, register_op
from ..shapes import broadcast, feature_dim, is_int, merge_dim, normalize_axis, prod, reshape_target
from ..windows import channels_option
from ._attrs import number, shape_tuple


def _int_if_all(d: Sequence[str], a: Any) -> str:
    return "int64" if d and all(x.startswith("int") for x in d) else "float32"


def _first_dtype(d: Sequence[str], a: Any) -> str:
    return d[0]


# -- element-wise ----------------------------------------------------------------------
for _op, _sym in (("add", "+"), ("subtract", "-"), ("multiply", "*")):
    register_op(OpDef(
        _op, lambda s, a: broadcast(s), arity=(2, None), infer_dtype=_int_if_all,
        category="combinator",
        doc=f"Element-wise x0 {_sym} x1 {_sym} ... with NumPy broadcasting.",
    ))


def _variadic(op: str, a: Any, b: Any, name: str | None) -> Node:
    ins = list(a) if isinstance(a, (list, tuple)) and b is None else [a, b]
    return make_node(op, ins, {}, name, where=caller_location())


def add(a: Node | Sequence[Node], b: Node | None = None, name: str | None = None) -> Node:
    """``a + b`` (or the sum of a list), with NumPy broadcasting.

    Args:
        a: a node, or a list of nodes (then ``b`` is None).
        b: the second node.
        name: layer name (default ``"add_{n}"``).

    Returns:
        (Node): the broadcast shape.

    Raises:
        ShapeError: the shapes do not broadcast.

    Examples:
        >>> x, y = gd.input("x", shape=(None, 2)), gd.input("y", shape=(None, 2))
        >>> xs = {"x": np.array([[6.0, 4.0]], np.float32), "y": np.array([[2.0, 2.0]], np.float32)}
        >>> gd.predict(gd.add(x, y), gd.ModelState.empty(), xs)
        array([[8., 6.]], dtype=float32)
    """
    return _variadic("add", a, b, name)


def subtract(a: Node | Sequence[Node], b: Node | None = None,
             name: str | None = None) -> Node:
    """``a - b`` (or ``x0 - x1 - ...`` for a list), with NumPy broadcasting.

    Args:
        a: a node, or a list of nodes (then ``b`` is None).
        b: the second node.
        name: layer name (default ``"subtract_{n}"``).

    Returns:
        (Node): the broadcast shape.

    Raises:
        ShapeError: the shapes do not broadcast.

    Examples:
        >>> x, y = gd.input("x", shape=(None, 2)), gd.input("y", shape=(None, 2))
        >>> xs = {"x": np.array([[6.0, 4.0]], np.float32), "y": np.array([[2.0, 2.0]], np.float32)}
        >>> gd.predict(gd.subtract(x, y), gd.ModelState.empty(), xs)
        array([[4., 2.]], dtype=float32)
    """
    return _variadic("subtract", a, b, name)


def multiply(a: Node | Sequence[Node], b: Node | None = None,
             name: str | None = None) -> Node:
    """``a * b`` (or the product of a list), with NumPy broadcasting.

    Args:
        a: a node, or a list of nodes (then ``b`` is None).
        b: the second node.
        name: layer name (default ``"multiply_{n}"``).

    Returns:
        (Node): the broadcast shape.

    Raises:
        ShapeError: the shapes do not broadcast.

    Examples:
        >>> x, y = gd.input("x", shape=(None, 2)), gd.input("y", shape=(None, 2))
        >>> xs = {"x": np.array([[6.0, 4.0]], np.float32), "y": np.array([[2.0, 2.0]], np.float32)}
        >>> gd.predict(gd.multiply(x, y), gd.ModelState.empty(), xs)
        array([[12.,  8.]], dtype=float32)
    """
    return _variadic("multiply", a, b, name)


# -- concatenate ---------------------------------------------------------------------------
def concat_shape(s: list, a: dict) -> tuple:
    rank = len(s[0])
    if any(len(x) != rank for x in s):
        raise RuleError("concatenate needs inputs of equal rank, got "
                        + ", ".join(fmt_shape(x) for x in s),
                        "reshape the inputs to the same rank first")
    ax = normalize_axis(a["axis"], rank)
    out: list = []
    for i in range(rank):
        dims = [x[i] for x in s]
        if i == ax:
            out.append(sum(dims) if None not in dims else None)
            continue
        try:
            out.append(reduce(merge_dim, dims))
        except ValueError:
            raise RuleError(
                f"concatenate on axis {a['axis']} needs equal sizes on the other axes; "
                f"axis {i} has sizes {dims}",
                "make the other axes match, or concatenate on another axis") from None
    return tuple(out)


register_op(OpDef(
    "concatenate", concat_shape, arity=(1, None), infer_dtype=_int_if_all,
    check_attrs=lambda a: {"axis": a.get("axis", -1)}, category="combinator",
    doc="Joins inputs along `axis`; other axes must agree.",
))


def concatenate(inputs: Sequence[Node] | Node, b: Node | None = None, axis: int = -1,
                name: str | None = None) -> Node:
    """Concatenate a list of nodes (or two nodes) along ``axis``.

    Args:
        inputs: a list of nodes, or the first of two.
        b: the second node when ``inputs`` is one node.
        axis: the joined axis (NumPy convention); other axes must agree.
        name: layer name (default ``"concatenate_{n}"``).

    Returns:
        (Node): the inputs' shape with the sizes on ``axis`` summed.

    Raises:
        ShapeError: ranks or the other axes differ.

    Examples:
        >>> a, b = gd.input("a", shape=(None, 2)), gd.input("b", shape=(None, 3))
        >>> gd.get_output_shape(gd.concatenate([a, b]), {"a": (4, 2), "b": (4, 3)})
        (4, 5)
    """
    ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs, b]
    return make_node("concatenate", ins, {"axis": axis}, name, where=caller_location())


# -- reshape / flatten / transpose ----------------------------------------------------------
def _reshape_attrs(a: dict) -> dict:
    shp = shape_tuple(a.get("shape"), "shape", allow_none=True, allow_minus1=True)
    if shp.count(-1) > 1:
        raise RuleError(f"shape {shp} has more than one -1", "use -1 at most once",
                        OptionError)
    return {"shape": shp}


def _reshape_shape(s: list, a: dict) -> tuple:
    return reshape_target(s[0], a["shape"])


register_op(OpDef(
    "reshape", _reshape_shape, check_attrs=_reshape_attrs, infer_dtype=_first_dtype,
    output_alias="inputs",
    doc="Reshape to `shape` (counts the batch axis): None keeps the input's size at "
        "that axis, -1 infers one size. (None, 4, 4) -> (None, 16) via shape=(None, 16).",
))


def reshape(x: Node, shape: Sequence[int | None], name: str | None = None) -> Node:
    """Reshape to ``shape`` (counting the batch axis).

    Args:
        x: input node.
        shape: the new sizes; ``None`` keeps the input's size at that axis, ``-1`` infers
            one size.
        name: layer name (default ``"reshape_{n}"``).

    Returns:
        (Node): of ``shape`` (resolved).

    Raises:
        ShapeError: the sizes do not fit ``x``'s.

    Examples:
        >>> x = gd.input("x", shape=(None, 6))
        >>> gd.get_output_shape(gd.reshape(x, (None, 2, -1)), (5, 6))
        (5, 2, 3)
    """
    return make_node("reshape", [x], {"shape": shape}, name, where=caller_location())


def _flatten_shape(s: list, a: dict) -> tuple:
    if len(s[0]) < 2:
        raise RuleError(f"flatten needs rank >= 2, got {fmt_shape(s[0])}",
                        "flatten keeps the first (batch) axis; the input needs another")
    return (s[0][0], prod(s[0][1:]))


register_op(OpDef(
    "flatten", _flatten_shape, infer_dtype=_first_dtype, output_alias="inputs",
    doc="(N, d1, d2, ...) -> (N, d1*d2*...).",
))


def flatten(x: Node, name: str | None = None) -> Node:
    """Keep the first axis, flatten the rest: ``(N, a, b) -> (N, a*b)``.

    Args:
        x: input node, rank >= 2, sizes after the first known.
        name: layer name (default ``"flatten_{n}"``).

    Returns:
        (Node): ``(N, prod(rest))``.

    Raises:
        ShapeError: rank below 2.

    Examples:
        >>> x = gd.input("x", shape=(None, 3, 4))
        >>> gd.get_output_shape(gd.flatten(x), (2, 3, 4))
        (2, 12)
    """
    return make_node("flatten", [x], {}, name, where=caller_location())


def _transpose_shape(s: list, a: dict) -> tuple:
    rank = len(s[0])
    axes = a["axes"]
    if axes is None:
        return tuple(reversed(s[0]))
    if len(axes) != rank:
        raise RuleError(f"axes {axes} do not fit a rank-{rank} input",
                        f"give a permutation of all {rank} axes (batch axis included)",
                        OptionError)
    norm = [normalize_axis(x, rank, "axes entry") for x in axes]
    if sorted(norm) != list(range(rank)):
        raise RuleError(f"axes {axes} is not a permutation", "list each axis exactly once",
                        OptionError)
    return tuple(s[0][i] for i in norm)


def _transpose_attrs(a: dict) -> dict:
    axes = a.get("axes")
    if axes is not None:
        if not isinstance(axes, (list, tuple)) or not all(is_int(x) for x in axes):
            raise RuleError(f"axes must be a tuple of ints, got {axes!r}",
                            "pass e.g. axes=(0, 2, 1)", OptionError)
        axes = tuple(int(x) for x in axes)
    return {"axes": axes}


register_op(OpDef(
    "transpose", _transpose_shape, check_attrs=_transpose_attrs, infer_dtype=_first_dtype,
    output_alias="inputs",
    doc="Permute axes like numpy.transpose (axes count the batch axis; None reverses).",
))


def transpose(x: Node, axes: Sequence[int] | None = None, name: str | None = None) -> Node:
    """Permute axes as ``numpy.transpose`` (e.g. ``(0, 2, 1)``).

    Args:
        x: input node.
        axes: a permutation of ``range(rank)`` (counting the batch axis); None reverses.
        name: layer name (default ``"transpose_{n}"``).

    Returns:
        (Node): the permuted shape.

    Raises:
        OptionError: ``axes`` is not a permutation of the input's axes.

    Examples:
        >>> x = gd.input("x", shape=(None, 3, 4))
        >>> gd.get_output_shape(gd.transpose(x, (0, 2, 1)), (2, 3, 4))
        (2, 4, 3)
    """
    return make_node("transpose", [x], {"axes": axes}, name, where=caller_location())


# -- matmul ------------------------------------------------------------------------------------
def _matmul_shape(s: list, a: dict) -> tuple:
    x, y = s
    if len(x) == 0 or len(y) == 0:
        raise RuleError("matmul needs inputs of rank >= 1", "use multiply for scalars")
    xs = (1,) + x if len(x) == 1 else x
    ys = y + (1,) if len(y) == 1 else y
    try:
        merge_dim(xs[-1], ys[-2])
    except ValueError:
        raise RuleError(
            f"matmul contracts {fmt_shape(x)} with {fmt_shape(y)}: inner sizes "
            f"{xs[-1]} and {ys[-2]} differ",
            "the last axis of the first input must equal the second-to-last of the second "
            "(transpose one input?)") from None
    batch = broadcast([xs[:-2], ys[:-2]]) if len(xs) > 2 or len(ys) > 2 else ()
    out = batch + (xs[-2], ys[-1])
    if len(x) == 1:
        out = out[:-2] + out[-1:]
    if len(y) == 1:
        out = out[:-1]
    return tuple(out)


register_op(OpDef(
    "matmul", _matmul_shape, arity=2, category="combinator",
    doc="Batched matrix product with numpy.matmul semantics: (..., n, k) @ (..., k, m) -> "
        "(..., n, m), batch axes broadcast.",
))


def matmul(a: Node, b: Node, name: str | None = None) -> Node:
    """``a @ b`` with ``numpy.matmul`` semantics (batched, broadcast).

    Args:
        a: node ``(..., n, k)`` (or ``(k,)``).
        b: node ``(..., k, m)`` (or ``(k,)``).
        name: layer name (default ``"matmul_{n}"``).

    Returns:
        (Node): ``(..., n, m)``.

    Raises:
        ShapeError: the inner sizes differ or batch axes do not broadcast.

    Examples:
        >>> q, k = gd.input("q", shape=(None, 4, 8)), gd.input("k", shape=(None, 8, 5))
        >>> gd.get_output_shape(gd.matmul(q, k), {"q": (2, 4, 8), "k": (2, 8, 5)})
        (2, 4, 5)
    """
    return make_node("matmul", [a, b], {}, name, where=caller_location())


# -- bias ----------------------------------------------------------------------------------------
register_op(OpDef(
    "bias", lambda s, a: tuple(s[0]),
    check_attrs=lambda a: {"bias_initializer": check_initializer(
        a.get("bias_initializer", "zeros"), "bias_initializer")},
    infer_dtype=lambda d, a: d[0] if d[0].startswith("float") else "float32",
    params=lambda s, a: [ParamSpec("bias", (feature_dim(s[0], "bias"),),
                                   a["bias_initializer"])],
    doc="x + bias on the last axis (Axon.bias): bias [features]; (..., features) -> same.",
))


def bias(x: Node, bias_initializer: Any = "zeros", name: str | None = None) -> Node:
    """``x + bias``, a learnable ``bias [features]`` on the last axis (Axon's ``bias``).

    Args:
        x: input node ``(..., f)``, ``f`` known.
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        name: layer name (default ``"bias_{n}"``).

    Returns:
        (Node): ``(..., f)``.

    Raises:
        ShapeError: the last axis is unknown.
        OptionError: an unknown initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> y = gd.bias(x, bias_initializer="ones", name="b")
        >>> state = gd.build(y)[0](np.zeros((1, 3), np.float32))
        >>> gd.predict(y, state, np.zeros((1, 3), np.float32))
        array([[1., 1., 1.]], dtype=float32)
    """
    return make_node("bias", [x], {"bias_initializer": bias_initializer}, name,
                     where=caller_location())


# -- pad -------------------------------------------------------------------------------------------
def _pad_attrs(a: dict) -> dict:
    config = a.get("padding_config")
    ok = isinstance(config, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 2 and all(is_int(v) and v >= 0 for v in c)
        for c in config)
    if not ok:
        raise RuleError(f"padding_config must be a list of (low, high) pairs of ints >= 0, "
                        f"one per spatial axis, got {config!r}",
                        "pass e.g. [(1, 1), (0, 2)] for two spatial axes", OptionError)
    return {"padding_config": tuple((int(lo), int(hi)) for lo, hi in config),
            "value": number(a.get("value", 0.0), "value"),
            "channels": channels_option(a.get("channels", "last"))}


def pad_widths(rank: int, a: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``(low, high)`` for every axis of a rank-``rank`` input (batch and channels: 0)."""
    spatial = list(a["padding_config"])
    return ([(0, 0)] + spatial + [(0, 0)] if a["channels"] == "last"
            else [(0, 0), (0, 0)] + spatial)


def _pad_shape(s: list, a: dict) -> tuple:
    n = len(a["padding_config"])
    if len(s[0]) != n + 2:
        raise RuleError(f"pad has a padding_config for {n} spatial axes, but the input "
                        f"{fmt_shape(s[0])} has {len(s[0]) - 2}",
                        f"give one (low, high) pair per spatial axis: the input is [batch, "
                        f"*spatial, channels] (channels={a['channels']!r})")
    return tuple(d if d is None else d + lo + hi
                 for d, (lo, hi) in zip(s[0], pad_widths(len(s[0]), a)))


register_op(OpDef(
    "pad", _pad_shape, check_attrs=_pad_attrs, infer_dtype=_first_dtype,
    doc="Pads the spatial axes with the constant `value` (Axon.pad): padding_config "
        "[(low, high)] per spatial axis; (N, 4, 4, C) -> (N, 6, 5, C) via [(1, 1), (0, 1)].",
))


def pad(x: Node, config: Sequence[tuple[int, int]], value: float = 0.0,
        channels: str = "last", name: str | None = None) -> Node:
    """Pad the spatial axes of ``[batch, *spatial, C]`` (Axon's ``pad``) with ``value``.

    Args:
        x: input node ``[batch, *spatial, C]`` (``channels="first"``: ``[batch, C, *spatial]``).
        config: one ``(low, high)`` pair of non-negative ints per spatial axis.
        value: the fill value.
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"pad_{n}"``).

    Returns:
        (Node): each spatial size grown by ``low + high``.

    Raises:
        ShapeError: ``config`` does not have one pair per spatial axis.
        OptionError: a bad pair or ``channels``.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 4, 3))
        >>> gd.get_output_shape(gd.pad(x, [(1, 1), (0, 2)]), (1, 4, 4, 3))
        (1, 6, 6, 3)
    """
    return make_node("pad", [x], {"padding_config": config, "value": value,
                                  "channels": channels}, name, where=caller_location())
