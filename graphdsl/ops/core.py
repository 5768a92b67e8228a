"""Graph sources and plumbing: input, constant, param, custom layer, container."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ..custom import function_name, lookup_function
from ..dtypes import is_float
from ..errors import GraphDSLError, OptionError, RuleError, fmt_shape
from ..initializers import check_initializer
from ..node import Node, caller_location, make_node, node_list, validate_name
from ..registry import OpDef, ParamSpec, register_op
from ._attrs import boolean, shape_tuple

_DTYPES = ("float32", "float64", "int32", "int64")


# -- input ------------------------------------------------------------------------------
def _input_attrs(a: dict) -> dict:
    dtype = a.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise RuleError(f"dtype must be one of {_DTYPES}, got {dtype!r}",
                        "pass dtype='float32' (or 'int64' for token ids)", OptionError)
    meta = a.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise RuleError(f"meta must be a mapping, got {type(meta).__name__}",
                        "pass a dict of JSON values (e.g. a Hugging Face config)", OptionError)
    out = {"shape": shape_tuple(a.get("shape"), "shape"), "dtype": dtype}
    if meta is not None:
        out["meta"] = MappingProxyType(dict(meta))
    return out


register_op(OpDef(
    "input", lambda s, a: a["shape"], check_attrs=_input_attrs, arity=0,
    infer_dtype=lambda d, a: a["dtype"], category="input",
    doc="A named model input. shape: tuple with None for any size (batch, sequence).",
))


def input(name: str, shape: Sequence[int | None], dtype: str = "float32",
          meta: Mapping[str, Any] | None = None) -> Node:
    """A model input ``name`` of shape ``shape`` (None = any size), e.g. ``(None, 16)``.

    Args:
        name: a plain identifier (it becomes a keyword of ``predict``'s dict).
        shape: the sizes, None for any (batch, sequence).
        dtype: ``"float32"`` (default), ``"int64"`` for token ids feeding an embedding, or
            another NumPy dtype name.
        meta: JSON values kept with the model (saved in its JSON; e.g. the Hugging Face
            config of a model from ``graphdsl.models``), never used in computing.

    Returns:
        (Node): the input, of ``shape`` and ``dtype``.

    Raises:
        LayerNameError: ``name`` is not an identifier.
        OptionError: a bad shape or dtype.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> gd.get_inputs(gd.dense(x, 4))
        {'x': (None, 16)}
    """
    where = caller_location()
    validate_name(name, "input", where, "input name")
    attrs: dict[str, Any] = {"shape": shape, "dtype": dtype}
    if meta is not None:
        attrs["meta"] = meta
    return make_node("input", [], attrs, name, where=where)


# -- constant ---------------------------------------------------------------------------
def _const_attrs(a: dict) -> dict:
    arr = np.asarray(a.get("value"))
    if arr.dtype.kind not in "iufb" and not is_float(arr.dtype):  # bfloat16: kind 'V'
        raise RuleError(f"constant must be numeric, got dtype {arr.dtype}",
                        "pass a NumPy array or number", OptionError)
    if is_float(arr.dtype) and not np.all(np.isfinite(arr)):
        raise RuleError("constant holds NaN or infinity", "pass finite values",
                        OptionError)
    arr = arr.astype(np.int64 if arr.dtype.kind in "iub" else np.float32, copy=True)
    arr.flags.writeable = False
    return {"value": arr}


register_op(OpDef(
    "constant", lambda s, a: tuple(a["value"].shape), check_attrs=_const_attrs, arity=0,
    infer_dtype=lambda d, a: "int64" if a["value"].dtype.kind == "i" else "float32",
    category="input", output_alias="model",
    doc="A fixed array baked into the graph; shape is the array's shape (no batch axis).",
))


def constant(value: Any, name: str | None = None) -> Node:
    """A constant array as a layer (copied, read-only; float values stored as float32).

    Args:
        value: an array-like.
        name: layer name (default ``"constant_{n}"``).

    Returns:
        (Node): of ``value``'s shape and dtype.

    Raises:
        OptionError: ``value`` is not a numeric array.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.add(x, gd.constant([10.0, 20.0]))
        >>> gd.predict(y, gd.ModelState.empty(), np.ones((1, 2), np.float32))
        array([[11., 21.]], dtype=float32)
    """
    return make_node("constant", [], {"value": value}, name, where=caller_location())


# -- param --------------------------------------------------------------------------------
def _param_attrs(a: dict) -> dict:
    return {"shape": shape_tuple(a.get("shape"), "shape", allow_none=False),
            "trainable": boolean(a.get("trainable", True), "trainable"),
            "initializer": check_initializer(a.get("initializer", "glorot_uniform"),
                                             "initializer")}


register_op(OpDef(
    "param", lambda s, a: a["shape"], check_attrs=_param_attrs, arity=0,
    params=lambda s, a: [ParamSpec("value", a["shape"], a["initializer"], a["trainable"])],
    output_alias="model",
    doc="A trainable array for custom layers; state.data[name]['value'] has shape `shape`.",
))


def param(name: str, shape: Sequence[int], initializer: Any = "glorot_uniform",
          trainable: bool = True) -> Node:
    """A learnable array of fixed ``shape``, stored as ``state.data[name]["value"]``.

    Feeds custom layers or arithmetic ops (Axon's ``param`` for custom layers).

    Args:
        name: layer name, also the state key.
        shape: fixed sizes (no None).
        initializer: initializer name or callable (default ``"glorot_uniform"``).
        trainable: False freezes it.

    Returns:
        (Node): of ``shape``, float32.

    Raises:
        OptionError: an unknown size or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> y = gd.multiply(x, gd.param("scale", (3,), initializer="ones"))
        >>> gd.build(y)[0](np.zeros((1, 3), np.float32)).data["scale"]["value"].tolist()
        [1.0, 1.0, 1.0]
    """
    return make_node("param", [], {"shape": shape, "initializer": initializer,
                                   "trainable": trainable}, name, where=caller_location())


# -- custom layer ----------------------------------------------------------------------
def _probe(fn: Callable, in_shapes: Sequence[tuple], in_dtypes: Sequence[str], opts: dict,
           fill: int) -> tuple:
    arrays = [np.zeros(tuple(fill if d is None else d for d in s), dtype=dt)
              for s, dt in zip(in_shapes, in_dtypes)]
    return np.asarray(fn(*arrays, xp=np, **opts)).shape


def _layer_shape(s: Sequence[tuple], a: Mapping[str, Any]) -> tuple:
    return a["output_shape"]


_LAYER_ATTRS = ("fn", "fn_name", "opts", "output_shape")

def _probe_layer(in_shapes: Sequence[tuple], in_dtypes: Sequence[str],
                 a: Mapping[str, Any]) -> tuple:
    """The output shape of the custom function run on zeros of these (concrete) shapes."""
    return _probe(a["fn"], in_shapes, in_dtypes, a["opts"], 1)


register_op(OpDef(
    "custom", _layer_shape, arity=(0, None), output_alias="inputs", probe=_probe_layer,
    check_attrs=lambda a: {k: a.get(k) for k in _LAYER_ATTRS},
    doc="A custom layer: fn(*arrays, xp=<backend array namespace>, **opts) -> array. "
        "It runs on every backend (xp is numpy or torch).",
))


def layer(fn: Callable[..., Any] | str, inputs: Node | Sequence[Node], *,
          name: str | None = None, output_shape: Sequence[int | None] | None = None,
          **opts: Any) -> Node:
    """A custom layer that runs ``fn(*arrays, xp=xp, **opts)`` on every backend.

    ``xp`` is the backend's array namespace (``numpy`` or ``torch``); write ``fn`` with
    functions both provide (``xp.tanh``, ``xp.exp``, ``@``, ...). Save/load and ONNX need
    ``fn`` registered (``graphdsl.register_function``, ``graphdsl.register_onnx_rule``).

    Args:
        fn: a function, or the name it was registered under.
        inputs: a node or a list of nodes, passed positionally.
        name: layer name (default ``"layer_{n}"``).
        output_shape: the output shape; inferred by running ``fn`` on zeros when None.
        **opts: keyword options passed to ``fn`` (JSON values, saved with the model).

    Returns:
        (Node): of the inferred (or given) shape.

    Raises:
        GraphDSLError: ``fn`` is neither callable nor registered, or fails on zeros.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.layer(lambda a, *, xp, k: a * k, x, k=3.0)
        >>> gd.predict(y, gd.ModelState.empty(), np.ones((1, 2), np.float32))
        array([[3., 3.]], dtype=float32)
    """
    where = caller_location()
    if isinstance(fn, str):
        fn_name, fn = fn, lookup_function(fn)
    elif callable(fn):
        fn_name = function_name(fn)
    else:
        raise GraphDSLError(f"layer needs a function, got {type(fn).__name__}", op="custom",
                            layer=name, where=where, fix="pass a callable or a registered name")
    ins = node_list(inputs, "custom", where, "inputs", name)  # nodes only
    if output_shape is None:
        shp = [x.shape for x in ins]
        dts = [x.dtype for x in ins]
        try:
            a, b = _probe(fn, shp, dts, opts, 2), _probe(fn, shp, dts, opts, 3)
        except Exception as e:  # the user's function failed on probe data
            raise GraphDSLError(
                f"could not infer the output shape of custom layer by running it on zeros "
                f"({type(e).__name__}: {e})", layer=name, op="custom", where=where,
                shapes=shp,
                fix="check the function, or pass output_shape=(None, ...) explicitly",
            ) from None
        if len(a) != len(b):
            raise GraphDSLError("custom layer output rank depends on the input sizes",
                                layer=name, op="custom", where=where,
                                fix="pass output_shape explicitly")
        output_shape = tuple(x if x == y else None for x, y in zip(a, b))
    try:
        output_shape = shape_tuple(tuple(output_shape), "output_shape")
    except RuleError as e:
        raise GraphDSLError(e.what, layer=name, op="custom", where=where, fix=e.fix) from None
    attrs = {"fn": fn, "fn_name": fn_name, "opts": dict(opts), "output_shape": output_shape}
    return make_node("custom", ins, attrs, name, where=where)


# -- container -------------------------------------------------------------------------
def _container_attrs(a: dict) -> dict:
    keys = a.get("keys")
    if keys is None:
        return {"keys": None}
    if not isinstance(keys, (tuple, list)) or not all(isinstance(k, str) for k in keys):
        raise RuleError(f"container keys must be a list of strings, got {keys!r}",
                        "pass a dict {name: node} (or keys=None for a tuple)",
                        OptionError)
    if len(set(keys)) != len(keys):
        raise RuleError(f"container keys {list(keys)} repeat a key",
                        "give each output its own key", OptionError)
    return {"keys": tuple(keys)}


def _container_shape(s: list, a: dict) -> None:
    if a["keys"] is not None and len(a["keys"]) != len(s):
        raise RuleError(f"container has {len(s)} outputs but {len(a['keys'])} keys "
                        f"{list(a['keys'])}", "give one key per output", OptionError)


register_op(OpDef(
    "container", _container_shape, arity=(1, None), category="container",
    output_alias="inputs", check_attrs=_container_attrs,
    doc="Several outputs as a tuple (keys None) or a dict (keys: names).",
))


def container(outputs: Sequence[Node] | Mapping[str, Node], name: str | None = None) -> Node:
    """Group several outputs: ``predict`` returns a tuple or a dict of arrays, in this order.

    Args:
        outputs: a list/tuple of nodes, or a dict ``{key: node}``.
        name: layer name (default ``"container_{n}"``).

    Returns:
        (Node): a container node (``shape`` None).

    Raises:
        GraphDSLError: an entry is not a node.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> out = gd.predict(gd.container({"a": x, "b": gd.relu(x)}), gd.ModelState.empty(),
        ...                  np.array([[-1.0, 1.0]], np.float32))
        >>> out["b"]
        array([[0., 1.]], dtype=float32)
    """
    where = caller_location()
    if isinstance(outputs, Mapping):
        keys = tuple(outputs)
        if not all(isinstance(k, str) for k in keys):
            raise GraphDSLError("container keys must be strings", op="container",
                                where=where, fix="use a dict with string keys")
        return make_node("container", list(outputs.values()), {"keys": keys}, name,
                         where=where)
    items = node_list(outputs, "container", where, "outputs", name, one=False)
    return make_node("container", items, {"keys": None}, name, where=where)


# -- optional inputs and their defaults -------------------------------------------------------
def _optional_shape(s: list, a: dict) -> tuple:
    given, default = s  # a given batch of 1 broadcasts (transformers' position_ids [1, seq])
    if len(given) != len(default) or any(
            x is not None and y is not None and x != y and (i or x != 1)
            for i, (x, y) in enumerate(zip(given, default))):
        raise RuleError(f"the optional input's shape {fmt_shape(given)} does not fit "
                        f"{fmt_shape(default)}, the shape the other inputs give its default",
                        "give it that shape (or a batch of 1, to broadcast over the batch)")
    return tuple(y if x is None else x for x, y in zip(given, default))


def _optional_dtype(d: list, a: dict) -> str:
    if d[0] != d[1] and not (is_float(d[0]) and is_float(d[1])):  # a policy's casts
        raise RuleError(f"the default has dtype {d[1]}, the optional input {d[0]}",
                        "give the default the input's dtype", OptionError)
    return d[0]


register_op(OpDef(
    "optional", _optional_shape, arity=2, infer_dtype=_optional_dtype, output_alias="inputs",
    doc="An optional input (Axon.optional) with a default: the input's value when predict "
        "gets it, else the default subgraph's; shape and dtype those of the input (a given batch "
        "of 1 broadcasts downstream).",
))


def optional(x: Node, default: Node, name: str | None = None) -> Node:
    """Make input ``x`` optional (Axon's ``Axon.optional``).

    A model can run without it, and then ``default`` (a subgraph of the other inputs, e.g.
    ``gd.full_like(input_ids, 1)``) takes its place.

    Args:
        x: a ``gd.input`` node.
        default: node of ``x``'s shape and dtype.
        name: layer name (default ``"optional_{n}"``).

    Returns:
        (Node): ``x`` when given, else ``default``.

    Raises:
        GraphDSLError: ``x`` is not a ``gd.input``.
        ShapeError: ``default`` differs from ``x`` in shape or dtype.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 3), dtype="int64")
        >>> mask = gd.optional(gd.input("mask", shape=(None, 3), dtype="int64"),
        ...                    gd.full_like(ids, 1))
        >>> gd.predict(mask, gd.ModelState.empty(), {"ids": np.zeros((1, 3), np.int64)})
        array([[1, 1, 1]])
    """
    where = caller_location()
    if isinstance(x, Node) and x.op != "input":
        raise GraphDSLError(f"optional wraps a model input, got a {x.op} layer",
                            layer=name, op="optional", where=where,
                            fix="pass gd.input(...) itself")
    return make_node("optional", [x, default], {}, name, where=where)


def _full_attrs(a: dict) -> dict:
    v, dt = a.get("value"), a.get("dtype")
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (
            float("inf"), float("-inf")):
        raise RuleError(f"value must be a finite number, got {v!r}", "pass e.g. value=1",
                        OptionError)
    if dt is not None and dt not in _DTYPES:
        raise RuleError(f"unsupported dtype {dt!r}", "use float32, int64 or None (x's)",
                        OptionError)
    return {"value": v, "dtype": dt}


register_op(OpDef(
    "full_like", lambda s, a: tuple(s[0]), check_attrs=_full_attrs,
    infer_dtype=lambda d, a: a["dtype"] or d[0],
    doc="An array of x's shape filled with `value` (dtype: x's unless given); e.g. the "
        "default all-ones attention_mask of the input ids.",
))


def full_like(x: Node, value: float, dtype: str | None = None, name: str | None = None
              ) -> Node:
    """An array of ``x``'s shape filled with ``value``.

    Args:
        x: node whose shape (batch included) the result takes.
        value: the fill value.
        dtype: the result's dtype (default ``x``'s).
        name: layer name (default ``"full_like_{n}"``).

    Returns:
        (Node): ``x.shape``, ``dtype``.

    Raises:
        OptionError: a bad value or dtype.

    Examples:
        >>> ids = gd.input("input_ids", shape=(None, 4), dtype="int64")
        >>> gd.predict(gd.full_like(ids, 1), gd.ModelState.empty(), np.zeros((1, 4), np.int64))
        array([[1, 1, 1, 1]])
    """
    return make_node("full_like", [x], {"value": value, "dtype": dtype}, name,
                     where=caller_location())
