"""The JSON text of a model definition (``to_json(model) -> str``, ``from_json(text) ->
Node``; layout in ``docs/format.md``, published as ``graphdsl/schema/model.schema.json``),
with the strict JSON parsing and canonical formatting every graphdsl document uses. Loading
checks the layout by hand (:func:`check_structure`), never imports or executes anything
named in the file (functions are looked up in :mod:`graphdsl.custom`) and rebuilds every
node through :func:`graphdsl.node.make_node`, so every attribute and shape check runs.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import numpy as np

from ..custom import FUNCTIONS, function_name
from ..errors import GraphDSLError, RuleError, SerializationError, fmt_shape
from ..graph import analyze
from ..node import Node, make_node
from ..ops._attrs import shape_tuple
from ..ops.core import layer as custom_layer
from ..registry import OPS, DerivedInit
from ..windows import split_channels, tf_same_pads, window
from .document import FORMAT_VERSION, check_version

FORMAT = "graphdsl.model"

#: dtypes an inline ``{"$array": ...}`` attribute may have
ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "float16", "float32", "float64")
_INPUT_DTYPES = ("float32", "float64", "int32", "int64")
_MAX_DEPTH = 32  # nesting of attribute values (lists in lists ...)
_MAX_NODES = 1_000_000
#: op names in earlier files -> today's (the custom-layer op was called "layer")
RENAMED_OPS = {"layer": "custom"}

_TOP_KEYS = ("format", "format_version", "inputs", "nodes", "outputs")
_INPUT_KEYS = ("name", "shape", "dtype", "meta")
_NODE_KEYS = ("op", "name", "inputs", "attrs", "frozen", "shape")


# -- JSON text ---------------------------------------------------------------------------------
def _reject_constant(token: str) -> Any:
    raise SerializationError(f"the JSON holds {token}, which is not valid JSON",
                             fix="write finite numbers only")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SerializationError(f"the JSON object has the key {k!r} twice",
                                     fix="keep one entry per key")
        out[k] = v
    return out


def parse_json(text: str | bytes, what: str = "model JSON") -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys; any failure is a SerializationError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")  # a BOM is fine
        except UnicodeDecodeError as e:
            raise SerializationError(f"{what} is not UTF-8 text ({e.reason} at byte "
                                     f"{e.start})", fix="save the file as UTF-8") from None
    if not isinstance(text, str):
        raise SerializationError(f"{what} must be a str, got {type(text).__name__}",
                                 fix="pass the JSON text (e.g. open(path).read())")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_reject_constant)
    except GraphDSLError:
        raise
    except json.JSONDecodeError as e:
        raise SerializationError(f"{what} is not valid JSON: {e.msg} at line {e.lineno} "
                                 f"column {e.colno}", fix="fix the JSON syntax") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise SerializationError(f"{what} could not be parsed ({type(e).__name__}: "
                                 f"{str(e)[:200]})", fix="fix the JSON") from None


# -- attribute values --------------------------------------------------------------------------
def encode_value(value: Any, ctx: str, depth: int = 0) -> Any:
    """An attribute value as JSON data. Tuples and lists become arrays, NumPy arrays become
    ``{"$array": {dtype, shape, data}}``, registered functions ``{"$function": name}``."""
    if depth > _MAX_DEPTH:
        raise SerializationError(f"{ctx} is nested more than {_MAX_DEPTH} levels deep",
                                 fix="flatten the attribute value")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise SerializationError(f"{ctx} is {float(value)}, which JSON cannot hold",
                                     fix="use a finite number")
        return float(value)
    if isinstance(value, (tuple, list)):
        return [encode_value(v, f"{ctx}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.name not in ARRAY_DTYPES:
            raise SerializationError(f"{ctx} is an array of dtype {value.dtype}",
                                     fix=f"use one of {ARRAY_DTYPES}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise SerializationError(f"{ctx} holds NaN or infinity", fix="use finite values")
        return {"$array": {"dtype": value.dtype.name, "shape": list(value.shape),
                           "data": value.tolist()}}
    if isinstance(value, Mapping):
        out = {}
        for k in sorted(value, key=str):
            if not isinstance(k, str):
                raise SerializationError(f"{ctx} has a non-string key {k!r}",
                                         fix="use string keys in attribute dicts")
            if k.startswith("$"):
                raise SerializationError(f"{ctx} has the key {k!r}; keys starting with '$' "
                                         "are reserved by the file format",
                                         fix="rename the key")
            out[k] = encode_value(value[k], f"{ctx}.{k}", depth + 1)
        return out
    if isinstance(value, DerivedInit) or callable(value):
        fn = value.fn if isinstance(value, DerivedInit) else value
        name = function_name(fn)
        if name is None:
            label = getattr(fn, "__qualname__", type(fn).__name__)
            raise SerializationError(
                f"{ctx} is the function {label}, which is not registered, so the file "
                "could not name it",
                fix="register it before saving: @graphdsl.register_function(\"my_fn\") "
                    "on the function (loading looks the name up in the same registry)")
        return {"$function": name} if not isinstance(value, DerivedInit) else {
            "$derived": name}
    raise SerializationError(f"{ctx} is a {type(value).__name__}, which the file format "
                             "cannot hold",
                             fix="use numbers, strings, booleans, None, tuples, dicts, "
                                 "NumPy arrays or registered functions")


def _check_nested(data: Any, shape: tuple, kind: str, ctx: str) -> None:
    """Check that nested lists ``data`` have exactly ``shape`` and leaves of ``kind``."""
    if not shape:
        if kind == "b":
            ok = isinstance(data, bool)
        elif kind in "iu":
            ok = isinstance(data, int) and not isinstance(data, bool)
        else:
            ok = isinstance(data, (int, float)) and not isinstance(data, bool)
        if not ok:
            raise SerializationError(f"{ctx}: array element {data!r} does not fit the dtype",
                                     fix="write numbers that fit the declared dtype")
        return
    if not isinstance(data, list) or len(data) != shape[0]:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise SerializationError(f"{ctx}: array data does not match its shape "
                                 f"(expected {shape[0]} entries, got {got})",
                                 fix="make 'data' nested lists of exactly 'shape'")
    for item in data:
        _check_nested(item, shape[1:], kind, ctx)


def _decode_array(spec: Any, ctx: str) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise SerializationError(f"{ctx}: '$array' needs exactly the keys dtype, shape, data",
                                 fix='write {"$array": {"dtype": "float32", "shape": [2], '
                                     '"data": [1.0, 2.0]}}')
    dt, shape = spec["dtype"], spec["shape"]
    if dt not in ARRAY_DTYPES:
        raise SerializationError(f"{ctx}: unsupported array dtype {dt!r}",
                                 fix=f"use one of {ARRAY_DTYPES}")
    if (not isinstance(shape, list) or len(shape) > _MAX_DEPTH or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise SerializationError(f"{ctx}: array shape {shape!r} is not a list of sizes",
                                 fix="write the shape as a list of non-negative ints")
    kind = np.dtype(dt).kind
    _check_nested(spec["data"], tuple(shape), kind, ctx)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            arr = np.array(spec["data"], dtype=dt).reshape(shape)
    except (ValueError, OverflowError, TypeError) as e:
        raise SerializationError(f"{ctx}: array data does not fit dtype {dt} ({e})",
                                 fix="write values in the dtype's range") from None
    if kind == "f" and not np.all(np.isfinite(arr)):
        raise SerializationError(f"{ctx}: array data overflows dtype {dt}",
                                 fix="write values in the dtype's range")
    return arr


def _lookup(name: Any, ctx: str) -> Callable[..., Any]:
    if not isinstance(name, str) or name not in FUNCTIONS:
        raise SerializationError(
            f"{ctx} names the function {name!r}, which is not registered here "
            "(loading never imports code)",
            fix=f"register it before loading: @graphdsl.register_function({name!r}) on "
                f"the function; registered now: {sorted(FUNCTIONS) or 'none'}")
    return FUNCTIONS[name]


def decode_value(value: Any, ctx: str, depth: int = 0) -> Any:
    """The inverse of :func:`encode_value`: arrays come back as tuples."""
    if depth > _MAX_DEPTH:
        raise SerializationError(f"{ctx} is nested more than {_MAX_DEPTH} levels deep",
                                 fix="flatten the attribute value")
    if isinstance(value, list):
        return tuple(decode_value(v, f"{ctx}[{i}]", depth + 1) for i, v in enumerate(value))
    if isinstance(value, dict):
        special = [k for k in value if k.startswith("$")]
        if special:
            if len(value) != 1 or special[0] not in ("$array", "$function", "$derived"):
                raise SerializationError(
                    f"{ctx} has reserved key(s) {special}; a tagged value is exactly one of "
                    '{"$array": ...}, {"$function": name}, {"$derived": name}',
                    fix="remove the '$' keys or use one tagged form")
            tag = special[0]
            if tag == "$array":
                return _decode_array(value[tag], ctx)
            fn = _lookup(value[tag], ctx)
            return fn if tag == "$function" else DerivedInit(fn, value[tag])
        return {k: decode_value(v, f"{ctx}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise SerializationError(f"{ctx} is {value}", fix="use a finite number")
    return value


# -- to_json -----------------------------------------------------------------------------------
def _shape_json(shape: Any) -> Any:
    return None if shape is None else list(shape)


def model_to_dict(model: Node) -> dict[str, Any]:
    """The JSON data of ``model`` (see :func:`to_json`)."""
    g = analyze(model)
    inputs, nodes = [], []
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
        else:
            try:
                attrs = {k: encode_value(n.attrs[k], f"{ctx} {k!r}") for k in sorted(n.attrs)}
            except SerializationError as e:
                raise SerializationError(e.what, layer=name, op=n.op, where=n.where,
                                         fix=e.fix) from None
        entry: dict[str, Any] = {"op": n.op, "name": name,
                                 "inputs": [g.name(i) for i in n.inputs], "attrs": attrs}
        if n.frozen:
            entry["frozen"] = True
        if n.shape is not None:
            entry["shape"] = _shape_json(n.shape)
        nodes.append(entry)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "inputs": inputs,
            "nodes": nodes, "outputs": g.name(model)}


def format_document(doc: Mapping[str, Any], compact: bool = False) -> str:
    """Canonical text of a document: one line per input and per node (readable diffs);
    ``compact=True`` gives a single line."""
    if compact:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    one = lambda v: json.dumps(v, ensure_ascii=False, allow_nan=False)  # noqa: E731
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if isinstance(v, list) and v:
            lines.append(f"  {one(k)}: [")
            lines += [f"    {one(x)}{',' if j < len(v) - 1 else ''}" for j, x in enumerate(v)]
            lines.append(f"  ]{end}")
        else:
            lines.append(f"  {one(k)}: {one(v)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(model: Node, compact: bool = False) -> str:
    """The declarative JSON definition of ``model`` (weights are not included).

    Every node appears under its resolved name (default names such as ``dense_0`` become
    explicit), in topological order, with all its attributes (defaults included) and its
    symbolic output shape, one line per node (``compact=True``: a single line).
    ``to_json(from_json(s)) == s`` for any ``s`` this returns.
    Raises SerializationError if a custom layer or initializer is an unregistered function.
    """
    return format_document(model_to_dict(model), compact)


# -- structural validation (jsonschema-independent) --------------------------------------------
def _is_name(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


def _shape_ok(s: Any, allow_none: bool = True) -> bool:
    return isinstance(s, list) and len(s) <= _MAX_DEPTH and all(
        (d is None and allow_none) or (isinstance(d, int) and not isinstance(d, bool))
        for d in s)


def check_structure(doc: Any, source: str = "model JSON") -> None:
    """Check the document's layout (keys, types, the format version) with precise messages:
    the one layout check at load time. It enforces what the published JSON Schema
    (:func:`schema`) describes, without needing the ``jsonschema`` package."""
    def bad(what: str, fix: str) -> SerializationError:
        return SerializationError(f"{source}: {what}", fix=fix)

    if not isinstance(doc, dict):
        raise bad(f"the top level is a JSON {type(doc).__name__}, not an object",
                  "start the file with {\"format_version\": 1, \"inputs\": [...], ...}")
    check_version(doc, source)
    extra = [k for k in doc if k not in _TOP_KEYS]
    if extra:
        raise bad(f"unknown top-level key(s) {extra}", f"use only {list(_TOP_KEYS)}")
    for k in ("inputs", "nodes", "outputs"):
        if k not in doc:
            raise bad(f"the key {k!r} is missing", f"add \"{k}\" (see docs/format.md)")
    if "format" in doc and doc["format"] != FORMAT:
        raise bad(f"'format' is {doc['format']!r}, not {FORMAT!r}",
                  f"set \"format\": \"{FORMAT}\" (or remove it)")
    if not isinstance(doc["inputs"], list):
        raise bad("'inputs' must be a list", 'write "inputs": [{"name": "x", "shape": '
                  '[null, 16]}]')
    if not isinstance(doc["nodes"], list):
        raise bad("'nodes' must be a list", 'write "nodes": [{"op": ..., "name": ...}, ...]')
    if len(doc["inputs"]) + len(doc["nodes"]) > _MAX_NODES:
        raise bad("too many nodes", f"at most {_MAX_NODES} nodes")
    def entry(where: str, e: Any, keys: tuple[str, ...], example: str) -> None:
        if not isinstance(e, dict):
            raise bad(f"{where} is not an object", f"write {example}")
        extra = [k for k in e if k not in keys]
        if extra:
            raise bad(f"{where} has unknown key(s) {extra}", f"use only {list(keys)}")

    for i, e in enumerate(doc["inputs"]):
        where = f"inputs[{i}]"
        entry(where, e, _INPUT_KEYS, '{"name": "x", "shape": [null, 16]}')
        if not _is_name(e.get("name")):
            raise bad(f"{where} needs a 'name' string", 'add "name": "x"')
        if not _shape_ok(e.get("shape")):
            raise bad(f"{where} ({e['name']!r}) needs a 'shape' list of ints or null",
                      'write "shape": [null, 16] (null = any size)')
        if "dtype" in e and e["dtype"] not in _INPUT_DTYPES:
            raise bad(f"{where} ({e['name']!r}) has dtype {e['dtype']!r}",
                      f"use one of {_INPUT_DTYPES}")
    for i, e in enumerate(doc["nodes"]):
        where = f"nodes[{i}]"
        entry(where, e, _NODE_KEYS, '{"op": "dense", "name": "fc1", ...}')
        if not isinstance(e.get("op"), str):
            raise bad(f"{where} needs an 'op' string", 'add "op": "dense"')
        if not _is_name(e.get("name")):
            raise bad(f"{where} (op {e['op']}) needs a 'name' string",
                      'add "name": "fc1" (every node is named in the file)')
        ins = e.get("inputs", [])
        if not isinstance(ins, list) or not all(isinstance(x, str) for x in ins):
            raise bad(f"{where} ({e['name']!r}) 'inputs' must be a list of node names",
                      'write "inputs": ["x"]')
        if not isinstance(e.get("attrs", {}), dict):
            raise bad(f"{where} ({e['name']!r}) 'attrs' must be an object",
                      'write "attrs": {"units": 32}')
        if not isinstance(e.get("frozen", False), bool):
            raise bad(f"{where} ({e['name']!r}) 'frozen' must be true or false",
                      'write "frozen": true')
        if "shape" in e and e["shape"] is not None and not _shape_ok(e["shape"]):
            raise bad(f"{where} ({e['name']!r}) 'shape' must be a list of ints or null",
                      "write the output shape such as [null, 32], or leave it out")
    out = doc["outputs"]
    ok = (isinstance(out, str) or (isinstance(out, list) and out and all(
        isinstance(x, str) for x in out)) or (isinstance(out, dict) and out and all(
            isinstance(x, str) for x in out.values())))
    if not ok:
        raise bad("'outputs' must be a node name, a non-empty list of names, or an object "
                  "{key: name}", 'write "outputs": "fc2"')


def schema() -> dict[str, Any]:
    """The JSON Schema of the model format (``graphdsl/schema/model.schema.json``), the
    published description of the layout :func:`check_structure` enforces (a test validates
    every :func:`to_json` output against it, so the two cannot drift)."""
    text = resources.files("graphdsl").joinpath("schema/model.schema.json").read_text("utf-8")
    return json.loads(text)


# -- from_json ---------------------------------------------------------------------------------
def from_json(text: str | bytes | Mapping[str, Any], source: str = "model JSON") -> Node:
    """Rebuild a model from its JSON definition (text, bytes, or already-parsed dict).

    Nodes may be listed in any order; each is rebuilt with the normal constructor checks.
    ``outputs`` may name one node, or be a list / an object of names (a container).
    An unknown op, a cycle, a dangling reference, a duplicate name or an unregistered
    function is a SerializationError; a bad attribute or shape the usual GraphDSLError.
    """
    doc = text if isinstance(text, Mapping) else parse_json(text, source)
    if isinstance(doc, Mapping):
        doc = dict(doc)
    check_structure(doc, source)
    return _build(doc, source)


def _build(doc: dict[str, Any], source: str) -> Node:
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
    for e in doc["nodes"]:
        if e["op"] in RENAMED_OPS:  # files written before the op was renamed
            e["op"] = RENAMED_OPS[e["op"]]
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
    for e in doc["nodes"]:
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
            built[name] = _make(e, [built[p] for p in e.get("inputs", [])], where, source,
                                doc["format_version"])
    if isinstance(outs, str):
        model = built[outs]
    else:
        keys = tuple(outs) if isinstance(outs, dict) else None
        model = make_node("container", [built[v] for v in out_names], {"keys": keys}, None,
                          where=f"{source}: outputs")
    analyze(model)  # duplicate default names, shared-parameter conflicts
    return model


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


def version1_same(node: Node) -> Any:
    """What padding "same" in a file of format_version 1 meant for windowed ``node`` (conv,
    pools, a conv adapter): TensorFlow's pads by the input size, as a JSON value to compare
    with ``node``'s own padding (that value itself where the pads agree); None where the
    size is unknown (None) and the pads depend on it."""
    a = node.attrs
    _, spatial, _ = split_channels(node.inputs[0].shape, a["channels"], node.op)
    then = tf_same_pads(spatial, a["kernel_size"], a)
    if then is not None and then == window(spatial, a["kernel_size"], a).pads:
        return encode_value(a["padding"], "padding")
    return None if then is None else [list(p) for p in then]


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
            node = make_node(op, ins, attrs, name, frozen=e.get("frozen", False), where=where)
            if version == 1:
                node = _legacy_same(node, name, where, source)
    except SerializationError as err:
        if err.layer is not None:
            raise
        raise SerializationError(err.what, layer=name, op=op, where=where,
                                 fix=err.fix) from None
    except GraphDSLError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
            ZeroDivisionError, RecursionError) as err:
        # attribute values of a type the op's checks do not expect (a file can hold any
        # JSON value where Python code would pass an int or a str)
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
    fn = _lookup(fn_ref, f"{ctx} 'fn'")
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
        raise SerializationError(e.what, layer=name, op="custom", where=where,
                                 fix=e.fix) from None
    return make_node("custom", ins, attrs, name, frozen=frozen, where=where)
