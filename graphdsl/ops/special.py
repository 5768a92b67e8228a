"""Axon's special layers: blur_pool, mask, cond, and the compositions or_else,
stack_columns and nx.

``blur_pool``, ``mask`` and ``cond`` are ops (one kernel per backend, one ONNX rule);
the others are built from existing ops, so every backend and file format has them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import is_float
from ..errors import GraphDSLError, OptionError, RuleError, fmt_shape
from ..node import Node, caller_location, make_node, node_list
from ..registry import OpDef, register_op
from ..shapes import is_int, merge_dim
from ..windows import channels_option, split_channels, window
from .core import layer
from .tensor import concatenate, reshape

# -- blur_pool ------------------------------------------------------------------------------
#: Axon.Layers.blur_pool's low-pass filter (MosaicML's): [1, 2, 1] x [1, 2, 1] / 16
BLUR_FILTER = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16.0
#: the window of that filter: stride 1, padding (1, 1) per axis (Axon's
#: padding_for_filter), one group per channel (a depthwise conv)
BLUR_WINDOW = {"strides": 1, "padding": ((1, 1), (1, 1))}


def blur_kernel(channels: int) -> np.ndarray:
    """The depthwise kernel of blur_pool on ``channels`` channels in HWIO layout
    ``[3, 3, 1, channels]`` (conv's channels-last kernel with ``feature_group_size =
    channels``)."""
    return np.ascontiguousarray(np.broadcast_to(BLUR_FILTER[:, :, None, None],
                                                (3, 3, 1, channels)))


def _blur_shape(s: list, a: dict) -> tuple:
    c, spatial, batch = split_channels(s[0], a["channels"], "blur_pool")
    if len(spatial) != 2:
        raise RuleError(f"blur_pool needs a rank-4 input [batch, height, width, channels] "
                        f"(2 spatial axes, as Axon's), got {fmt_shape(s[0])}",
                        "reshape the input to (None, H, W, C), or (None, C, H, W) with "
                        "channels='first'")
    if c is None:
        raise RuleError(f"blur_pool needs a known channel axis, got {fmt_shape(s[0])}",
                        "give the input a fixed channel count, e.g. (None, 32, 32, 3)")
    window(spatial, 3, BLUR_WINDOW, "the blur_pool filter")  # a spatial axis of size 0
    return tuple(s[0])


register_op(OpDef(
    "blur_pool", _blur_shape,
    check_attrs=lambda a: {"channels": channels_option(a.get("channels", "last"))},
    doc="Axon's blur pooling: each channel convolved with the fixed low-pass filter "
        "[1 2 1]^T [1 2 1] / 16 (stride 1, one zero on each side); no parameters. "
        "[batch, H, W, C] -> same shape (channels='first': [batch, C, H, W]).",
))


def blur_pool(x: Node, channels: str = "last", name: str | None = None) -> Node:
    """Axon's ``blur_pool``: a spatial low-pass filter on a rank-4 input.

    Each channel is convolved with ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` with stride 1
    and one zero of padding on each side. Integer inputs give float outputs.

    Args:
        x: ``[batch, H, W, C]`` (``channels="first"``: ``[batch, C, H, W]``).
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"blur_pool_{n}"``).

    Returns:
        (Node): the shape of ``x``, float.

    Raises:
        ShapeError: rank is not 4.

    Examples:
        >>> x = gd.input("x", shape=(None, 3, 3, 1))
        >>> img = np.zeros((1, 3, 3, 1), np.float32); img[0, 1, 1, 0] = 16.0
        >>> gd.predict(gd.blur_pool(x), gd.ModelState.empty(), img)[0, :, :, 0]
        array([[1., 2., 1.],
               [2., 4., 2.],
               [1., 2., 1.]], dtype=float32)
    """
    return make_node("blur_pool", [x], {"channels": channels}, name, where=caller_location())


# -- mask --------------------------------------------------------------------------------------
def _mask_attrs(a: dict) -> dict:
    eos = a.get("eos_token")
    if not is_int(eos):
        raise RuleError(f"eos_token must be an integer, got {eos!r}",
                        "pass the token id that ends a sequence, e.g. eos_token=0",
                        OptionError)
    return {"eos_token": int(eos)}


register_op(OpDef(
    "mask", lambda s, a: tuple(s[0]), check_attrs=_mask_attrs,
    infer_dtype=lambda d, a: "int64",
    doc="Axon's sequence mask: 1 where the input (truncated to an integer, as Axon's "
        "as_type to s64) equals eos_token, else 0; int64, the input's shape.",
))


def mask(x: Node, eos_token: int, name: str | None = None) -> Node:
    """Axon's ``mask``: ``1`` where ``x`` (truncated to an int) equals ``eos_token``, else ``0``.

    A recurrent layer's ``mask`` option takes it: positions marked 1 are skipped.

    Args:
        x: input node, any shape.
        eos_token: the token id to mark.
        name: layer name (default ``"mask_{n}"``).

    Returns:
        (Node): int64 of ``x``'s shape (Axon's is u8).

    Raises:
        OptionError: ``eos_token`` is not an int.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 4), dtype="int64")
        >>> gd.predict(gd.mask(ids, 0), gd.ModelState.empty(), np.array([[5, 7, 0, 0]]))
        array([[0, 0, 1, 1]])
    """
    return make_node("mask", [x], {"eos_token": eos_token}, name, where=caller_location())


# -- cond ----------------------------------------------------------------------------------------
def _cond_shape(s: list, a: dict) -> tuple:
    pred, on_true, on_false = s
    if pred != ():
        raise RuleError(f"cond_fn must return a scalar (shape ()), got {fmt_shape(pred)}",
                        "reduce the condition to one value, e.g. xp.all(x) or "
                        "xp.mean(x) > 0")
    if len(on_true) != len(on_false):
        raise RuleError(f"cond's branches must have the same shape, got {fmt_shape(on_true)} "
                        f"and {fmt_shape(on_false)}", "give both graphs one output shape")
    try:
        return tuple(merge_dim(x, y) for x, y in zip(on_true, on_false))
    except ValueError:
        raise RuleError(f"cond's branches must have the same shape, got {fmt_shape(on_true)} "
                        f"and {fmt_shape(on_false)}", "give both graphs one output shape"
                        ) from None


def _cond_dtype(d: list, a: dict) -> str:
    if d[1] != d[2] and not (is_float(d[1]) and is_float(d[2])):  # a policy's casts
        raise RuleError(f"cond's branches must have the same dtype, got {d[1]} and {d[2]}",
                        "give both graphs one dtype", OptionError)
    return d[1]


register_op(OpDef(
    "cond", _cond_shape, arity=3, infer_dtype=_cond_dtype, category="combinator",
    doc="Axon's cond: inputs (predicate, on_true, on_false); on_true where the scalar "
        "predicate is nonzero, else on_false (a select: both branches are computed).",
))


def cond(parent: Node, cond_fn: Callable[..., Any] | str, true_graph: Node,
         false_graph: Node, name: str | None = None) -> Node:
    """Axon's ``cond``: ``true_graph`` when ``cond_fn(parent)`` is true, else ``false_graph``.

    ``cond_fn(x, *, xp)`` returns a scalar (e.g. ``xp.all(x)``); like a ``graphdsl.layer``
    function it runs on every backend, is saved by its registered name and exports to ONNX
    through its rule. It becomes a custom layer (``{name}_predicate`` when ``name`` is given)
    feeding the ``cond`` layer. Both branches are computed and the predicate selects one
    (ONNX ``Where``), so gradients reach only the branch taken.

    Args:
        parent: the node the predicate reads.
        cond_fn: the predicate, a function or a registered name.
        true_graph: node taken when true.
        false_graph: node taken when false, of ``true_graph``'s shape and dtype.
        name: layer name (default ``"cond_{n}"``).

    Returns:
        (Node): the shape of the branches.

    Raises:
        ShapeError: the branches differ in shape or dtype.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.cond(x, lambda a, *, xp: xp.all(a > 0), gd.relu(x), gd.exp(x))
        >>> gd.predict(y, gd.ModelState.empty(), np.array([[1.0, 2.0]], np.float32))
        array([[1., 2.]], dtype=float32)
    """
    where = caller_location()
    pred = layer(cond_fn, parent, name=None if name is None else f"{name}_predicate")
    return make_node("cond", [pred, true_graph, false_graph], {}, name, where=where)


# -- compositions --------------------------------------------------------------------------------
def or_else(a: Node, b: Node, name: str | None = None) -> Node:
    """Axon's ``or_else``: ``a`` when the model gets it, else ``b``.

    graphdsl's missing value is an optional input left out (it does not flow through later
    layers, as Axon's ``%Axon.None{}`` does), so ``a`` is a ``gd.input`` and this is
    ``gd.optional(a, b)``.

    Args:
        a: a ``gd.input`` node.
        b: its default, of ``a``'s shape and dtype.
        name: layer name.

    Returns:
        (Node): ``a`` when given, else ``b``.

    Raises:
        GraphDSLError: ``a`` is not a ``gd.input``.
        ShapeError: ``b`` does not fit it.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.or_else(gd.input("bias", shape=(None, 2)), gd.full_like(x, 0.5))
        >>> gd.predict(gd.add(x, y), gd.ModelState.empty(), {"x": np.ones((1, 2), np.float32)})
        array([[1.5, 1.5]], dtype=float32)
    """
    where = caller_location()
    if not isinstance(a, Node) or a.op != "input":
        got = f"a {a.op} layer" if isinstance(a, Node) else type(a).__name__
        raise GraphDSLError(f"or_else needs a model input first, got {got}: only an "
                            "input can be missing here", layer=name, op="optional",
                            where=where, fix="pass the gd.input(...) that may be left out, "
                                             "and its default second")
    return make_node("optional", [a, b], {}, name, where=where)


def _columns(x: Any, where: str, name: str | None) -> tuple[list[Any], list[Node]]:
    if isinstance(x, Mapping):
        return list(x), node_list(list(x.values()), "stack_columns", where, "columns", name)
    if isinstance(x, Node) and x.op == "container":
        keys = x.attrs["keys"]
        return (list(keys) if keys is not None else list(range(len(x.inputs))),
                list(x.inputs))
    cols = node_list(x, "stack_columns", where, "columns", name, one=False)
    return list(range(len(cols))), cols


def stack_columns(columns: Mapping[str, Node] | Sequence[Node] | Node,
                  ignore: Sequence[Any] = (), name: str | None = None) -> Node:
    """Axon's ``stack_columns``: the columns of a container stacked on a new last axis.

    ``Nx.stack(axis: -1)`` in the columns' order, built as each column reshaped to ``S +
    (1,)`` and concatenated.

    Args:
        columns: a dict ``{key: node}``, a ``gd.container`` (keys, or positions for a tuple
            one) or a list of nodes, all of one shape ``S``.
        ignore: keys (or positions) left out.
        name: layer name.

    Returns:
        (Node): ``S + (n,)``, int64 when every column is an integer, else float32.

    Raises:
        ShapeError: the columns differ in shape.
        GraphDSLError: an ``ignore`` key that is no column (Axon skips it silently).

    Examples:
        >>> a, b = gd.input("a", shape=(None,)), gd.input("b", shape=(None,))
        >>> gd.get_output_shape(gd.stack_columns({"a": a, "b": b}), {"a": (4,), "b": (4,)})
        (4, 2)
    """
    where = caller_location()
    keys, cols = _columns(columns, where, name)
    ignore = list(ignore) if isinstance(ignore, (list, tuple, set, frozenset)) else [ignore]
    unknown = [k for k in ignore if k not in keys]
    kept = [c for k, c in zip(keys, cols) if k not in ignore]
    problem = (f"ignore names {unknown}, which are not columns ({keys})" if unknown else
               "no column is left to stack" if not kept else None)
    shapes = [c.shape for c in kept]
    if problem is None and (len({len(s) for s in shapes}) > 1 or any(
            _disagree([s[i] for s in shapes]) for i in range(len(shapes[0])))):
        problem = ("the columns must have one shape, got "
                   + ", ".join(fmt_shape(s) for s in shapes))
    if problem is not None:
        raise GraphDSLError(problem, layer=name, op="stack_columns", where=where,
                            shapes={str(k): c.shape for k, c in zip(keys, cols)},
                            fix="stack columns of one shape; ignore only their keys")
    expanded = [reshape(c, (None,) * len(c.shape) + (1,)) for c in kept]
    return concatenate(expanded, axis=-1, name=name)


def _disagree(dims: list) -> bool:
    return len({d for d in dims if d is not None}) > 1


def nx(x: Node, fn: Callable[..., Any] | str, name: str | None = None) -> Node:
    """Axon's ``nx``: ``fn`` applied to ``x``, as a custom layer (``gd.layer(fn, x)``).

    Args:
        x: input node.
        fn: ``fn(x, *, xp)`` written with functions NumPy and torch share, or a registered
            name (``graphdsl.register_function``).
        name: layer name.

    Returns:
        (Node): of the shape ``fn`` gives.

    Raises:
        OptionError: ``fn`` is neither callable nor registered.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> gd.predict(gd.nx(x, lambda a, *, xp: a * 2), gd.ModelState.empty(),
        ...            np.ones((1, 2), np.float32))
        array([[2., 2.]], dtype=float32)
    """
    return layer(fn, x, name=name)
