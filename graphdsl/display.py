"""Inspecting a model before running it: Axon's table, Mermaid, Graphviz DOT, rendering.

Every view is built from one analysis of the graph (``ModelView``): the
topological order, the resolved layer names, the shapes (symbolic, or concrete for
given input shapes) and the merged parameter table, in which a parameter shared by
several layers appears once, under its owner. Nothing here recurses over the graph,
so a 5k-layer chain displays like a 3-layer one.

    print(gd.display.as_table(model, {"x": (1, 784)}))   # Axon's table + counts
    print(gd.display.as_graph(model))                    # Mermaid flowchart text
    gd.display.to_dot(model)                             # Graphviz DOT text
    gd.display.render(model, "model.svg")                # needs Graphviz's `dot`
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import numpy as np

from .adapters.contract import is_adapter, owns
from .errors import GraphDSLError, fmt_shape
from .graph import Graph, analyze, infer_shapes, normalize_input_shapes, output_structure
from .node import Node, topo_order
from .registry import DerivedInit, ParamSpec
from .state import ModelState, need_state

__all__ = ["ModelView", "ParamInfo", "as_graph", "as_table", "render", "to_dot"]

# Nx-style type names, as Axon prints them (f32[16][32]).
_DTYPE_SHORT = {
    "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
    "int8": "s8", "int16": "s16", "int32": "s32", "int64": "s64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "u8",
}


# -- the shared analysis ---------------------------------------------------------------
@dataclass(frozen=True)
class ParamInfo:
    """One parameter (or state entry) of the model, counted once.

    Attributes:
        owner: the layer under which ``state.data[owner][name]`` lives.
        name: the parameter's name.
        shape: its shape.
        dtype: its dtype name.
        size: its number of scalars, None when the shape has an unknown dimension.
        nbytes: its bytes, or None.
        status: ``"trainable"``, ``"frozen"`` or ``"state"``.
        users: the layers that read it.
        adapter: owned by an adapter layer and not a base weight.
        initializer: the initializer's name.

    Examples:
        >>> view = gd.display.ModelView(gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc"))
        >>> info = view.params[("fc", "kernel")]
        >>> info.shape, info.status, info.shared
        ((4, 2), 'trainable', False)
    """

    owner: str
    name: str
    shape: tuple
    dtype: str
    size: int | None
    nbytes: int | None
    status: str
    users: tuple[str, ...]
    adapter: bool
    initializer: str

    @property
    def shared(self) -> bool:
        """Whether several layers read it (a tied or wrapped weight).

        Returns:
            (bool): True when shared.
        """
        return len(set(self.users)) > 1

    @property
    def trainable(self) -> bool:
        """Whether its status is ``"trainable"``.

        Returns:
            (bool): True when trainable.
        """
        return self.status == "trainable"


class ModelView:
    """Everything the views need, computed once (the analysis behind ``as_table``).

    Attributes: ``graph`` (the analysis), ``shapes`` ``{node id: shape}`` (concrete when
    ``inputs`` are given), ``params`` ``{(owner, param): ParamInfo}``, ``by_name``
    ``{layer name: node}``.

    Args:
        model: the output node.
        inputs: concrete input shapes (``{name: shape}``, arrays, or a bare shape for a
            1-input model); None for symbolic shapes (None = any size).
        state: take frozen flags and sizes from a ModelState instead of the graph.
        dtype: the dtype of parameters the graph gives none.

    Raises:
        StateError: ``state`` is not a ModelState.
        InputError: ``inputs`` that do not fit the model.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(x, 2, name="fc")
        >>> gd.display.ModelView(model, (1, 4)).totals()["trainable"]
        (10, 40, False)
    """

    def __init__(self, model: Node, inputs: Any = None, state: ModelState | None = None,
                 dtype: str = "float32") -> None:
        if state is not None:
            need_state(state, "state must be",
                       "pass the ModelState returned by init_fn, or omit state=")
        self.graph: Graph = analyze(model)
        g = self.graph
        if inputs is None:
            self.shapes: dict[int, Any] = {n.id: n.shape for n in g.order}
        else:
            self.shapes = infer_shapes(g, normalize_input_shapes(g, inputs), probe=True)
        for n in g.order:  # containers: the structure of their elements' shapes
            if n.op == "container":
                self.shapes[n.id] = output_structure(n, self.shapes)
        self.by_name: dict[str, Node] = {g.names[n.id]: n for n in g.order}
        self.index: dict[int, int] = {n.id: i for i, n in enumerate(g.order)}
        self.params: dict[tuple[str, str], ParamInfo] = {
            key: self._info(key, spec, state, dtype) for key, spec in g.params.items()}

    # -- classification ---------------------------------------------------------------------
    def _info(self, key: tuple[str, str], spec: ParamSpec, state: ModelState | None,
              dtype: str) -> ParamInfo:
        owner, pname = key
        arr = None
        if state is not None:
            arr = state.data.get(owner, {}).get(pname)
        shape = tuple(spec.shape)
        dt = spec.dtype or dtype
        if arr is not None:
            a = np.asarray(arr)
            shape, dt = tuple(a.shape), str(a.dtype)
        size = _size(shape)
        nbytes = None if size is None else size * _itemsize(dt)
        if spec.kind == "state" or (state is not None and state.is_state(owner, pname)):
            status = "state"
        elif arr is not None:
            status = "frozen" if state.is_frozen(owner, pname) else "trainable"
        else:
            status = "trainable" if spec.trainable else "frozen"
        owner_node = self.by_name.get(owner)
        adapter = owner_node is not None and owns(owner_node, spec) and status != "state"
        return ParamInfo(owner, pname, shape, dt, size, nbytes, status,
                         tuple(self.graph.param_users.get(key, ())), adapter,
                         _init_label(spec.initializer))

    def name(self, node: Node) -> str:
        """The layer name the graph resolves for ``node``.

        Args:
            node: a node of the model.

        Returns:
            (str): its name.
        """
        return self.graph.names[node.id]

    def node_params(self, node: Node) -> list[tuple[ParamSpec, ParamInfo]]:
        """The parameters ``node`` reads, in its own order, with their merged info.

        Args:
            node: a node of the model.

        Returns:
            (list[tuple[ParamSpec, ParamInfo]]): one pair per parameter.
        """
        return [(spec, self.params[self.graph.param_ref(node, spec)]) for spec in node.params]

    def is_frozen_layer(self, node: Node) -> bool:
        """Whether every parameter ``node`` reads is frozen (a muted base layer).

        Args:
            node: a node of the model.

        Returns:
            (bool): True when it has parameters and all are frozen.
        """
        ps = [info for _, info in self.node_params(node) if info.status != "state"]
        return bool(ps) and all(p.status == "frozen" for p in ps)

    def totals(self) -> dict[str, tuple[int, int, bool]]:
        """The parameter counts by group.

        Returns:
            (dict[str, tuple[int, int, bool]]): ``{"total"|"trainable"|"frozen"|"adapter"|"state":
            (count, bytes, partial)}``; ``partial`` is True when some parameter has an unknown
            size (not counted).
        """
        out = {k: [0, 0, False] for k in ("total", "trainable", "frozen", "adapter", "state")}
        for info in self.params.values():
            groups = ["state"] if info.status == "state" else ["total", info.status]
            if info.adapter:
                groups.append("adapter")
            for k in groups:
                if info.size is None:
                    out[k][2] = True
                else:
                    out[k][0] += info.size
                    out[k][1] += info.nbytes or 0
        return {k: tuple(v) for k, v in out.items()}


def _size(shape: tuple) -> int | None:
    if any(d is None for d in shape):
        return None
    return math.prod(int(d) for d in shape)


def _itemsize(dtype: str) -> int:
    if dtype == "bfloat16":
        return 2
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return 4


def _init_label(init: Any) -> str:
    if isinstance(init, str):
        return init
    if isinstance(init, DerivedInit):
        return init.label
    return getattr(init, "__name__", type(init).__name__)


# -- formatting helpers ---------------------------------------------------------------------
def type_shape(shape: tuple, dtype: str) -> str:
    """Axon's parameter notation: ``(16, 32), float32`` -> ``f32[16][32]``; a scalar is
    ``f32[]``; an unknown size prints as ``[?]``."""
    dims = "".join(f"[{'?' if d is None else d}]" for d in shape) or "[]"
    return _DTYPE_SHORT.get(dtype, dtype) + dims


def shape_str(shape: Any, dtype: str = "float32") -> str:
    """``(None, 16)``; the dtype is appended when it is not float32 (``(None, 8) int64``)."""
    s = fmt_shape(shape)
    plain = dtype == "float32" or shape is None or not isinstance(dtype, str)
    return s if plain or isinstance(shape, dict) else f"{s} {dtype}"


def readable_bytes(n: int) -> str:
    """``1628200`` -> ``"1.63 MB"`` (decimal units, like Axon's kilobytes/megabytes)."""
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def fmt_value(v: Any, limit: int = 48) -> str:
    """A short, one-line rendering of an option value."""
    if isinstance(v, np.ndarray):
        s = "array " + type_shape(v.shape, str(v.dtype))
    elif isinstance(v, DerivedInit):
        s = v.label
    elif callable(v):
        s = getattr(v, "__qualname__", None) or getattr(v, "__name__", None) or type(v).__name__
    elif isinstance(v, Mapping):
        s = "{" + ", ".join(f"{k}: {fmt_value(x, limit)}" for k, x in v.items()) + "}"
    elif isinstance(v, (tuple, list)):
        s = fmt_shape(tuple(v)) if all(x is None or isinstance(x, int) for x in v) else \
            "(" + ", ".join(fmt_value(x, limit) for x in v) + ")"
    else:  # str, bool, int, float, None and anything else
        s = repr(v)
    s = " ".join(s.split())  # one line
    return s if len(s) <= limit else s[: limit - 3] + "..."


# options shown elsewhere (the input's shape column) or through another option (fn)
_HIDDEN_OPTIONS = {("input", "shape"), ("custom", "fn_name"), ("custom", "output_shape")}


def options(node: Node) -> list[str]:
    """``key: value`` lines for a layer's options (the input's shape and a custom layer's
    function object are shown elsewhere or by name)."""
    lines = []
    for k, v in node.attrs.items():
        if (node.op, k) in _HIDDEN_OPTIONS:
            continue
        if (node.op, k) == ("input", "meta"):
            lines.append(f"meta: {len(v)} entries")
        elif (node.op, k) == ("custom", "fn"):
            lines.append(f"fn: {node.attrs.get('fn_name') or fmt_value(v)}")
        elif (node.op, k) == ("block", "body"):  # the body's layers, not the node's repr
            n_layers = sum(n.op not in ("input", "container") for n in topo_order(v))
            lines.append(f"body layers: {n_layers}")
        elif (node.op, k, v) == ("block", "block", None):  # named in its parameters' keys
            continue
        elif (node.op, k) == ("custom", "opts") and isinstance(v, Mapping):
            lines.extend(f"{ok}: {fmt_value(ov)}" for ok, ov in v.items())
        else:
            lines.append(f"{k}: {fmt_value(v)}")
    if node.frozen:
        lines.append("frozen: True")
    if node.policy is not None:
        lines.append(f"policy: {node.policy!r}")
    return lines


def param_line(view: ModelView, node: Node, spec: ParamSpec, info: ParamInfo) -> str:
    """``kernel: f32[784][512] (trainable)``; a parameter owned by another layer shows as
    ``owner.param``; ``shared`` marks a parameter read by several layers."""
    label = spec.name if info.owner == view.name(node) else f"{info.owner}.{info.name}"
    marks = [info.status]
    if info.shared:
        marks.append("shared")
    if info.adapter:
        marks.append("adapter")
    return f"{label}: {type_shape(info.shape, info.dtype)} ({', '.join(marks)})"


# -- as_table ------------------------------------------------------------------------------
def as_table(model: Node, inputs: Any = None, *, state: ModelState | None = None,
             title: str = "Model") -> str:
    """Axon's ``Axon.Display.as_table``: one row per layer in topological order.

    Columns: Layer (``name ( op )``), Input Shape (``parent: shape`` per input), Output
    Shape, Options and Parameters (``kernel: f32[784][512] (trainable)``). The footer counts
    Total, Trainable, Frozen and Adapter parameters with their bytes; a parameter shared by
    several layers is counted once.

    Args:
        model: the output node.
        inputs: concrete input shapes (``{name: shape}``, arrays, or a bare shape for a
            1-input model); None for symbolic shapes (None = any size).
        state: take frozen flags and sizes from a ModelState instead of the graph.
        title: the table's title.

    Returns:
        (str): the table text.

    Raises:
        InputError: ``inputs`` that do not fit the model.
        StateError: ``state`` is not a ModelState.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(x, 2, name="fc")
        >>> print(gd.display.as_table(model, (1, 4)).splitlines()[-4])
        Total parameters:                 10  (40 bytes, 40 B)
    """
    view = ModelView(model, inputs, state)
    g = view.graph
    header = ["Layer", "Input Shape", "Output Shape", "Options", "Parameters"]
    rows: list[list[list[str]]] = []
    for n in g.order:
        ins = [f"{g.names[p.id]}: {shape_str(view.shapes[p.id], p.dtype)}" for p in n.inputs]
        rows.append([
            [f"{g.names[n.id]} ( {n.op} )"],
            ins,
            [shape_str(view.shapes[n.id], n.dtype)],
            options(n),
            [param_line(view, n, s, i) for s, i in view.node_params(n)],
        ])
    return _box_table(title, header, rows) + _footer(view)


def _box_table(title: str, header: list[str], rows: list[list[list[str]]]) -> str:
    """A TableRex-like box table; cells are lists of lines."""
    widths = [len(h) for h in header]
    for row in rows:
        for j, cell in enumerate(row):
            widths[j] = max([widths[j]] + [len(line) for line in cell])
    inner = sum(widths) + 3 * len(widths) - 1
    if len(title) > inner:  # never cut the title: widen the last column
        widths[-1] += len(title) - inner
        inner = len(title)
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    dsep = "+" + "+".join("=" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths)) + "|"

    out = ["+" + "-" * inner + "+", "|" + title.center(inner) + "|", dsep, line(header), dsep]
    for row in rows:  # the layer cell has a line: every row is at least one line high
        out.extend(line(cells) for cells in zip_longest(*row, fillvalue=""))
        out.append(sep)
    return "\n".join(out) + "\n"


def _footer(view: ModelView) -> str:
    t = view.totals()
    labels = [("total", "Total parameters"), ("trainable", "Trainable parameters"),
              ("frozen", "Frozen parameters"), ("adapter", "Adapter parameters")]
    if t["state"][0] or t["state"][2]:
        labels.append(("state", "State entries"))
    lines = []
    for key, label in labels:
        n, b, partial = t[key]
        more = " + parameters of unknown size" if partial else ""
        lines.append(f"{label + ':':<22}{n:>14,}  "
                     f"({b:,} bytes, {readable_bytes(b)}){more}")
    return "\n".join(lines) + "\n"


# -- as_graph (Mermaid) ----------------------------------------------------------------------
_DIRECTIONS = {"TD": "TD", "TB": "TB", "BT": "BT", "LR": "LR", "RL": "RL",
               "top_down": "TD", "left_right": "LR"}


def _direction(direction: str) -> str:
    if direction not in _DIRECTIONS:
        raise GraphDSLError(f"unknown direction {direction!r}",
                            fix="use 'TD' (top-down), 'LR' (left-right), 'BT' or 'RL'")
    return _DIRECTIONS[direction]


def mermaid_escape(text: str) -> str:
    """Make text safe inside a double-quoted Mermaid label (entity codes)."""
    text = text.replace("#", "#35;").replace('"', "#quot;")
    text = text.replace("<", "#lt;").replace(">", "#gt;")
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


# (opening, closing) of a Mermaid node's box; any other op is a plain rectangle
_MERMAID_BOXES = {"input": ('[/"', '"/]'), "constant": ('[("', '")]'), "param": ('[("', '")]'),
                  "container": ('{{"', '"}}')}

_MERMAID_STYLES = {
    "adapter": "fill:#fde68a,stroke:#b45309,stroke-width:2px",
    "frozen": "fill:#e5e7eb,stroke:#9ca3af,color:#6b7280",
}


def as_graph(model: Node, direction: str = "TD", *, inputs: Any = None,
             state: ModelState | None = None) -> str:
    """Mermaid flowchart text in Axon's style (Axon's ``as_graph``).

    One ``name (op) shape`` box per layer, inputs as parallelograms, an edge per input (in
    input order). Adapter layers get the ``adapter`` class, layers whose parameters are all
    frozen the ``frozen`` class.

    Args:
        model: the output node.
        direction: ``"TD"`` (default), ``"LR"``, ``"BT"``, ``"RL"`` (or Axon's
            ``"top_down"``/``"left_right"``).
        inputs: concrete input shapes, as for ``as_table``.
        state: a ModelState for frozen flags and sizes.

    Returns:
        (str): the Mermaid text.

    Raises:
        GraphDSLError: an unknown direction.
        InputError: ``inputs`` that do not fit the model.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(x, 2, name="fc")
        >>> print(gd.display.as_graph(model))
        graph TD;
        n0[/"x (input) (None, 4)"/];
        n1["fc (dense) (None, 2)"];
        n0 --> n1;
    """
    d = _direction(direction)
    view = ModelView(model, inputs, state)
    g = view.graph
    lines = [f"graph {d};"]
    classes: dict[str, list[str]] = {"adapter": [], "frozen": []}
    for i, n in enumerate(g.order):
        nid = f"n{i}"
        label = mermaid_escape(f"{g.names[n.id]} ({n.op}) {shape_str(view.shapes[n.id], n.dtype)}")
        opening, closing = _MERMAID_BOXES.get(n.op, ('["', '"]'))
        lines.append(f"{nid}{opening}{label}{closing};")
        kind = _kind(view, n)
        if kind in classes:
            classes[kind].append(nid)
    for n in g.order:
        for p in n.inputs:
            lines.append(f"n{view.index[p.id]} --> n{view.index[n.id]};")
    for cls, ids in classes.items():
        if ids:
            lines.append(f"classDef {cls} {_MERMAID_STYLES[cls]};")
            lines.append(f"class {','.join(ids)} {cls};")
    return "\n".join(lines) + "\n"


# -- to_dot (Graphviz) ----------------------------------------------------------------------
def dot_quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as ``\\n``
    (Graphviz's centred line break)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n") + '"'


_DOT_STYLE = {
    "input": 'shape=parallelogram, fillcolor="#dbeafe", color="#1d4ed8"',
    "data": 'shape=cylinder, fillcolor="#ecfccb", color="#4d7c0f"',
    "container": 'shape=hexagon, fillcolor="#f3e8ff", color="#7e22ce"',
    "adapter": 'fillcolor="#fde68a", color="#b45309", penwidth=2',
    "frozen": 'fillcolor="#e5e7eb", color="#9ca3af", fontcolor="#6b7280"',
    "layer": 'fillcolor="#ffffff", color="#374151"',
}


def _kind(view: ModelView, n: Node) -> str:
    """The drawing style of ``n``: a key of _DOT_STYLE (Mermaid uses adapter / frozen)."""
    if n.op == "input":
        return "input"
    if n.op in ("constant", "param") and not view.is_frozen_layer(n):
        return "data"
    if n.op == "container":
        return "container"
    if is_adapter(n):
        return "adapter"
    if view.is_frozen_layer(n):
        return "frozen"
    return "layer"


def _dot_label(view: ModelView, n: Node) -> str:
    me = view.name(n)
    lines = [f"{me} ({n.op})", shape_str(view.shapes[n.id], n.dtype)]
    ps = [i for _, i in view.node_params(n) if i.status != "state"]
    own = [i for i in ps if i.owner == me]
    if own:
        lines.append(_params_summary(own, "params"))
    borrowed = [i for i in ps if i.owner != me]
    if borrowed:
        names = ", ".join(f"{i.owner}.{i.name}" for i in borrowed)
        lines.append(f"uses {names}")
        lines.append(_params_summary(borrowed, "shared"))
    return "\n".join(lines)


def _params_summary(ps: list[ParamInfo], what: str) -> str:
    """``"401,920 params"``, ``"264 params (frozen)"``, ``"416 params (adapter)"``,
    ``"1,000 params (200 frozen)"``; ``+?`` when a size is unknown."""
    known = [p.size for p in ps if p.size is not None]
    total = sum(known)
    count = f"{total:,}" + ("+?" if len(known) < len(ps) else "")
    frozen = sum(p.size or 0 for p in ps if p.status == "frozen")
    adapter = sum(p.size or 0 for p in ps if p.adapter)
    extra = []
    for n, label in ((frozen, "frozen"), (adapter, "adapter")):
        if n and n == total and len(known) == len(ps):
            extra.append(label)
        elif n:
            extra.append(f"{n:,} {label}")
    return f"{count} {what}" + (f" ({', '.join(extra)})" if extra else "")


def _short_where(where: str) -> str:
    """``/long/path/model.py:12`` -> ``model.py:12`` (no local paths in drawings)."""
    file, sep, line = where.rpartition(":")
    return os.path.basename(file) + sep + line if sep else where


def to_dot(model: Node, *, inputs: Any = None, state: ModelState | None = None,
           direction: str = "TB", title: str | None = None) -> str:
    """Graphviz DOT text of the model.

    One box per layer with ``name (op)``, its output shape and its parameter count; inputs
    are parallelograms, adapters orange, layers whose parameters are all frozen grey,
    constants/params cylinders. Edges into a multi-input layer are labelled with the input
    position; a dashed edge goes from a layer to another layer reading its parameters (an
    adapter sharing a base kernel).

    Args:
        model: the output node.
        inputs: concrete input shapes, as for ``as_table``.
        state: a ModelState for frozen flags and sizes.
        direction: Graphviz ``rankdir`` (``"TB"``, ``"LR"``, ...).
        title: the graph's label (default: the parameter counts).

    Returns:
        (str): the DOT text.

    Raises:
        GraphDSLError: an unknown direction.
        InputError: ``inputs`` that do not fit the model.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(x, 2, name="fc")
        >>> gd.display.to_dot(model).splitlines()[0]
        'digraph model {'
    """
    d = {"TD": "TB"}.get(_direction(direction), _direction(direction))
    view = ModelView(model, inputs, state)
    g = view.graph
    t = view.totals()
    caption = title if title is not None else (
        f"{t['total'][0]:,} parameters ({t['trainable'][0]:,} trainable, "
        f"{t['frozen'][0]:,} frozen, {t['adapter'][0]:,} adapter)")
    out = [
        "digraph model {",
        f"  graph [rankdir={d}, fontname=\"Helvetica\", fontsize=11, "
        f"label={dot_quote(caption)}, labelloc=b];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#4b5563"];',
    ]
    for i, n in enumerate(g.order):
        style = _DOT_STYLE[_kind(view, n)]
        out.append(f"  n{i} [label={dot_quote(_dot_label(view, n))}, "
                   f"tooltip={dot_quote(_short_where(n.where))}, {style}];")
    for n in g.order:
        me = view.index[n.id]
        multi = len(n.inputs) > 1
        keys = n.attrs.get("keys") if n.op == "container" else None
        for k, p in enumerate(n.inputs):
            label = keys[k] if keys is not None else str(k)
            attr = f" [label={dot_quote(label)}]" if multi or keys is not None else ""
            out.append(f"  n{view.index[p.id]} -> n{me}{attr};")
        name = view.name(n)  # layer names are unique: one dashed edge per other owner
        owners = dict.fromkeys(info.owner for _, info in view.node_params(n)
                               if info.owner != name and info.owner in view.by_name)
        for owner in owners:
            out.append(f"  n{view.index[view.by_name[owner].id]} -> n{me} [style=dashed, "
                       f"color=\"#b45309\", arrowhead=empty, label=\"shares\"];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- render -------------------------------------------------------------------------------
_FORMATS = ("svg", "png", "pdf")


def graphviz_binary() -> str | None:
    """Path of Graphviz's ``dot`` program, or None when Graphviz is not installed."""
    return shutil.which("dot")


def render(model: Node, path: str | os.PathLike, *, inputs: Any = None,
           state: ModelState | None = None, direction: str = "TB",
           format: str | None = None, timeout: float = 120.0) -> str:
    """Draw the model to ``path`` (``.svg``, ``.png`` or ``.pdf``) through Graphviz's ``dot``.

    ``.dot``/``.gv`` writes the DOT text itself (no Graphviz needed).

    Args:
        model: the output node.
        path: the file to write; its suffix picks the format unless ``format`` is given.
        inputs: concrete input shapes, as for ``as_table``.
        state: a ModelState for frozen flags and sizes.
        direction: Graphviz ``rankdir``.
        format: ``"svg"``, ``"png"``, ``"pdf"`` or ``"dot"``, overriding the suffix.
        timeout: seconds ``dot`` may run.

    Returns:
        (str): the path written.

    Raises:
        GraphDSLError: Graphviz is not installed (with the install command), ``dot``
            fails, or an unknown format.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(x, 2, name="fc")
        >>> gd.display.render(model, "model.dot")
        'model.dot'
    """
    path = os.fspath(path)
    ext = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    text = to_dot(model, inputs=inputs, state=state, direction=direction)
    if ext in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    if ext not in _FORMATS:
        raise GraphDSLError(f"cannot render to {path!r}: unknown format {ext!r}",
                            fix="use a path ending in .svg, .png, .pdf (or .dot for text)")
    exe = graphviz_binary()
    if exe is None:
        raise GraphDSLError(
            "rendering needs Graphviz's `dot` program, which is not installed (not on PATH)",
            fix="install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), "
                "`brew install graphviz` (macOS) or `conda install graphviz`; "
                "`pip install graphviz` alone is not enough, it calls the same program. "
                "Or write the text with gd.display.to_dot(model) / render(model, 'm.dot')")
    try:
        proc = subprocess.run([exe, f"-T{ext}", "-o", path], input=text.encode("utf-8"),
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GraphDSLError(f"running Graphviz ({exe}) failed: {e}",
                            fix="check the Graphviz installation") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise GraphDSLError(f"Graphviz could not render {path!r}: {err}",
                            fix="check that the folder exists and is writable")
    return path
