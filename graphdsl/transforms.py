"""Graph transforms with Axon's semantics: one rewrite engine (``rewrite_nodes``) and
the rules run on it (``map_nodes``, ``freeze``; ``adapt``, ``merge_adapters`` and ``untie``
in ``graphdsl.adapters``). Each returns a new graph and shares every subgraph it does not
change."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import GraphDSLError
from .graph import analyze, layer_by_name
from .node import Node, rebuild, topo_order

Rewriter = Callable[[list[Node], Node], Node]


def rewrite_nodes(model: Node, fn: Callable[[Node], Rewriter | None], *,
                  keep_names: bool = False) -> Node:
    """Axon's ``rewrite_nodes``, the one engine every graph rewrite runs on.

    The engine walks ``model`` parents first and rebuilds each node on its rewritten
    parents (the node itself when none changed). ``fn(node)`` gets the original node and
    returns None to keep the rebuilt node, or a ``rewriter(inputs, output) -> Node`` that
    replaces it: ``inputs`` are the node's rewritten parents and ``output`` is the original
    layer applied to them (same op, attributes, name and frozen flag; shape and parameters
    re-inferred). So ``lambda inputs, out: gd.dropout(out, 0.1)`` inserts a layer after it,
    ``lambda inputs, out: gd.relu(inputs[0])`` replaces it and ``lambda inputs, out:
    graphdsl.node.rebuild(out, inputs, frozen=True)`` freezes it.

    Args:
        model: the output node.
        fn: the rule, ``fn(node) -> rewriter | None``.
        keep_names: make every node's resolved name explicit in ``output`` (the model is
            analyzed first). Default names (``dense_0`` ...) depend on position, so a
            replaced layer would otherwise move the names, and the state keys, of the layers
            after it; rewrites that keep a state (adapt, merge, untie) use it.

    Returns:
        (Node): the rewritten model (``model`` itself when nothing changed).

    Raises:
        GraphDSLError: a rewriter returns anything but a node.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(gd.relu(gd.dense(x, 8)), 2)
        >>> rule = lambda n: (lambda ins, out: gd.dropout(out, 0.1)) if n.op == "relu" else None
        >>> gd.get_op_counts(gd.rewrite_nodes(model, rule))["dropout"]
        1
    """
    g = analyze(model) if keep_names else None  # memoized: adapt & co. analyzed it already
    new: dict[int, Node] = {}
    for n in topo_order(model) if g is None else g.order:
        inputs = [new[i.id] for i in n.inputs]
        pin = {"name": g.names[n.id]} if g is not None and n.name is None else {}
        output = rebuild(n, inputs, **pin)
        rewriter = fn(n)
        new[n.id] = output if rewriter is None else \
            _node_or_error(rewriter(inputs, output), n, "rewriter")
    return new[model.id]


def map_nodes(model: Node, fn: Callable[[Node], Node]) -> Node:
    """Axon's ``map_nodes``: apply ``fn`` to every node, parents first.

    Args:
        model: the output node.
        fn: ``fn(node) -> Node``; it receives the node already rebuilt on its (mapped)
            inputs and returns the node to use in its place (often
            ``graphdsl.node.rebuild(node, node.inputs, frozen=True)`` or the node itself).

    Returns:
        (Node): the mapped model.

    Raises:
        GraphDSLError: ``fn`` returns anything but a node.

    Examples:
        >>> from graphdsl.node import rebuild
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.map_nodes(gd.dense(x, 2), lambda n: rebuild(n, n.inputs, frozen=True))
        >>> model.frozen
        True
    """
    return rewrite_nodes(model, lambda n: lambda inputs, out: _node_or_error(
        fn(out), n, "map_nodes function"))


def _node_or_error(out: object, n: Node, what: str) -> Node:
    if not isinstance(out, Node):
        raise GraphDSLError(f"{what} returned {type(out).__name__} for layer {n.label}",
                            layer=n.name, op=n.op, where=n.where, fix="return a graph node")
    return out


def freeze(model: Node, predicate: Callable[[Node], bool] | str | Iterable[str] | None = None
           ) -> Node:
    """Axon's ``freeze``: freeze the parameters of the layers where ``predicate(node)`` holds.

    ``init_fn`` then records them frozen in the ModelState (``requires_grad=False`` in
    ``to_torch``).

    Args:
        model: the output node.
        predicate: ``predicate(node) -> bool``, a layer name, or a list of layer names
            (as ``ModelState.freeze`` takes them); None freezes every layer.

    Returns:
        (Node): the model with those layers frozen.

    Raises:
        GraphDSLError: ``predicate`` is neither callable nor names, or names a layer the
            model does not have.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(gd.dense(x, 8, name="base"), 2, name="head")
        >>> model = gd.freeze(model, lambda n: n.name == "base")
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32))
        >>> sorted(state.trainable_parameters())
        ['head']
        >>> sorted(gd.build(gd.freeze(model, ["head"]))[0](np.zeros((1, 4), np.float32)).frozen)
        [('base', 'bias'), ('base', 'kernel'), ('head', 'bias'), ('head', 'kernel')]
    """
    if predicate is not None and not callable(predicate):  # a layer name or names
        names = [predicate] if isinstance(predicate, str) else list(predicate) \
            if isinstance(predicate, Iterable) else [predicate]
        if not all(isinstance(x, str) for x in names):
            raise GraphDSLError(f"freeze: expected a predicate(node), a layer name or a list "
                                f"of names, got {predicate!r}", op="freeze",
                                fix="pass e.g. gd.freeze(model, ['fc1']) or "
                                    "gd.freeze(model, lambda n: n.name == 'fc1')")
        g = analyze(model)
        ids = {layer_by_name(g, name).id for name in names}  # unknown: lists the layers
        return rewrite_nodes(model, lambda n: (lambda ins, out: rebuild(
            out, out.inputs, frozen=True)) if n.params and n.id in ids else None)
    return map_nodes(model, lambda n: rebuild(n, n.inputs, frozen=True)
                     if n.params and (predicate is None or predicate(n)) else n)


def set_options(model: Node, options: Mapping[str, Mapping[str, Any]]) -> Node:
    """Axon's ``set_options`` for several layers: rebuild each with new options.

    Each named layer is rebuilt with its other options kept, and the layers after it
    re-infer their shapes (one ``rewrite_nodes`` pass, ``keep_names=True``, so no
    layer's name or state key moves). Options are checked as the constructor checks them.

    Args:
        model: the output node.
        options: ``{layer name: {option: value}}``, names as ``graphdsl.properties``
            gives them.

    Returns:
        (Node): the new model.

    Raises:
        LayerNameError: a name that is no layer (the message lists them).
        OptionError: an option the layer does not take or a bad value.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.set_options(gd.dropout(x, 0.5), {"dropout_0": {"rate": 0.1}})
        >>> gd.get_options(model)["rate"]
        0.1
    """
    g = analyze(model)
    if not isinstance(options, Mapping) or not all(
            isinstance(v, Mapping) for v in options.values()):
        raise GraphDSLError(f"set_options takes {{layer name: {{option: value}}}}, got "
                            f"{options!r}", fix='pass e.g. {"dropout_0": {"rate": 0.1}}')
    targets = {layer_by_name(g, k).id: dict(v) for k, v in options.items()}
    return rewrite_nodes(model, lambda n: (lambda inputs, out: rebuild(
        out, inputs, attrs={**out.attrs, **targets[n.id]})) if n.id in targets else None,
        keep_names=True)
