"""Axon's ``block``: one function applied at several places with one set of parameters.

``blk = gd.block(fn, name="mlp")`` builds nothing yet; the first call ``blk(a)`` runs
``fn`` once on placeholder inputs ``subgraph0``, ``subgraph1``, ... of the call's shapes,
giving the block's *body* (a graph); every call is a ``block`` layer whose inputs are the
call's arguments and whose ``body`` attribute is that one graph. The body's parameters
live once under the block's name, a dot, and the body layer's name:
``state.data["mlp.dense_0"]["kernel"]`` (Axon nests them,
``%{"mlp" => %{"dense_0" => ...}}``); an unnamed block is ``block_0``, ``block_1``, ...
counting blocks, not calls, as Axon does. Calls are named ``mlp``, ``mlp_1``, ...
(unnamed: ``block_0``, ``block_1``, ... as any layer).

A function may return a tuple or dict of layers (nested, or a ``gd.container``), as
Axon's block of ``Axon.container(...)``: the body is then a container, the call's shape
the structure of its outputs' shapes, and ``blk(x)`` returns that structure of
``block_output`` nodes, each picking one output of the call (``path``: the positions and
keys leading to it); the call itself is no input of any other layer.

The compiler inlines every call (``expand_blocks``): each backend and the ONNX export
run the body's layers once per call, all reading the shared parameters, so gradients from
every use add up. A stateful body (batch norm in training, dropout keys) runs its uses in
topological order, each reading the state entries as the previous use left them (what
calling one ``torch.nn`` module twice does); the new state holds the last use's values.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .errors import GraphDSLError, OptionError, RuleError, ShapeError, fmt_shape
from .graph import Graph, analyze, infer_shapes, input_fits
from .node import Node, caller_location, is_valid_name, make_node, node_list, output_structure
from .registry import OpDef, ParamSpec, register_op
from .shapes import is_structure

PLACEHOLDER = "subgraph{}"  # the body's i-th input (Axon's name)


def _attrs(a: dict) -> dict:
    body, name = a.get("body"), a.get("block")
    if not isinstance(body, Node):
        raise RuleError(f"a block's body must be a graph node, got {type(body).__name__}",
                        "build blocks with gd.block(fn)", OptionError)
    if name is not None and not is_valid_name(name):
        raise RuleError(f"invalid block name {name!r}", "pass a name like name=\"mlp\"",
                        OptionError)
    return {"body": body, "block": name}


def _shape(in_shapes: Sequence[Any], attrs: Mapping[str, Any]) -> Any:
    g = analyze(attrs["body"])
    want = list(g.inputs.values())
    if len(in_shapes) != len(want):
        raise RuleError(f"the block takes {len(want)} input(s) (its function's arguments), "
                        f"got {len(in_shapes)}", f"call it with {len(want)} node(s)")
    for i, (w, s) in enumerate(zip(want, in_shapes)):
        if not input_fits(w, s):
            raise RuleError(
                f"argument {i} has shape {fmt_shape(s)}, but the block's body was built "
                f"for {fmt_shape(w)} (at its first call; its parameters have those sizes)",
                f"call the block on inputs of shape {fmt_shape(w)} (None = any size), or "
                "use a second gd.block for these shapes", ShapeError)
    return output_structure(g.output, infer_shapes(g, dict(zip(g.inputs, in_shapes))))


def _params(in_shapes: Sequence[Any], attrs: Mapping[str, Any]) -> list[ParamSpec]:
    """The body's parameters, ``owner`` relative to the block (``dense_0``)."""
    return [replace(spec, owner=owner)
            for (owner, _), spec in analyze(attrs["body"]).params.items()]


register_op(OpDef(
    "block", _shape, _params, _attrs, arity=(1, None), category="special",
    infer_dtype=lambda dts, a: output_structure(
        a["body"], {n.id: n.dtype for n in analyze(a["body"]).order}),
    doc="One function's layers (its body, built once) applied to this call's inputs, "
        "with the parameters every call of the block shares (Axon's block). A container "
        "body: the shape is the structure of its outputs' shapes (see block_output)."))


def _pick(tree: Any, path: Sequence[Any]) -> Any:
    """The item of a tuple / dict structure (of shapes, dtypes or container nodes) at
    ``path``; a container node is walked through its inputs."""
    for k in path:
        if isinstance(tree, Node):
            keys = tree.attrs["keys"]
            tree = tree.inputs[k if keys is None else keys.index(k)]
        else:
            tree = tree[k]
    return tree


def _output_attrs(a: dict) -> dict:
    path = a.get("path")
    if not isinstance(path, (tuple, list)) or not path or not all(
            type(k) in (int, str) for k in path):
        raise RuleError(f"block_output's path must be a non-empty list of positions and "
                        f"keys, got {path!r}", "let a block call make its outputs: blk(x) "
                        "returns them", OptionError)
    return {"path": tuple(path)}


def _output_shape(s: Sequence[Any], a: Mapping[str, Any]) -> Any:
    tree = s[0]
    for k in a["path"]:
        ok = isinstance(tree, dict) and k in tree or is_structure(tree) and isinstance(
            tree, tuple) and isinstance(k, int) and 0 <= k < len(tree)
        if not ok:
            raise RuleError(f"the block call's outputs {fmt_shape(s[0])} have no item at "
                            f"path {list(a['path'])}", "pick an output the block's function "
                            "returns (positions for tuples, keys for dicts)")
        tree = tree[k]
    if is_structure(tree):
        raise RuleError(f"path {list(a['path'])} leads to several outputs "
                        f"{fmt_shape(tree)}", "extend the path to one output")
    return tree


register_op(OpDef(
    "block_output", _output_shape, check_attrs=_output_attrs, category="special",
    infer_dtype=lambda dts, a: _pick(dts[0], a["path"]),
    doc="One output of a block call whose function returns a tuple / dict of layers: "
        "the item at `path` (positions and keys) of the call's structure of outputs."))


class Block:
    """The callable ``gd.block`` returns: ``blk(x, ...)`` (or ``blk([x, ...])``, Axon's
    list form) is a ``block`` layer of the output shape the body gives for the inputs'
    shapes; for a function returning a tuple / dict of layers, that structure of
    ``block_output`` nodes of the call. ``body`` is None until the first call."""

    def __init__(self, fn: Callable[..., Any], name: str | None, where: str) -> None:
        self.fn, self.name, self.where = fn, name, where
        self.body: Node | None = None
        self.calls = 0

    def __repr__(self) -> str:
        return f"#Block<{self.name or 'unnamed'} calls: {self.calls}>"

    def __call__(self, *args: Any) -> Any:
        where = caller_location()
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        ins = node_list(list(args), "block", where, "the arguments", self.name, one=False)
        if not ins:
            raise GraphDSLError("a block needs at least one input", layer=self.name,
                                op="block", where=where, fix="call it as blk(x)")
        if self.body is None:
            self.body = self._build(ins, where)
        name = self.name if not self.calls or self.name is None else \
            f"{self.name}_{self.calls}"
        node = make_node("block", ins, {"body": self.body, "block": self.name}, name,
                         where=where)
        self.calls += 1
        return _outputs(self.body, node, (), where)

    def _build(self, ins: list[Node], where: str) -> Node:
        from .ops.core import input as make_input
        ph = [make_input(PLACEHOLDER.format(i), x.shape, x.dtype) for i, x in enumerate(ins)]

        def bad(what: str, fix: str) -> GraphDSLError:
            return GraphDSLError(what, layer=self.name, op="block", where=where, fix=fix)

        out = _as_container(self.fn(*ph))
        if not isinstance(out, Node):
            raise bad(f"the block's function returned {type(out).__name__}, not a layer "
                      "or a tuple / dict of layers", "return the layer(s) it builds")
        g = analyze(out)
        mine = {id(p) for p in ph}
        other = [g.name(n) for n in g.input_nodes if id(n) not in mine]
        unused = [p.name for p in ph if p not in g.input_nodes]
        if other or unused:
            raise bad(f"the block's body reads the input(s) {other} that are not its "
                      f"arguments, or ignores its argument(s) {unused}",
                      "pass every node the function reads as an argument, and use "
                      "every argument")
        return out


def _as_container(out: Any) -> Any:
    """A tuple / list / dict of layers (nested) as ``gd.container`` nodes."""
    from .ops.core import container
    if isinstance(out, Mapping) or type(out) in (tuple, list):
        items = out.items() if isinstance(out, Mapping) else enumerate(out)
        done = {k: _as_container(v) for k, v in items}
        return container(done if isinstance(out, Mapping) else list(done.values()))
    return out


def _outputs(body: Node, call: Node, path: tuple, where: str) -> Any:
    """What a call returns: the call, or its ``block_output`` nodes shaped as ``body``."""
    if body.op != "container":
        return make_node("block_output", [call], {"path": path}, where=where) if path \
            else call
    keys = body.attrs["keys"]
    items = [_outputs(b, call, (*path, k), where)
             for k, b in zip(range(len(body.inputs)) if keys is None else keys, body.inputs)]
    return tuple(items) if keys is None else dict(zip(keys, items))


def block(fn: Callable[..., Any], name: str | None = None) -> Block:
    """Axon's ``block``: a callable applying ``fn`` with one shared set of parameters.

    ``fn`` runs once, at the first call, on placeholder inputs of that call's shapes;
    every later call must pass inputs of those shapes (None axes any size). Parameters live
    under ``"{name}.{body layer}"``, e.g. ``state.data["mlp.dense_0"]["kernel"] [in, out]``.

    Args:
        fn: ``fn(*nodes) -> node`` building layers (any number of arguments; one output, or
            a tuple / dict of them, nested, which each call then returns as that structure).
        name: the block's name; None is ``block_0``, ``block_1``, ... per block.

    Returns:
        (Block): call it as ``blk(x, ...)`` (or ``blk([x, ...])``) to get a ``block`` layer.

    Raises:
        GraphDSLError: ``fn`` is not callable or returns no node.
        ShapeError: a later call's shapes differ from the first's.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> blk = gd.block(lambda t: gd.dense(gd.dense(t, 8), 4), name="mlp")
        >>> y = blk(blk(x))                     # one kernel pair used twice
        >>> sorted(gd.get_parameters(y))
        ['mlp.dense_0', 'mlp.dense_1']
    """
    where = caller_location()
    if not callable(fn):
        raise GraphDSLError(f"block needs a function, got {type(fn).__name__}", layer=name,
                            op="block", where=where, fix="pass fn(x, ...) -> layer")
    if name is not None and not is_valid_name(name):
        raise GraphDSLError(f"invalid block name {name!r}", layer=name, op="block",
                            where=where, fix="pass a name like name=\"mlp\"")
    return Block(fn, name, where)


# -- inlining (the compiler runs this; backends never see a block layer) --------------------
_EXPANDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def expand_blocks(model: Node) -> Node:
    """``model`` with every block call replaced by its body's layers on the call's
    inputs, named ``{call}.{body layer}`` (the body's output: ``{call}``, so an ONNX
    output or an error names the call) and reading ``{block}.{body layer}``'s
    parameters; every other layer keeps its resolved name. ``model`` itself when it has
    no block (memoized per model)."""
    g = analyze(model)
    if not g.blocks:
        return model
    hit = _EXPANDED.get(model)
    if hit is None:
        hit = _EXPANDED[model] = _copy(g, {}, "", "", False)
    return hit


def _copy(g: Graph, given: dict[int, Node], prefix: str, call: str, frozen: bool,
          out_name: str | None = None) -> Node:
    """``g``'s output rebuilt: inputs from ``given`` (placeholder id -> node) or kept,
    blocks inlined; names and parameter owners get ``call`` / ``prefix`` in front, and the
    output is named ``out_name`` (a body's output: the name of its call)."""
    new: dict[int, Node] = {}
    for n in g.order:
        if n.op == "input":
            new[n.id] = given.get(n.id, n)
            continue
        ins = [new[i.id] for i in n.inputs]
        if n.op == "block_output":  # the inlined call's container: its output at path
            new[n.id] = _pick(ins[0], n.attrs["path"])
            continue
        label = call + g.name(n)
        name = out_name if out_name and n is g.output else label
        if n.op == "block":
            body = analyze(n.attrs["body"])
            new[n.id] = _copy(body, dict(zip((p.id for p in body.input_nodes), ins)),
                              f"{prefix}{g.blocks[n.id]}.", label + ".", frozen or n.frozen,
                              name)
            continue
        m = make_node(n.op, ins, dict(n.attrs), name, frozen=frozen or n.frozen,
                      where=n.where, policy=n.policy)
        if prefix:
            m = Node(m.op, m.inputs, m.attrs, m.name, m.shape, m.dtype, tuple(
                replace(p, owner=prefix + (p.owner or g.name(n))) for p in m.params),
                m.where, m.frozen, m.policy)
        new[n.id] = m
    return new[g.output.id]
