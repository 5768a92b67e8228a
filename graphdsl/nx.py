"""The networkx view of a model: ``gd.to_networkx(model) -> networkx.DiGraph``.

Nodes are keyed by resolved layer name; edges go parent -> child. The node objects
stay the source of truth: this is a read-only copy for analysis and drawing
(``networkx.topological_generations`` for layering, reachability, cycle checks).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .adapters.contract import is_adapter
from .display import ModelView, fmt_value
from .node import Node
from .registry import OPS
from .state import ModelState

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["to_networkx", "jsonable"]


def jsonable(v: Any) -> Any:
    """A JSON-serializable rendering of an option value: tuples -> lists, arrays ->
    ``{"array": shape, "dtype": ...}`` (plus ``"value"`` when small), callables ->
    their name, anything else unknown -> its short text."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else repr(f)
    if isinstance(v, np.ndarray):
        out: dict[str, Any] = {"array": list(v.shape), "dtype": str(v.dtype)}
        if v.size <= 16:
            out["value"] = jsonable(v.tolist())
        return out
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    return fmt_value(v, limit=200)


def to_networkx(model: Node, inputs: Any = None, *,
                state: ModelState | None = None) -> nx.DiGraph:
    """``networkx.DiGraph`` of the model, nodes keyed by layer name, in topological order.

    Node attributes: ``name``, ``op``, ``category`` (the op's registry category), ``shape``
    (symbolic, or concrete for ``inputs``), ``dtype``, ``attrs`` (JSON-friendly),
    ``params`` (list of dicts: ``name``, ``owner``, ``param``, ``shape``, ``dtype``,
    ``kind``, ``initializer``, ``trainable``, ``status``, ``size``, ``shared``,
    ``adapter``), ``trainable``, ``frozen``, ``adapter``, ``where`` and ``order``. Edge
    attributes: ``index`` (the parent's first input position) and ``indices`` (all of
    them). Graph attributes: ``name`` (the output layer), ``inputs`` ``{name: shape}`` and
    ``output_shape``.

    Args:
        model: the output node.
        inputs: concrete input shapes (``{name: shape}`` or a bare shape), or None.
        state: a ModelState whose frozen flags and values set ``trainable``/``status``.

    Returns:
        (networkx.DiGraph): the graph.

    Raises:
        InputError: ``inputs`` that do not fit the model.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> g = gd.to_networkx(gd.relu(gd.dense(x, 2, name="fc")), (3, 4))
        >>> list(g.nodes), g.nodes["fc"]["shape"]
        (['x', 'fc', 'relu_0'], (3, 2))
    """
    view = ModelView(model, inputs, state)
    g = view.graph
    import networkx as nx  # imported on use: `import graphdsl` stays light for NumPy users

    G = nx.DiGraph(name=g.names[model.id], inputs=dict(g.inputs),
                   output_shape=view.shapes[model.id])
    for i, n in enumerate(g.order):
        name = g.names[n.id]
        params = [{
            "name": spec.name, "owner": info.owner, "param": info.name,
            "shape": info.shape, "dtype": info.dtype, "kind": spec.kind,
            "initializer": info.initializer, "trainable": info.trainable,
            "status": info.status, "size": info.size, "shared": info.shared,
            "adapter": info.adapter,
        } for spec, info in view.node_params(n)]
        opdef = OPS.get(n.op)
        G.add_node(
            name, name=name, op=n.op, category=opdef.category if opdef else None,
            shape=view.shapes[n.id], dtype=n.dtype,
            attrs={k: jsonable(v) for k, v in n.attrs.items()},
            params=params,
            trainable=all(p["trainable"] for p in params if p["kind"] == "param"),
            frozen=n.frozen, adapter=is_adapter(n), where=n.where, order=i,
        )
    for n in g.order:
        child = g.names[n.id]
        for k, p in enumerate(n.inputs):
            parent = g.names[p.id]
            if G.has_edge(parent, child):
                G.edges[parent, child]["indices"].append(k)
            else:
                G.add_edge(parent, child, index=k, indices=[k])
    return G
