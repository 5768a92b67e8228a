"""Graph transforms with Axon's semantics; both return a new graph and share every
subgraph they do not change."""
from __future__ import annotations

from collections.abc import Callable

from .errors import GraphDSLError
from .node import Node, rebuild, topo_order

Rewriter = Callable[[list[Node], Node], Node]


def map_nodes(model: Node, fn: Callable[[Node], Node]) -> Node:
    """Apply ``fn`` to every node, parents first. ``fn`` receives the node already rebuilt
    on its (mapped) inputs and returns a node to use in its place (often
    ``graphdsl.node.rebuild(node, node.inputs, frozen=True)`` or the node itself)."""
    new: dict[int, Node] = {}
    for n in topo_order(model):
        rebuilt = rebuild(n, [new[i.id] for i in n.inputs])
        new[n.id] = _node_or_error(fn(rebuilt), n, "map_nodes function")
    return new[model.id]


def rewrite_nodes(model: Node, fn: Callable[[Node], Rewriter | None]) -> Node:
    """Axon's ``rewrite_nodes``: ``fn(node)`` returns None to keep the node, or a
    ``rewriter(inputs, output) -> Node`` that replaces it. ``inputs`` are the node's
    (rewritten) parents and ``output`` is the original layer applied to them, so
    ``lambda inputs, out: gd.dropout(out, 0.1)`` inserts a layer after it and
    ``lambda inputs, out: gd.relu(inputs[0])`` replaces it."""
    new: dict[int, Node] = {}
    for n in topo_order(model):
        inputs = [new[i.id] for i in n.inputs]
        rebuilt = rebuild(n, inputs)
        rewriter = fn(n)
        if rewriter is None:
            new[n.id] = rebuilt
            continue
        new[n.id] = _node_or_error(rewriter(inputs, rebuilt), n, "rewriter")
    return new[model.id]


def _node_or_error(out: object, n: Node, what: str) -> Node:
    if not isinstance(out, Node):
        raise GraphDSLError(f"{what} returned {type(out).__name__} for layer {n.label}",
                            layer=n.name, op=n.op, where=n.where, fix="return a graph node")
    return out


def freeze(model: Node, predicate: Callable[[Node], bool] | None = None) -> Node:
    """Mark the parameters of the layers where ``predicate(node)`` holds (default: all)
    as frozen; init_fn then records them frozen in the ModelState."""
    return map_nodes(model, lambda n: rebuild(n, n.inputs, frozen=True)
                     if n.params and (predicate is None or predicate(n)) else n)
