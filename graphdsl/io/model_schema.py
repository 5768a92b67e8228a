"""The layout of a model definition (``model.json``): ``check_structure``, the one
layout check at load time (keys, types, the format version, with precise messages, no
``jsonschema`` needed), and ``schema``, the published JSON Schema
(``graphdsl/schema/model.schema.json``) describing the same layout.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ..errors import SerializationError
from .document import check_version
from .value_codec import MAX_DEPTH

FORMAT = "graphdsl.model"

_INPUT_DTYPES = ("float32", "float64", "int32", "int64")
_MAX_NODES = 1_000_000
_TOP_KEYS = ("format", "format_version", "inputs", "nodes", "outputs")
_INPUT_KEYS = ("name", "shape", "dtype", "meta")
_NODE_KEYS = ("op", "name", "inputs", "attrs", "frozen", "policy", "shape")


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


def _shape_ok(s: Any) -> bool:
    return isinstance(s, list) and len(s) <= MAX_DEPTH and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in s)


def check_structure(doc: Any, source: str = "model JSON") -> None:
    """Check the document's layout (keys, types, the format version) with precise messages:
    the one layout check at load time. It enforces what the published JSON Schema
    (``schema``) describes, without needing the ``jsonschema`` package."""
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
    published description of the layout ``check_structure`` enforces (a test validates
    every ``to_json`` output against it, so the two cannot drift)."""
    text = resources.files("graphdsl").joinpath("schema/model.schema.json").read_text("utf-8")
    return json.loads(text)
