"""Whole-graph analysis: topological order, names, inputs, shapes, parameters.

One iterative walk (no recursion, so 100k-node chains are fine) gives everything the
compiler, the display and the transforms need.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import (
    GraphDSLError,
    InputError,
    LayerNameError,
    RuleError,
    ShapeError,
    StateError,
    fmt_shape,
)
from .node import Node, output_structure, topo_order
from .registry import OPS, ParamSpec
from .shapes import is_int


@dataclass(frozen=True)
class Graph:
    """The analyzed graph of a model (its output node). Shared by every caller that
    analyzes the same node (``analyze`` memoizes it): read it, never change it."""

    output: Node
    order: list[Node]
    names: dict[int, str]  # node id -> resolved layer name
    inputs: dict[str, tuple]  # input name -> symbolic shape, in declaration order
    input_nodes: list[Node]
    params: dict[tuple[str, str], ParamSpec]  # (owner layer, param) -> merged spec
    param_users: dict[tuple[str, str], list[str]]
    # inputs the model runs without: every use is the first input of an `optional` node
    optional: frozenset[str] = frozenset()
    # block layer id -> the block's name, the prefix of its body's parameters
    blocks: Mapping[int, str] = field(default_factory=dict)

    def name(self, node: Node) -> str:
        return self.names[node.id]

    def error(self, node: Node, what: str, fix: str | None = None, *, shapes: Any = None,
              cls: type[GraphDSLError] = GraphDSLError) -> GraphDSLError:
        return cls(what, layer=self.names.get(node.id, node.name), op=node.op,
                   where=node.where, shapes=shapes, fix=fix)

    def param_ref(self, node: Node, spec: ParamSpec) -> tuple[str, str]:
        return _param_key(node, spec, self.names, self.blocks)


def _param_key(node: Node, spec: ParamSpec, names: Mapping[int, str],
               blocks: Mapping[int, str]) -> tuple[str, str]:
    """``(owner layer, param)`` of one of ``node``'s parameters: a block's body
    parameters live under the block's name (``"mlp.dense_0"``)."""
    if node.id in blocks:
        return (f"{blocks[node.id]}.{spec.owner}", spec.name)
    return (spec.owner or names[node.id], spec.name)


def block_names(order: list[Node], names: Mapping[int, str]) -> dict[int, str]:
    """``{block layer id: block name}``: the name given to ``gd.block``, else
    ``block_{k}`` counting the unnamed blocks (not their calls) in topological order, as
    Axon names them. Two different blocks of one name are an error."""
    bodies: dict[int, str] = {}  # id(body) -> block name
    taken = {n.attrs["block"]: n for n in order if n.op == "block" and n.attrs["block"]}
    k, out = 0, {}
    for n in (n for n in order if n.op == "block"):
        body, given = n.attrs["body"], n.attrs["block"]
        if id(body) not in bodies:
            if given is None:
                while f"block_{k}" in taken:
                    k += 1
                given, k = f"block_{k}", k + 1
            elif taken[given].attrs["body"] is not body:
                first = taken[given]
                raise LayerNameError(
                    f"two different blocks are named {given!r} (the other is called at "
                    f"{first.where})", layer=names[n.id], op="block", where=n.where,
                    fix="give each gd.block its own name= (or reuse one block object)")
            bodies[id(body)] = given
        out[n.id] = bodies[id(body)]
    return out


def resolve_names(order: list[Node]) -> dict[int, str]:
    """Explicit names as given; others ``{op}_{n}`` counted per op in topological order,
    skipping numbers an explicit name already uses. Duplicates are an error."""
    names: dict[int, str] = {}
    owner: dict[str, Node] = {}
    for n in order:
        if n.name is not None:
            if n.name in owner:
                first = owner[n.name]
                raise LayerNameError(
                    f"layer name {n.name!r} is used twice (also by a {first.op} layer "
                    f"defined at {first.where})", layer=n.name, op=n.op, where=n.where,
                    fix="give each layer a unique name=")
            owner[n.name] = n
            names[n.id] = n.name
    counters: dict[str, int] = {}
    for n in order:
        if n.name is None:
            k = counters.get(n.op, 0)
            while f"{n.op}_{k}" in owner:
                k += 1
            counters[n.op] = k + 1
            names[n.id] = f"{n.op}_{k}"
            owner[names[n.id]] = n
    return names


# id(output node) -> its Graph, the most recently analyzed few. A node is immutable, so
# its Graph never changes; the entry holds the node, so its id is not reused meanwhile.
_GRAPHS: OrderedDict[int, Graph] = OrderedDict()
_GRAPHS_LOCK = threading.Lock()
_GRAPHS_KEPT = 16


def analyze(model: Node) -> Graph:
    """Order, names, inputs and the merged parameter table of ``model``: one walk per
    node, memoized (the same node gives the same Graph; a rebuilt one is walked anew)."""
    with _GRAPHS_LOCK:
        g = _GRAPHS.get(id(model))
        if g is not None:
            _GRAPHS.move_to_end(id(model))
            return g
    g = _analyze(model)
    with _GRAPHS_LOCK:
        _GRAPHS[id(model)] = g
        if len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)
    return g


def _analyze(model: Node) -> Graph:
    if not isinstance(model, Node):
        raise GraphDSLError(f"expected a model (graph node), got {type(model).__name__}",
                            fix="pass the output node returned by a layer constructor, "
                                "or gd.container([...]) for several outputs")
    order = topo_order(model)
    names = resolve_names(order)
    input_nodes: list[Node] = []
    params: dict[tuple[str, str], ParamSpec] = {}
    users: dict[tuple[str, str], list[str]] = {}
    blocks = block_names(order, names)
    for n in order:
        if n.op == "container" and n is not model and not _only_in_containers(n, order):
            raise ShapeError("a container can only be the model output",
                             layer=names[n.id], op=n.op, where=n.where,
                             fix="use its elements as inputs instead")
        if n.op == "input":
            input_nodes.append(n)
        for spec in n.params:
            key = _param_key(n, spec, names, blocks)
            prev = params.get(key)
            if prev is None:
                params[key] = spec
            elif prev.shape != spec.shape or prev.kind != spec.kind:
                raise ShapeError(
                    f"parameter {key[0]}.{key[1]} is used by {users[key]} with shape "
                    f"{fmt_shape(prev.shape)} and by {names[n.id]!r} with shape "
                    f"{fmt_shape(spec.shape)}", layer=names[n.id], op=n.op, where=n.where,
                    fix="layers sharing a parameter must agree on its shape")
            elif prev.trainable and not spec.trainable:
                params[key] = replace(prev, trainable=False)
            users.setdefault(key, []).append(names[n.id])
    # inputs in the order they were declared (node ids grow with creation), which is the
    # order a module takes them positionally: input_ids, attention_mask, ... as declared
    input_nodes.sort(key=lambda n: n.id)
    inputs = {names[n.id]: n.shape for n in input_nodes}
    return Graph(model, order, names, inputs, input_nodes, params, users,
                 _optional_inputs(order, names), blocks)


def _optional_inputs(order: list[Node], names: dict[int, str]) -> frozenset[str]:
    """Names of the inputs used only as the first input of ``optional`` nodes."""
    only_optional: dict[int, bool] = {}  # input id -> every use so far is optional
    for n in order:
        for i, x in enumerate(n.inputs):
            if x.op == "input":
                only_optional[x.id] = only_optional.get(x.id, True) and (
                    n.op == "optional" and i == 0)
    return frozenset(names[n.id] for n in order if only_optional.get(n.id))


def _only_in_containers(n: Node, order: list[Node]) -> bool:
    return all(m.op == "container" for m in order if any(i is n for i in m.inputs))


# -- public queries ----------------------------------------------------------------------
def get_inputs(model: Node) -> dict[str, tuple]:
    """``{input name: shape}`` in the order the inputs were declared.

    That is the order a compiled torch module takes them positionally.

    Args:
        model: the output node (or container) of the model.

    Returns:
        (dict[str, tuple]): e.g. ``{"x": (None, 16)}``.

    Raises:
        GraphDSLError: ``model`` is not a Node, or the graph is invalid (e.g. a duplicate
            layer name).

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.get_inputs(model)
        {'x': (None, 16)}
    """
    return dict(analyze(model).inputs)


def normalize_input_shapes(g: Graph, inputs: Any) -> dict[str, tuple]:
    """Accept ``{name: shape or array}``, or a bare shape / array for a 1-input model."""
    required = [k for k in g.inputs if k not in g.optional]
    if isinstance(inputs, Mapping):
        given = {k: v for k, v in inputs.items() if v is not None or k not in g.optional}
    elif len(required) == 1 and inputs is not None:
        given = {required[0]: inputs}
    else:
        raise InputError(
            f"this model has {len(g.inputs)} inputs {list(g.inputs)}; pass a dict",
            shapes=dict(g.inputs), fix="pass {name: shape} for every input")
    out = {k: _template_shape(g, k, v) for k, v in given.items()}
    check_input_names(g, out)
    return out


def _template_shape(g: Graph, name: Any, value: Any) -> tuple:
    """The shape of one template entry: an array's shape, or a tuple of sizes/None."""
    shape = getattr(value, "shape", value)
    if isinstance(shape, (tuple, list)) and all(
            d is None or (is_int(d) and int(d) >= 0) for d in shape):
        return tuple(None if d is None else int(d) for d in shape)
    want = g.inputs.get(name) if isinstance(name, str) else None
    raise InputError(f"the template for input {name!r} is {value!r}, not an array or a "
                     "shape", layer=name if isinstance(name, str) else None, op="input",
                     shapes={"expected": want} if want is not None else None,
                     fix=f"pass an array or a shape tuple such as {fmt_shape(want or (1,))}")


def check_input_names(g: Graph, given: Mapping[str, Any]) -> None:
    """Every required input given, nothing else (optional inputs may be left out)."""
    missing = [k for k in g.inputs if k not in given and k not in g.optional]
    extra = [k for k in given if k not in g.inputs]
    if missing or extra:
        raise InputError(
            f"inputs do not match the model: missing {missing}, unexpected {extra}",
            shapes=dict(g.inputs), fix=f"pass these inputs: {list(g.inputs)}"
                                 + (f" ({sorted(g.optional)} optional)" if g.optional else ""))


def input_fits(want: tuple, shape: tuple) -> bool:
    """Whether ``shape`` fits an input declared ``want`` (same rank, None any size)."""
    return len(shape) == len(want) and all(w is None or w == s for w, s in zip(want, shape))


def check_input_shape(g: Graph, node: Node, shape: tuple) -> None:
    want = node.shape
    if not input_fits(want, shape):
        raise InputError(
            f"input {g.name(node)!r} expects shape {fmt_shape(want)}, got {fmt_shape(shape)}",
            layer=g.name(node), op="input", where=node.where,
            shapes={"expected": want, "given": shape},
            fix=f"pass an array of rank {len(want)} matching {fmt_shape(want)} "
                "(None = any size)")


def infer_shapes(g: Graph, input_shapes: Mapping[str, tuple], probe: bool = False
                 ) -> dict[int, Any]:
    """Concrete shapes of every node for the given input shapes (checked).

    A custom layer's sizes that depend on its inputs stay None unless ``probe`` is set,
    which runs its function once on zeros of the concrete shapes (for display and
    ``get_output_shape``; predict does not need it)."""
    shapes: dict[int, Any] = {}
    for n in g.order:
        if n.op == "input":
            given = input_shapes.get(g.name(n))
            if given is None and g.name(n) in g.optional:  # left out: its default runs
                shapes[n.id] = n.shape
                continue
            shp = tuple(given)
            check_input_shape(g, n, shp)
            shapes[n.id] = shp
            continue
        ins = [shapes[i.id] for i in n.inputs]
        if probe and OPS[n.op].probe is not None and None in (n.shape or ()):
            shapes[n.id] = _probe(g, n, ins)
            continue
        try:
            shapes[n.id] = OPS[n.op].infer_shape(ins, n.attrs)
        except RuleError as e:
            raise rule_error(g, n, ins, e) from None
    return shapes


def rule_error(g: Graph, n: Node, ins: list, e: RuleError) -> GraphDSLError:
    """The error for ``n``'s shape rule refusing its input shapes ``ins``."""
    return g.error(n, e.what, e.fix, shapes={g.name(i): s for i, s in zip(n.inputs, ins)},
                   cls=e.cls)


def _probe(g: Graph, n: Node, ins: list) -> Any:
    """The concrete output shape of ``n`` (an op with a ``probe``) for input shapes ``ins``."""
    if any(s is None or None in s for s in ins):
        return n.shape
    try:
        return OPS[n.op].probe(ins, [i.dtype for i in n.inputs], n.attrs)
    except Exception as e:  # the user's function failed on these sizes
        raise g.error(n, f"custom layer failed on inputs of shapes {ins} "
                      f"({type(e).__name__}: {e})", "check the function for these sizes",
                      shapes=ins) from None


def get_output_shape(model: Node, inputs: Any = None) -> Any:
    """The output shape for concrete input shapes, or the symbolic one.

    Args:
        model: the output node (or container).
        inputs: ``{name: shape}``, a bare shape for a 1-input model, or None for the
            symbolic shape (with None entries).

    Returns:
        (tuple | tuple[tuple, ...] | dict): the shape; containers give tuples/dicts of shapes.

    Raises:
        InputError: an input is missing, unknown or of the wrong rank.
        ShapeError: the shapes do not fit a layer.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.get_output_shape(model), gd.get_output_shape(model, (8, 16))
        ((None, 4), (8, 4))
    """
    g = analyze(model)
    if inputs is None:
        shapes = {n.id: n.shape for n in g.order}
    else:
        shapes = infer_shapes(g, normalize_input_shapes(g, inputs), probe=True)
    return output_structure(model, shapes)


def get_parameters(model: Node) -> dict[str, dict[str, ParamSpec]]:
    """``{layer: {param: ParamSpec}}`` of every parameter and state entry the model reads.

    Shared parameters appear once, under their owner. A ``ParamSpec`` has ``name``,
    ``shape``, ``initializer`` and ``kind``.

    Args:
        model: the output node.

    Returns:
        (dict[str, dict[str, ParamSpec]]): the specs, in parameter order.

    Raises:
        GraphDSLError: the graph is invalid.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> {k: {p: s.shape for p, s in v.items()} for k, v in gd.get_parameters(model).items()}
        {'fc1': {'kernel': (16, 32), 'bias': (32,)}, 'out': {'kernel': (32, 4), 'bias': (4,)}}
    """
    out: dict[str, dict[str, ParamSpec]] = {}
    for (layer, pname), spec in analyze(model).params.items():
        out.setdefault(layer, {})[pname] = spec
    return out


def get_op_counts(model: Node) -> dict[str, int]:
    """``{op: number of layers}`` in the graph (an activation option counts as a layer).

    Args:
        model: the output node.

    Returns:
        (dict[str, int]): layer counts by op.

    Raises:
        GraphDSLError: the graph is invalid.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.get_op_counts(model)
        {'input': 1, 'dense': 2, 'relu': 1}
    """
    return dict(Counter(n.op for n in topo_order(model)))


# -- Axon's graph functions (set_options, a rewrite, is in transforms.py) --------------------
def reduce_nodes(model: Node, acc: Any, fn: Callable[[Node, Any], Any]) -> Any:
    """Axon's ``reduce_nodes``: ``acc = fn(node, acc)`` for every node once, output first.

    The order is Axon's: the output, then its parents (``reversed(topo_order(model))``).

    Args:
        model: the output node.
        acc: the initial accumulator.
        fn: ``fn(node, acc) -> acc``.

    Returns:
        (Any): the final ``acc``.

    Raises:
        GraphDSLError: the graph is invalid.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.reduce_nodes(model, 0, lambda n, k: k + (n.op == "dense"))
        2
    """
    for n in reversed(topo_order(model)):
        acc = fn(n, acc)
    return acc


def pop_node(model: Node) -> tuple[Node, Any]:
    """Axon's ``pop_node``: ``(output node, rest)``, ``rest`` the model without its output layer.

    ``rest`` is the parent node, a list of them when the layer has several, or for a
    container its outputs as a tuple or dict.

    Args:
        model: the output node.

    Returns:
        (tuple[Node, Any]): the output layer and what remains.

    Raises:
        GraphDSLError: the layer has no parents (an input, constant or param).

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> last, rest = gd.pop_node(model)
        >>> last.name, rest.op
        ('out', 'relu')
    """
    if not isinstance(model, Node):
        raise GraphDSLError(f"pop_node needs a model (graph node), got {type(model).__name__}",
                            fix="pass the output node of a model")
    if not model.inputs:
        raise GraphDSLError(f"pop_node: {model.label} is a {model.op} layer without parents, "
                            "so no model is left under it", layer=model.name, op=model.op,
                            where=model.where, fix="pop a layer built on other layers")
    if model.op == "container":
        keys = model.attrs["keys"]
        rest: Any = dict(zip(keys, model.inputs)) if keys is not None else tuple(model.inputs)
    else:
        rest = list(model.inputs) if len(model.inputs) > 1 else model.inputs[0]
    return model, rest


def get_options(model: Node, name: str | None = None) -> dict[str, Any]:
    """Axon's ``get_options``: the options of the output layer, or of the layer ``name``.

    Checked attributes with defaults filled in, as a new dict; ``graphdsl.set_options``
    changes them.

    Args:
        model: the output node.
        name: a layer name as ``properties`` gives it; None for the output layer.

    Returns:
        (dict[str, Any]): the layer's options.

    Raises:
        LayerNameError: no layer is called ``name`` (the message lists them).

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.get_options(model, "fc1")["units"]
        32
    """
    g = analyze(model)
    node = model if name is None else layer_by_name(g, name)
    return dict(node.attrs)


def properties(model: Node) -> dict[str, str]:
    """Axon's ``properties``: ``{layer name: op}`` for every node, parents first.

    The names are those the graph resolves: explicit, or ``{op}_{n}``.

    Args:
        model: the output node.

    Returns:
        (dict[str, str]): layer name to op.

    Raises:
        GraphDSLError: the graph is invalid.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> model = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> gd.properties(model)
        {'x': 'input', 'fc1': 'dense', 'relu_0': 'relu', 'out': 'dense'}
    """
    g = analyze(model)
    return {g.names[n.id]: n.op for n in g.order}


def layer_by_name(g: Graph, name: Any) -> Node:
    """The node of ``g`` named ``name``; an unknown name lists the layers."""
    for n in g.order:
        if g.names[n.id] == name:
            return n
    raise LayerNameError(f"the model has no layer named {name!r}",
                         fix=f"use one of {[g.names[n.id] for n in g.order]}")


# -- reading a model's values from a state ({layer: {param: array}}) ----------------------
# the fix each kind of state names when a value has the wrong shape
_SHAPE_FIX = {"state": "re-create it with init_fn, or load weights that match this model",
              "initial_state": "pass an array of the right shape, or leave it out to "
                               "initialize it"}


def check_value(g: Graph, node: Node, spec: ParamSpec, value: Any, source: str = "state"
                ) -> Any:
    """``value`` itself when it fits ``spec``, one of ``node``'s parameters (its shape is
    ``spec.shape``, e.g. a dense kernel ``[in, out]``); else the StateError naming the
    layer and the ``source`` ("state" or "initial_state") it came from."""
    shp = getattr(value, "shape", None)
    if tuple(shp if shp is not None else ()) == tuple(spec.shape):
        return value
    owner, pname = g.param_ref(node, spec)
    raise StateError(
        f"{source} value {owner}.{pname} has shape {fmt_shape(shp)}, the layer needs "
        f"{fmt_shape(spec.shape)}", layer=g.name(node), op=node.op, where=node.where,
        shapes={"expected": spec.shape, "given": shp}, fix=_SHAPE_FIX[source])


def missing_value(g: Graph, node: Node, spec: ParamSpec, data: Mapping) -> StateError:
    """The error for ``data`` lacking one of ``node``'s parameters (``spec``)."""
    owner, pname = g.param_ref(node, spec)
    have = sorted(data[owner]) if isinstance(data, Mapping) and owner in data else None
    return StateError(
        f"the state has no {owner}.{pname} (shape {fmt_shape(spec.shape)})",
        layer=g.name(node), op=node.op, where=node.where,
        fix="initialize the state with init_fn(template, state) so missing values are "
            f"created (layer {owner!r} has: {have})")


def state_value(g: Graph, node: Node, spec: ParamSpec, data: Mapping) -> Any:
    """``data[owner][param]`` for one of ``node``'s parameters, checked to exist and to
    have the shape the node needs (``check_value``)."""
    owner, pname = g.param_ref(node, spec)
    try:
        arr = data[owner][pname]
    except (KeyError, TypeError):
        raise missing_value(g, node, spec, data) from None
    return check_value(g, node, spec, arr)


def check_known_keys(g: Graph, data: Mapping, what: str) -> None:
    """Every ``data[layer][param]`` must be a value the model reads."""
    for layer, params in data.items():
        for p in params:
            if (layer, p) not in g.params:
                known = sorted({k[0] for k in g.params})
                raise StateError(
                    f"{what} has {layer}.{p}, which this model does not use",
                    fix=f"remove it, or pass the state built for this model; layers with "
                        f"parameters: {known}")
