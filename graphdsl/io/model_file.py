"""Model files (``save`` / ``load`` / ``write_model``): a zip archive with exactly three
members, ``model.json`` (the JSON definition), ``weights.safetensors`` (every parameter and
state entry keyed ``"layer.param"``) and ``state.json`` (frozen flags and the names of the
non-parameter state entries).
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Collection
from typing import Any, BinaryIO

from ..errors import SerializationError, StateError
from ..graph import Graph, analyze
from ..node import Node
from ..state import ModelState
from .archive import (
    MODEL_JSON,
    MODEL_MEMBERS,
    STATE_JSON,
    WEIGHTS,
    LoadLimits,
    file_label,
    need_path,
    read_archive,
    write_archive,
    zip_to,
)
from .document import (
    FORMAT_VERSION,
    Key,
    check_model_arg,
    check_state_arg,
    check_version,
    frozen_list,
    read_frozen,
    state_entries,
)
from .json_text import format_document, parse_json
from .model_json import model_to_dict, read_model
from .weights import by_layer, encode_weights, expected_tensors, read_weights, state_tensors

_STATE_KEYS = {"format", "format_version", "frozen", "state"}


def _parameters(g: Graph, keys: Collection[Key]) -> set[Key]:
    """The trainable-kind entries (ParamSpec kind ``"param"``) among ``keys``."""
    return {k for k in keys if g.params[k].kind == "param"}


def _state_doc(g: Graph, state: ModelState, keys: Collection[Key]) -> dict[str, Any]:
    """The ``state.json`` document: frozen flags and state-entry names of ``keys``."""
    unknown = sorted(k for k in state.frozen if k not in g.params)
    if unknown:
        names = ", ".join(f"{a}.{b}" for a, b in unknown[:10])
        raise StateError(f"the state marks {names} frozen, which the model does not have",
                         fix="unfreeze them, or save the state that belongs to this model")
    return {"format": "graphdsl.state", "format_version": FORMAT_VERSION,
            "frozen": frozen_list(state.frozen, _parameters(g, keys)),
            "state": state_entries(g, keys)}


def _read_state_doc(doc: Any, g: Graph, keys: Collection[Key], source: str
                    ) -> tuple[set[Key], dict[str, list[str]]]:
    """``(frozen, entries)`` from a ``state.json`` document, checked against the graph."""
    fix = "the file is damaged or edited; save the model again"

    def bad(msg: str) -> SerializationError:
        return SerializationError(f"{source}: {msg}", fix=fix)

    if not isinstance(doc, dict) or set(doc) - _STATE_KEYS:
        raise bad("must be an object with format_version, frozen and state")
    check_version(doc, source)
    frozen = read_frozen(doc.get("frozen", []), _parameters(g, keys), source,
                         "parameters of the model", fix)
    st = doc.get("state", {})
    if not isinstance(st, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in st.values()):
        raise bad("'state' must map layer names to lists of entry names")
    want = state_entries(g, keys)
    if {k: sorted(v) for k, v in st.items() if v} != {k: sorted(v) for k, v in want.items()}:
        raise bad(f"'state' lists {st}, but the model's state entries are {want}")
    return frozen, want


def _model_members(model: Node, state: ModelState) -> dict[str, tuple[bytes, int]]:
    """The checked members of a model file: ``{name: (bytes, compression)}``."""
    check_model_arg(model, "gd.save")
    check_state_arg(state, "gd.save")
    g = analyze(model)
    text = format_document(model_to_dict(model, g))
    want = expected_tensors(g)
    tensors = state_tensors(g, state, want)
    flags = _state_doc(g, state, want)
    return {
        MODEL_JSON: (text.encode("utf-8"), zipfile.ZIP_DEFLATED),
        WEIGHTS: (encode_weights(tensors, "graphdsl.weights"), zipfile.ZIP_STORED),
        STATE_JSON: (format_document(flags).encode("utf-8"), zipfile.ZIP_DEFLATED),
    }


def save(path: str | os.PathLike, model: Node, state: ModelState) -> str:
    """Write ``model`` and ``state`` to one zip: model.json, weights.safetensors, state.json.

    Everything is checked before anything is written. The file is written atomically (a
    temp file renamed into place; removed on any error); an existing file keeps its
    permissions, a symlink keeps pointing to the file it names. Needs safetensors (the
    ``io`` extra).

    Args:
        path: the file to write (``.gdsl`` by convention).
        model: the output node.
        state: values of the shapes the graph gives (e.g. a dense kernel ``[in, out]``),
            float16/bfloat16 kept as they are.

    Returns:
        (str): the path written.

    Raises:
        SerializationError: an unregistered custom function or initializer.
        StateError: a state that misses, adds or mis-shapes a parameter.
        GraphDSLError: safetensors is missing (names the extra), or the path is unwritable.

    Examples:
        >>> model = gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc")
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32))
        >>> gd.save("model.gdsl", model, state)
        'model.gdsl'
        >>> model2, state2 = gd.load("model.gdsl")
        >>> state2 == state, gd.to_json(model2) == gd.to_json(model)
        (True, True)
    """
    p = need_path(path, "gd.save")
    return write_archive(p, _model_members(model, state), "gd.save")


def write_model(fh: BinaryIO, model: Node, state: ModelState) -> None:
    """Write the bytes ``save`` would write to an open binary file (e.g. a stream)."""
    zip_to(fh, _model_members(model, state))


def load(path: str | os.PathLike, *, limits: LoadLimits | None = None
         ) -> tuple[Node, ModelState]:
    """Read a model file written by ``save``: ``(model, state)``.

    Nothing is executed (no pickle, no import) and nothing is written.

    Args:
        path: the file.
        limits: size limits (``graphdsl.io.LoadLimits``) against zip bombs; default
            ``graphdsl.io.DEFAULT_LIMITS``.

    Returns:
        (tuple[Node, ModelState]): the model and its values (``state.data[layer][param]``,
        NumPy arrays of the shapes the graph gives).

    Raises:
        SerializationError: not a zip, a pickle, a zip bomb, traversal names, a wrong
            format_version, an unknown op, a cycle, a dangling reference, or weights that do
            not fit the graph.

    Examples:
        >>> model = gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc")
        >>> _ = gd.save("m.gdsl", model, gd.build(model)[0](np.zeros((1, 4), np.float32)))
        >>> model, state = gd.load("m.gdsl")
        >>> state.data["fc"]["kernel"].shape
        (4, 2)
    """
    path = need_path(path, "gd.load")
    label = file_label(path)
    members = read_archive(path, MODEL_MEMBERS, limits, mapped=WEIGHTS)
    g = read_model(members[MODEL_JSON], f"{label}:{MODEL_JSON}")
    want = expected_tensors(g)
    source = f"{label}:{STATE_JSON}"
    frozen, entries = _read_state_doc(parse_json(members[STATE_JSON], source), g, want,
                                      source)
    arrays = read_weights(members[WEIGHTS], want, f"{label}:{WEIGHTS}")
    return g.output, ModelState(by_layer(arrays, want), frozen, entries)
