"""The graph node: a frozen dataclass carrying its op label, inputs and attributes.

A model is its output node (like ``%Axon{}``). Nodes are immutable; transforms build
new nodes and share unchanged subgraphs.
"""
from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import AttributeError_, GraphDSLError, NameError_, RuleError, ShapeError, fmt_shape
from .registry import OpDef, ParamSpec, Shape, get_op

_ids = itertools.count()
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # always used with fullmatch
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
    """One layer of the graph.

    ``shape`` is the symbolic output shape (None entries are unknown sizes such as the
    batch); ``params`` are the parameters the layer reads, resolved at construction.
    Container nodes (several outputs) have ``shape`` None and ``op == "container"``.
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
    id: int = field(default_factory=lambda: next(_ids))

    # -- Axon-style sugar ------------------------------------------------------------
    def __add__(self, other: Node) -> Node:
        from .ops.tensor import add

        return add(self, other)

    def __sub__(self, other: Node) -> Node:
        from .ops.tensor import subtract

        return subtract(self, other)

    def __mul__(self, other: Node) -> Node:
        from .ops.tensor import multiply

        return multiply(self, other)

    def __matmul__(self, other: Node) -> Node:
        from .ops.tensor import matmul

        return matmul(self, other)

    def __repr__(self) -> str:
        from .graph import analyze

        g = analyze(self)
        ins = ", ".join(f"{n}: {fmt_shape(s)}" for n, s in g.inputs.items())
        label = self.name or self.op
        return (
            f"#Node<{label} inputs: {{{ins}}} outputs: {fmt_shape(g.output_shape)} "
            f"nodes: {len(g.order)}>"
        )

    @property
    def label(self) -> str:
        """The explicit name, or ``<op>`` when the name is assigned at build time."""
        return self.name if self.name is not None else f"<unnamed {self.op}>"

    def error(self, what: str, fix: str | None = None, *, shapes: Any = None,
              cls: type[GraphDSLError] = GraphDSLError, name: str | None = None) -> GraphDSLError:
        """A GraphDSLError located at this node."""
        return cls(what, layer=name or self.name, op=self.op, where=self.where,
                   shapes=shapes, fix=fix)


def validate_name(name: Any, op: str, where: str, what: str = "layer name") -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise NameError_(
            f"invalid {what} {name!r}: names are identifiers (letters, digits, '_', "
            f"no dots, not starting with a digit)",
            op=op, where=where,
            fix="pass a name like name=\"encoder_fc1\"",
        )
    return name


def _as_node(x: Any, op: str, where: str, pos: int) -> Node:
    if isinstance(x, Node):
        if x.op == "container" and op != "container":
            raise ShapeError(
                f"input {pos} of {op} is a container of several outputs, not a tensor",
                op=op, where=where, fix="pass one element of the container instead",
            )
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
) -> Node:
    """Create a node: check its name and attributes, infer its shape and its parameters.

    Every constructor goes through here, so every check runs at construction time.
    """
    where = where or caller_location()
    opdef: OpDef = get_op(op)
    if name is not None:
        validate_name(name, op, where)
    ins = tuple(_as_node(x, op, where, i) for i, x in enumerate(inputs))
    _check_arity(opdef, ins, where, name)
    in_shapes = [i.shape for i in ins]
    raw = dict(attrs or {})
    try:
        attrs = opdef.check_attrs(dict(raw))
        unknown = sorted(set(raw) - set(attrs))
        if unknown:
            raise RuleError(f"{op} has no option(s) {unknown}",
                            f"{op} takes {sorted(attrs) or 'no options'}", AttributeError_)
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
    return Node(op, ins, MappingProxyType(attrs), name, shape, dtype, params, where, frozen)


def _freeze_spec(p: ParamSpec) -> ParamSpec:
    from dataclasses import replace

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
    override ``name``, ``attrs`` or ``frozen``. Returns ``node`` itself if nothing changed."""
    if not changes and len(inputs) == len(node.inputs) and all(
        a is b for a, b in zip(inputs, node.inputs)
    ):
        return node
    return make_node(
        node.op, inputs, dict(changes.get("attrs", node.attrs)), changes.get("name", node.name),
        frozen=changes.get("frozen", node.frozen), where=node.where,
    )
