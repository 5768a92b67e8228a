"""The graph node: a frozen dataclass carrying its op label, inputs and attributes.

A model is its output node (like ``%Axon{}``). Nodes are immutable; transforms build
new nodes and share unchanged subgraphs.
"""
from __future__ import annotations

import itertools
import os
import re
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import GraphDSLError, LayerNameError, OptionError, RuleError, ShapeError, fmt_shape
from .registry import OpDef, ParamSpec, Shape, get_op

_ids = itertools.count()
# a layer name: segments of letters, digits and '_' joined by dots, the first not starting
# with a digit ("fc1", "model.layers.0.self_attn.q_proj"); an input name: one identifier
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")  # used with fullmatch
_INPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_BACKENDS_DIR = os.path.join(os.path.dirname(_PKG_DIR), "backends")


def caller_location() -> str:
    """``file:line`` of the first frame outside graphdsl (where the user built the layer)."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not (fn.startswith(_PKG_DIR) or fn.startswith(_BACKENDS_DIR)):
            return f"{fn}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"


@dataclass(frozen=True, eq=False, repr=False)
class Node:
    """One layer of the graph: an immutable node that is also a model (Axon's ``%Axon{}``).

    Made by the layer constructors (``gd.dense`` ...), never directly. Fields: ``op``,
    ``inputs`` (parent nodes), ``attrs``, ``name`` (None until the graph resolves it),
    ``shape`` (the symbolic output shape; None entries are unknown sizes such as the
    batch), ``dtype``, ``params`` (the parameters the layer reads, resolved at
    construction), ``where`` (the file:line that built it), ``frozen``, ``policy``.
    Container nodes (several outputs) have ``shape`` None and ``op == "container"``.
    ``a + b``, ``a - b``, ``a * b`` and ``a @ b`` build add, subtract, multiply and matmul
    layers.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> y = gd.dense(x, 2, name="fc")
        >>> y.op, y.shape, y.inputs[0] is x
        ('dense', (None, 2), True)
        >>> (y + y).op
        'add'
    """

    op: str
    inputs: tuple[Node, ...]
    attrs: Mapping[str, Any]
    name: str | None
    shape: Shape | None
    dtype: str
    params: tuple[ParamSpec, ...]
    where: str
    frozen: bool = False
    policy: Any = None  # a graphdsl.mixed_precision.Policy, or None (no casts)
    id: int = field(default_factory=lambda: next(_ids))

    # -- Axon-style sugar: x + y, x - y, x * y, x @ y (the registry's ops) --------------
    def __add__(self, other: Node) -> Node:
        return make_node("add", [self, other], where=caller_location())

    def __sub__(self, other: Node) -> Node:
        return make_node("subtract", [self, other], where=caller_location())

    def __mul__(self, other: Node) -> Node:
        return make_node("multiply", [self, other], where=caller_location())

    def __matmul__(self, other: Node) -> Node:
        return make_node("matmul", [self, other], where=caller_location())

    def __repr__(self) -> str:
        order = topo_order(self)
        ins = ", ".join(f"{n.name}: {fmt_shape(n.shape)}" for n in order if n.op == "input")
        shape = output_structure(self, {n.id: n.shape for n in order})
        return (f"#Node<{self.name or self.op} inputs: {{{ins}}} outputs: "
                f"{fmt_shape(shape)} nodes: {len(order)}>")

    def __reduce__(self) -> tuple:
        """Pickle and deepcopy without recursion: a node is saved as the flat list of the
        nodes above it in topological order, each referring to its inputs saved before it,
        so a 30k-layer chain costs no stack depth. A node's saved form is one object per
        node (``_saved``), so nodes shared by several saved models stay shared."""
        return _last, ([_saved(n) for n in topo_order(self)],)

    def __copy__(self) -> Node:
        return self  # immutable: a shallow copy is the node itself

    def _fields(self) -> tuple:
        proxies = tuple(k for k, v in self.attrs.items() if isinstance(v, MappingProxyType))
        attrs = {k: dict(v) if k in proxies else v for k, v in self.attrs.items()}
        return (self.op, attrs, proxies, self.name, self.shape, self.dtype, self.params,
                self.where, self.frozen, self.policy)

    @property
    def label(self) -> str:
        """The explicit name, or ``<unnamed {op}>`` until the graph resolves it.

        Returns:
            (str): e.g. ``"fc1"`` or ``"<unnamed dense>"``.
        """
        return self.name if self.name is not None else f"<unnamed {self.op}>"


class _Saved:
    """The pickled form of one node: its fields and its inputs' saved forms."""

    def __init__(self, node: Node) -> None:
        self.node = weakref.ref(node)  # the cache below must not keep nodes alive

    def __reduce__(self) -> tuple:
        n = self.node()
        return _restore, (n._fields(), tuple(_saved(i) for i in n.inputs))


_SAVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _saved(node: Node) -> _Saved:
    s = _SAVED.get(node)
    if s is None:
        s = _SAVED[node] = _Saved(node)
    return s


def _restore(fields: tuple, inputs: tuple) -> Node:
    op, attrs, proxies, *rest = fields
    for v in attrs.values():  # a copy owned by this node alone: read-only again
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    attrs = {k: MappingProxyType(v) if k in proxies else v for k, v in attrs.items()}
    return Node(op, tuple(inputs), MappingProxyType(attrs), *rest)  # a fresh id


def _last(nodes: list[Node]) -> Node:
    return nodes[-1]


def node_list(x: Any, op: str, where: str, what: str = "inputs",
              name: str | None = None, one: bool = True) -> list[Any]:
    """``x`` as a list: ``[x]`` for a node (when ``one``), the items of a list, tuple or
    other iterable; anything else (None, a number, a string, a dict) is a GraphDSLError
    naming ``what``."""
    if isinstance(x, Node) and one:
        return [x]
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes, Mapping, Node)):
        return [_as_node(v, op, where, i) for i, v in enumerate(x)]
    want = "a node or a list of nodes" if one else "a list (or tuple) of nodes"
    raise GraphDSLError(f"{what} of {op} must be {want}, got {type(x).__name__}",
                        layer=name, op=op, where=where,
                        fix=f"pass {want}" + ("" if one else ", e.g. [x] for one output"))


def is_valid_name(name: Any, input_name: bool = False) -> bool:
    """Whether ``name`` is a valid layer name (or, with ``input_name``, a valid input
    name): the one rule every module uses."""
    rule = _INPUT_NAME_RE if input_name else _NAME_RE
    return isinstance(name, str) and rule.fullmatch(name) is not None


def validate_name(name: Any, op: str, where: str, what: str = "layer name") -> str:
    """``name`` itself, or a LayerNameError saying what a valid name looks like."""
    if what == "input name" and not is_valid_name(name, input_name=True):
        raise LayerNameError(
            f"invalid input name {name!r}: input names are identifiers (letters, digits, "
            "'_', not starting with a digit, no dots): they become keyword arguments",
            op=op, where=where, fix="pass a name like gd.input(\"input_ids\", ...)")
    if not is_valid_name(name):
        raise LayerNameError(
            f"invalid {what} {name!r}: a name is one or more segments of letters, digits "
            "and '_' joined by dots, the first not starting with a digit",
            op=op, where=where,
            fix="pass a name like name=\"encoder_fc1\" or \"model.layers.0.mlp.up_proj\"",
        )
    return name


def _as_node(x: Any, op: str, where: str, pos: int) -> Node:
    if isinstance(x, Node):
        if x.op == "container" and op != "container":
            raise ShapeError(
                f"input {pos} of {op} is a container of several outputs, not a tensor",
                op=op, where=where, fix="pass one element of the container instead",
            )
        if x.op == "block" and op != "block_output" and x.attrs["body"].op == "container":
            raise ShapeError(f"input {pos} of {op} is a block call of several outputs",
                             op=op, where=where, fix="use the nodes the block call "
                             "returned (a tuple or dict of them), one at a time")
        return x
    raise GraphDSLError(
        f"input {pos} of {op} is a {type(x).__name__}, not a graph node",
        op=op, where=where,
        fix="build inputs with gd.input(...) or gd.constant(...) and pass those nodes",
    )


def make_node(
    op: str,
    inputs: Sequence[Any],
    attrs: dict[str, Any] | None = None,
    name: str | None = None,
    *,
    frozen: bool = False,
    where: str | None = None,
    policy: Any = None,
) -> Node:
    """Create a node: check its name and attributes, infer its shape and its parameters.

    Every constructor goes through here, so every check runs at construction time.
    ``policy`` (``graphdsl.mixed_precision``): its ``params`` dtype becomes the dtype
    of the layer's floating-point parameters.
    """
    where = where or caller_location()
    opdef: OpDef = get_op(op)
    if name is not None:
        validate_name(name, op, where, "input name" if op == "input" else "layer name")
    ins = tuple(_as_node(x, op, where, i) for i, x in enumerate(inputs))
    _check_arity(opdef, ins, where, name)
    in_shapes = [i.shape for i in ins]
    raw = dict(attrs or {})
    try:
        attrs = opdef.check_attrs(dict(raw))
        unknown = sorted(set(raw) - set(attrs))
        if unknown:
            raise RuleError(f"{op} has no option(s) {unknown}",
                            f"{op} takes {sorted(attrs) or 'no options'}", OptionError)
        shape = opdef.infer_shape(in_shapes, attrs)
        dtype = opdef.infer_dtype([i.dtype for i in ins], attrs)
        params = tuple(opdef.params(in_shapes, attrs))
    except RuleError as e:
        raise e.cls(
            e.what, layer=name, op=op, where=where,
            shapes={f"input{i}": s for i, s in enumerate(in_shapes)} if ins else None,
            fix=e.fix,
        ) from None
    if frozen:
        params = tuple(_freeze_spec(p) for p in params)
    if policy is not None and policy.params is not None:  # None: a float parameter
        params = tuple(p if p.dtype else replace(p, dtype=policy.params) for p in params)
    return Node(op, ins, MappingProxyType(attrs), name, shape, dtype, params, where, frozen,
                policy)


def _freeze_spec(p: ParamSpec) -> ParamSpec:
    return replace(p, trainable=False) if p.kind == "param" else p


def _check_arity(opdef: OpDef, ins: tuple, where: str, name: str | None) -> None:
    lo, hi = (opdef.arity, opdef.arity) if isinstance(opdef.arity, int) else opdef.arity
    if len(ins) < lo or (hi is not None and len(ins) > hi):
        want = str(lo) if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise GraphDSLError(
            f"{opdef.name} takes {want} input(s), got {len(ins)}",
            layer=name, op=opdef.name, where=where,
            fix=f"pass {want} parent node(s)",
        )


def rebuild(node: Node, inputs: Sequence[Node], **changes: Any) -> Node:
    """The same layer on new inputs (shape and params re-inferred); ``changes`` may
    override ``name``, ``attrs``, ``frozen`` or ``policy``. Returns ``node`` itself if
    nothing changed."""
    if not changes and len(inputs) == len(node.inputs) and all(
        a is b for a, b in zip(inputs, node.inputs)
    ):
        return node
    return make_node(
        node.op, inputs, dict(changes.get("attrs", node.attrs)), changes.get("name", node.name),
        frozen=changes.get("frozen", node.frozen), where=node.where,
        policy=changes.get("policy", node.policy),
    )


# -- the graph walk (every module walks a model through these) -----------------------------
def topo_order(output: Node | Iterable[Node]) -> list[Node]:
    """The nodes reachable from ``output``, parents before children.

    Inputs are visited in order (an iterative depth-first post-order, so deep graphs cost no
    stack).

    Args:
        output: a node, or several.

    Returns:
        (list[Node]): every node once.

    Raises:
        GraphDSLError: ``output`` is not a node (or nodes).

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> [n.op for n in gd.topo_order(gd.relu(gd.dense(x, 3)))]
        ['input', 'dense', 'relu']
    """
    roots = list(output) if isinstance(output, Iterable) else [output]  # checked below
    order: list[Node] = []
    seen: set[int] = set()
    for root in roots:
        if not isinstance(root, Node):
            raise GraphDSLError(f"expected a graph node, got {type(root).__name__}",
                                fix="pass the model's output node")
        if root.id in seen:
            continue
        stack: list[tuple[Node, int]] = [(root, 0)]
        seen.add(root.id)
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i]
                if child.id not in seen:
                    seen.add(child.id)
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def output_structure(output: Node, values: Mapping[int, Any]) -> Any:
    """The value of ``output`` with containers expanded into tuples/dicts."""
    if output.op != "container":
        return values[output.id]
    items = [output_structure(x, values) for x in output.inputs]
    keys = output.attrs["keys"]
    return dict(zip(keys, items)) if keys is not None else tuple(items)
