"""The model definition document (``model.json``; layout in ``docs/format.md``):
``to_json(model) -> str`` and ``from_json(text) -> Node``. Loading checks the layout
(``check_structure``), never imports or executes anything
named in the file (functions are looked up in ``graphdsl.custom``) and rebuilds every
node through ``graphdsl.node.make_node``, so every attribute and shape check runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..custom import function_name
from ..errors import GraphDSLError, RuleError, SerializationError, fmt_shape
from ..graph import Graph, analyze
from ..mixed_precision import policy_from_json
from ..node import Node, make_node
from ..ops._attrs import shape_tuple
from ..ops.core import layer as custom_layer
from ..ops.nn import with_activation
from ..registry import OPS
from ..shapes import is_structure
from .document import FORMAT_VERSION, version1_same
from .json_text import format_document, parse_json
from .model_schema import FORMAT, check_structure
from .value_codec import decode_value, encode_value, lookup_function

#: op names in earlier files -> today's (the custom-layer op was called "layer")
RENAMED_OPS = {"layer": "custom"}
#: ops that files written before activations were nodes of their own give an
#: ``activation`` attribute (the activation fused into the layer, default options)
FUSED_ACTIVATION = frozenset({"dense", "conv", "dora", "lora"})


def _located(e: GraphDSLError, layer: str, op: str, where: str | None) -> SerializationError:
    """``e``'s message and fix as a SerializationError located at ``layer``."""
    return SerializationError(e.what, layer=layer, op=op, where=where, fix=e.fix)


def _shape_json(shape: Any) -> Any:
    return None if shape is None else list(shape)


def model_to_dict(model: Node, graph: Graph | None = None) -> dict[str, Any]:
    """The JSON data of ``model`` (see ``to_json``); ``graph`` is ``analyze(model)``
    where the caller has it already."""
    g = graph or analyze(model)
    inputs, nodes = [], []
    bodies: dict[int, str] = {}  # id(block body) -> the first call, which holds it
    for n in g.order:
        name = g.name(n)
        if n.op == "input":
            inputs.append({"name": name, "shape": _shape_json(n.attrs["shape"]),
                           "dtype": n.attrs["dtype"]})
            if "meta" in n.attrs:
                inputs[-1]["meta"] = encode_value(n.attrs["meta"], f"input {name!r} meta")
            continue
        ctx = f"layer {name!r} (op {n.op}) attribute"
        if n.op == "custom":
            fn = n.attrs["fn"]
            fname = function_name(fn)
            if fname is None:
                raise SerializationError(
                    f"custom layer {name!r} uses the function "
                    f"{getattr(fn, '__qualname__', fn)!r}, which is not registered, so a "
                    "file could not name it", layer=name, op=n.op, where=n.where,
                    fix="register it before saving: @graphdsl.register_function(\"my_fn\") "
                        "on the function, and build the layer after registering")
            attrs = {"fn": fname,
                     "opts": encode_value(n.attrs.get("opts") or {}, f"{ctx} opts"),
                     "output_shape": _shape_json(n.attrs["output_shape"])}
        elif n.op == "block":  # the body once, in the first call; later calls name it
            first = bodies.setdefault(id(n.attrs["body"]), name)
            attrs = {"block": g.blocks[n.id],
                     "body": model_to_dict(n.attrs["body"]) if first == name else first}
        else:
            try:
                attrs = {k: encode_value(n.attrs[k], f"{ctx} {k!r}") for k in sorted(n.attrs)}
            except SerializationError as e:
                raise _located(e, name, n.op, n.where) from None
        entry: dict[str, Any] = {"op": n.op, "name": name,
                                 "inputs": [g.name(i) for i in n.inputs], "attrs": attrs}
        if n.frozen:
            entry["frozen"] = True
        if n.policy is not None:
            entry["policy"] = n.policy.to_json()
        if n.shape is not None and not is_structure(n.shape):  # a block of several outputs
            entry["shape"] = _shape_json(n.shape)
        nodes.append(entry)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "inputs": inputs,
            "nodes": nodes, "outputs": g.name(model)}



def to_json(model: Node, compact: bool = False) -> str:
    """The declarative JSON definition of ``model`` (weights are not included).

    Every node appears under its resolved name (default names such as ``dense_0`` become
    explicit), in topological order, with all its attributes (defaults included) and its
    symbolic output shape, one line per node. ``to_json(from_json(s)) == s`` for any ``s``
    this returns.

    Args:
        model: the output node.
        compact: a single line.

    Returns:
        (str): the JSON text (layout in docs/format.md).

    Raises:
        SerializationError: a custom layer or initializer is an unregistered function.

    Examples:
        >>> model = gd.relu(gd.dense(gd.input("x", shape=(None, 4)), 2))
        >>> text = gd.to_json(model)
        >>> gd.to_json(gd.from_json(text)) == text
        True
    """
    return format_document(model_to_dict(model), compact)


def from_json(text: str | bytes | Mapping[str, Any], source: str = "model JSON") -> Node:
    """Rebuild a model from its JSON definition (text, bytes, or an already-parsed dict).

    Nodes may be listed in any order; each is rebuilt with the normal constructor checks.
    ``outputs`` may name one node, or be a list / an object of names (a container).

    Args:
        text: the JSON definition ``to_json`` writes.
        source: what to call the text in error messages.

    Returns:
        (Node): the model's output.

    Raises:
        SerializationError: invalid JSON, an unknown op, a cycle, a dangling reference, a
            duplicate name or an unregistered function.
        GraphDSLError: a bad attribute or shape (the constructor's error).

    Examples:
        >>> model = gd.from_json(gd.to_json(gd.dense(gd.input("x", shape=(None, 4)), 2)))
        >>> gd.get_output_shape(model, (3, 4))
        (3, 2)
    """
    return read_model(text, source).output


def read_model(text: str | bytes | Mapping[str, Any], source: str = "model JSON") -> Graph:
    """``from_json``, returning the rebuilt model's analysis (``.output`` is the
    model), so that a caller needing both analyzes the graph once."""
    doc = dict(text) if isinstance(text, Mapping) else parse_json(text, source)
    check_structure(doc, source)
    return _build(doc, source)


def _build(doc: dict[str, Any], source: str) -> Graph:
    entries: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}

    def add(name: str, entry: dict, kind: str) -> None:
        if name in entries:
            raise SerializationError(
                f"{source}: the name {name!r} is used twice ({kinds[name]} and {kind})",
                layer=name, fix="give every input and node a unique name")
        entries[name] = entry
        kinds[name] = kind

    for e in doc["inputs"]:
        add(e["name"], e, "input")
    # files written before an op was renamed; copies, so the caller's entries stay as they are
    nodes = [{**e, "op": RENAMED_OPS.get(e["op"], e["op"])} for e in doc["nodes"]]
    for e in nodes:
        if e["op"] == "input":
            raise SerializationError(f"{source}: node {e['name']!r} has op 'input'",
                                     layer=e["name"], op="input",
                                     fix="declare inputs in the top-level 'inputs' list")
        if e["op"] not in OPS:
            raise SerializationError(
                f"{source}: node {e['name']!r} has the unknown op {e['op']!r}",
                layer=e["name"], op=e["op"],
                fix=f"use one of: {', '.join(sorted(k for k in OPS if k != 'input'))}")
        add(e["name"], e, f"a {e['op']} node")
    known = sorted(entries)
    for e in nodes:
        for parent in e.get("inputs", []):
            if parent not in entries:
                raise SerializationError(
                    f"{source}: node {e['name']!r} (op {e['op']}) reads {parent!r}, which "
                    "is not defined", layer=e["name"], op=e["op"],
                    fix=f"define it, or use one of: {', '.join(known[:40])}")
    outs = doc["outputs"]
    out_names = [outs] if isinstance(outs, str) else list(
        outs.values() if isinstance(outs, dict) else outs)
    for o in out_names:
        if o not in entries:
            raise SerializationError(f"{source}: 'outputs' names {o!r}, which is not defined",
                                     fix=f"use one of: {', '.join(known[:40])}")
    order = _topo(entries, out_names, source)
    reached = set(order)
    unused = [n for n in entries if n not in reached]
    if unused:
        raise SerializationError(
            f"{source}: node(s) {unused[:10]} do not feed the outputs",
            fix="remove them, or list them in 'outputs'")
    built: dict[str, Node] = {}
    for name in order:
        e = entries[name]
        where = f"{source}: {'input' if kinds[name] == 'input' else 'node'} {name!r}"
        if kinds[name] == "input":
            attrs = {"shape": tuple(e["shape"]), "dtype": e.get("dtype", "float32")}
            if "meta" in e:
                attrs["meta"] = decode_value(e["meta"], f"{where} meta")
            built[name] = make_node("input", [], attrs, name, where=where)
        else:
            if e["op"] == "block":
                e = {**e, "attrs": _block_attrs(e, built, where, source)}
            built[name] = _make(e, [built[p] for p in e.get("inputs", [])], where, source,
                                doc["format_version"])
    if isinstance(outs, str):
        model = built[outs]
    else:
        keys = tuple(outs) if isinstance(outs, dict) else None
        model = make_node("container", [built[v] for v in out_names], {"keys": keys}, None,
                          where=f"{source}: outputs")
    return analyze(model)  # duplicate default names, shared-parameter conflicts


def _topo(entries: dict[str, dict], roots: list[str], source: str) -> list[str]:
    """Parents-first order of everything reachable from ``roots``; a cycle is an error."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    order: list[str] = []
    for root in roots:
        if state.get(root) == 2:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            name, i = stack[-1]
            parents = entries[name].get("inputs", []) if "op" in entries[name] else []
            if i < len(parents):
                stack[-1] = (name, i + 1)
                p = parents[i]
                st = state.get(p)
                if st == 1:
                    cyc = [n for n, _ in stack]
                    cyc = cyc[cyc.index(p):] + [p]
                    raise SerializationError(
                        f"{source}: the nodes form a cycle: {' -> '.join(reversed(cyc))}",
                        layer=name, fix="a model is a DAG: remove one of these edges")
                if st is None:
                    state[p] = 1
                    stack.append((p, 0))
            else:
                stack.pop()
                state[name] = 2
                order.append(name)
    return order


def _legacy_same(node: Node, name: str, where: str, source: str) -> Node:
    """A windowed layer with padding "same" read from a version-1 document, with the pads
    it had then (TensorFlow's rule) where today's differ."""
    a = node.attrs
    if a.get("padding") != "same" or "kernel_size" not in a:
        return node
    then = version1_same(node)
    if then is None:
        raise SerializationError(
            f"{source}: node {name!r} ({node.op}) has padding 'same' with strides > 1 in a "
            "file of format_version 1, which padded as TensorFlow does, by the input's size;"
            f" that size is unknown here ({fmt_shape(node.inputs[0].shape)})",
            layer=name, op=node.op, where=where,
            fix="give the model input a fixed spatial size in the file, or rebuild the layer "
                "with explicit padding=[(lo, hi), ...] and save it again")
    if then == "same":
        return node
    return make_node(node.op, list(node.inputs), {**a, "padding": then}, name,
                     frozen=node.frozen, where=where)


def _make(e: dict[str, Any], ins: list[Node], where: str, source: str,
          version: int) -> Node:
    op, name = e["op"], e["name"]
    ctx = f"{source}: node {name!r} (op {op}) attribute"
    raw = e.get("attrs", {})
    try:
        if op == "custom":
            node = _make_layer(raw, ins, name, where, ctx, e.get("frozen", False))
        else:
            attrs = {k: decode_value(v, f"{ctx} {k!r}") for k, v in raw.items()}
            act = attrs.pop("activation", None) if op in FUSED_ACTIVATION else None
            node = make_node(op, ins, attrs, name, frozen=e.get("frozen", False), where=where,
                             policy=policy_from_json(e["policy"]) if "policy" in e else None)
            if version == 1:
                node = _legacy_same(node, name, where, source)
            # an older file's fused activation: the layer, then the activation node that
            # its name now stands for in the file (its readers read the activation)
            node = with_activation(node, act, where)
    except SerializationError as err:
        if err.layer is not None:
            raise
        raise _located(err, name, op, where) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
            ZeroDivisionError, RecursionError) as err:
        # attribute values of a type the op's checks do not expect (a file can hold any
        # JSON value where Python code would pass an int or a str); a GraphDSLError, not
        # one of these, passes through
        raise SerializationError(
            f"{source}: node {name!r} (op {op}) has attribute values the op cannot use "
            f"({type(err).__name__}: {str(err)[:200]})", layer=name, op=op, where=where,
            fix=f"check the attribute types against the op's documentation: "
                f"{OPS[op].doc[:160]}") from None
    if "shape" in e and e["shape"] is not None and node.shape is not None:
        want = tuple(e["shape"])
        if want != tuple(node.shape):
            raise SerializationError(
                f"{source}: node {name!r} declares shape {fmt_shape(want)} but its inputs "
                f"and attributes give {fmt_shape(node.shape)}", layer=name, op=op,
                where=where, shapes={"declared": want, "inferred": node.shape},
                fix="fix the attributes or the declared shape (or leave 'shape' out)")
    return node


def _make_layer(raw: dict, ins: list[Node], name: str, where: str, ctx: str,
                frozen: bool) -> Node:
    extra = [k for k in raw if k not in ("fn", "opts", "output_shape")]
    if extra:
        raise SerializationError(f"{ctx}s {extra} are unknown",
                                 fix="a custom layer takes fn, opts, output_shape")
    fn_ref = raw.get("fn")
    if isinstance(fn_ref, dict) and set(fn_ref) == {"$function"}:
        fn_ref = fn_ref["$function"]
    fn = lookup_function(fn_ref, f"{ctx} 'fn'")
    opts = decode_value(raw.get("opts", {}), f"{ctx} 'opts'")
    if not isinstance(opts, dict):
        raise SerializationError(f"{ctx} 'opts' must be an object",
                                 fix='write "opts": {} or {"k": 1.0}')
    out_shape = raw.get("output_shape")
    if out_shape is None:
        probe = custom_layer(fn_ref, ins, name=name, **opts)  # infers output_shape by probing
        return make_node("custom", ins, dict(probe.attrs), name, frozen=frozen, where=where)
    attrs = {"fn": fn, "fn_name": fn_ref, "opts": opts,
             "output_shape": decode_value(out_shape, f"{ctx} 'output_shape'")}
    try:
        attrs["output_shape"] = shape_tuple(attrs["output_shape"], "output_shape")
    except RuleError as e:
        raise _located(e, name, "custom", where) from None
    return make_node("custom", ins, attrs, name, frozen=frozen, where=where)


def _block_attrs(e: dict[str, Any], built: dict[str, Node], where: str, source: str
                 ) -> dict[str, Any]:
    """A block call's attributes with its body rebuilt: a nested model document, or the
    name of an earlier call of the same block (whose body it shares)."""
    raw = e.get("attrs", {})
    body, name = raw.get("body"), e["name"]
    if isinstance(body, str) and isinstance(built.get(body), Node) and \
            built[body].op == "block":
        return {**raw, "body": built[body].attrs["body"]}
    if isinstance(body, dict):
        return {**raw, "body": read_model(body, f"{source}: block {name!r} body").output}
    raise SerializationError(
        f"{source}: block {name!r} has the body {str(body)[:60]!r}, neither a model "
        "document nor the name of an earlier call of the block", layer=name, op="block",
        where=where, fix="write the body in the block's first call and name that call "
                         "in the later ones (as gd.to_json does)")
