"""Adapter files (``save_adapters`` / ``load_adapters``): a zip archive with
``adapters.json`` (the adapter layers' names, ops and attributes, ``modules_to_save``,
frozen flags) and ``weights.safetensors`` holding only the adapter parameters, so a
fine-tune ships without the base model's weights.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from typing import Any

from ..adapters import adapter_state, attach_adapters
from ..adapters.contract import is_adapter, owns
from ..errors import GraphDSLError, SerializationError
from ..graph import Graph, analyze
from ..node import Node
from ..state import ModelState, need_state
from .archive import (
    ADAPTER_MEMBERS,
    ADAPTERS_JSON,
    WEIGHTS,
    LoadLimits,
    file_label,
    need_path,
    read_archive,
    write_archive,
)
from .document import (
    FORMAT_VERSION,
    check_model_arg,
    check_state_arg,
    check_version,
    frozen_list,
    read_frozen,
    state_entries,
    version1_same,
)
from .json_text import format_document, parse_json
from .value_codec import encode_value
from .weights import by_layer, encode_weights, expected_tensors, read_weights, state_tensors

_ADAPTERS_KEYS = {"format", "format_version", "adapters", "modules_to_save", "frozen"}


def adapter_layers(model: Node) -> tuple[Graph, list[Node]]:
    """The adapter nodes (op category "adapter") of ``model`` in topological order."""
    g = analyze(model)
    return g, [n for n in g.order if is_adapter(n)]


def adapter_keys(model: Node) -> list[tuple[str, str]]:
    """``(layer, param)`` of the adapter parameters: the ones each adapter layer owns
    (A, B, magnitude, its dropout key), not the base weights it wraps or carries
    (kernel/bias of the wrapped layer, or its own frozen ``base_weight``/``bias``)."""
    return _owned_keys(*adapter_layers(model))


def _owned_keys(g: Graph, nodes: list[Node]) -> list[tuple[str, str]]:
    """``adapter_keys`` of the analyzed model ``g`` and its adapter ``nodes``."""
    return [(g.name(n), spec.name) for n in nodes for spec in n.params if owns(n, spec)]


def _adapter_doc(g: Graph, nodes: list[Node]) -> list[dict[str, Any]]:
    return [{"name": g.name(n), "op": n.op,
             "attrs": {k: encode_value(n.attrs[k], f"adapter {g.name(n)!r} attribute {k!r}")
                       for k in sorted(n.attrs)}} for n in nodes]


def save_adapters(path: str | os.PathLike, model: Node, state: ModelState,
                  modules_to_save: Iterable[str] = ()) -> str:
    """Write only the adapter parameters of ``state``, with the adapter layers' ops and attributes.

    What ``graphdsl.adapter_state`` keeps (A ``[in, r]``, B ``[r, out]``, magnitude
    ``[out]``, dropout keys; every layer ``adapt`` left trainable and the layers named in
    ``modules_to_save``) and the frozen flags: a small file beside a shared base model.

    Args:
        path: the file to write.
        model: the adapted model.
        state: its complete state.
        modules_to_save: more layer names to save whole.

    Returns:
        (str): the path written.

    Raises:
        GraphDSLError: the model has no adapter layers.
        StateError: ``state`` does not fit the model.

    Examples:
        >>> from graphdsl import lora
        >>> base = gd.dense(gd.input("x", shape=(None, 4)), 4, name="attn")
        >>> model = lora.adapt(base, ["attn"], rank=2)
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32))
        >>> gd.save_adapters("adapters.gdsl", model, state)
        'adapters.gdsl'
    """
    p = need_path(path, "gd.save_adapters")
    check_model_arg(model, "gd.save_adapters")
    check_state_arg(state, "gd.save_adapters")
    g, nodes = adapter_layers(model)
    if not nodes:
        raise GraphDSLError("the model has no adapter layers (dora/lora) to save",
                            fix="adapt it first (dora.adapt / lora.adapt), or save the whole "
                                "model with gd.save")
    mods = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
    ad = adapter_state(model, state, mods)
    keys = [(layer, p) for layer, ps in ad.data.items() for p in ps]
    want = expected_tensors(g, keys)
    tensors = state_tensors(g, ad, want)
    adapters = {g.name(n) for n in nodes}
    doc = {"format": "graphdsl.adapters", "format_version": FORMAT_VERSION,
           "adapters": _adapter_doc(g, nodes),
           "modules_to_save": sorted(lay for lay in ad.data if lay not in adapters),
           "frozen": frozen_list(ad.frozen, want)}
    return write_archive(p, {
        ADAPTERS_JSON: (format_document(doc).encode("utf-8"), zipfile.ZIP_DEFLATED),
        WEIGHTS: (encode_weights(tensors, "graphdsl.adapters"), zipfile.ZIP_STORED),
    }, "gd.save_adapters")


def _check_layers(doc: dict[str, Any], g: Graph, nodes: list[Node], label: str,
                  source: str) -> None:
    """The file's adapter layers must be the model's: same names, ops and attributes."""
    mine = {e["name"]: e for e in _adapter_doc(g, nodes)}
    theirs = doc["adapters"]
    if not isinstance(theirs, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in theirs):
        raise SerializationError(f"{source}: 'adapters' must be a list of layer entries",
                                 fix="save the adapters again")
    names = [e["name"] for e in theirs]
    if sorted(names) != sorted(mine):
        raise SerializationError(
            f"{label}: the file has adapter layers {sorted(names)}, the model has "
            f"{sorted(mine)}",
            fix="adapt the model the same way as when the adapters were saved")
    for e in theirs:
        m = mine[e["name"]]
        if e.get("op") != m["op"]:
            raise SerializationError(f"{label}: adapter {e['name']!r} is a {e.get('op')!r} "
                                     f"layer in the file, a {m['op']} layer in the model",
                                     layer=e["name"], fix="use the same adapter kind")
        fa = dict(e.get("attrs")) if isinstance(e.get("attrs"), dict) else {}
        node = next(n for n in nodes if g.name(n) == e["name"])
        act = fa.pop("activation", None)  # fused into the adapter by older files
        if act is not None and not any(n.op == act and n.inputs[0] is node for n in g.order
                                       if n.inputs):
            raise SerializationError(
                f"{label}: adapter {e['name']!r} was saved with the activation {act!r} "
                f"after it, but no {act} layer reads it in the model", layer=e["name"],
                op=m["op"], fix=f"adapt a model whose layer has activation={act!r}")
        if doc["format_version"] == 1 and fa.get("padding") == "same":  # TensorFlow's rule
            then = version1_same(node)
            fa = {**fa, "padding": then or "TensorFlow's 'same' (format_version 1), which "
                                           "needs the input size"}
        diff = sorted(k for k in set(fa) | set(m["attrs"]) if fa.get(k) != m["attrs"].get(k))
        if diff:
            k = diff[0]
            raise SerializationError(
                f"{label}: adapter {e['name']!r} has {k}={fa.get(k)!r} in the file but "
                f"{k}={m['attrs'].get(k)!r} in the model", layer=e["name"], op=m["op"],
                fix="adapt the model with the same options as when the adapters were saved")


def load_adapters(path: str | os.PathLike, model: Node, base_state: ModelState, *,
                  seed: int = 0, limits: LoadLimits | None = None) -> ModelState:
    """Attach the adapter parameters saved by ``save_adapters`` to ``base_state``.

    Goes through ``graphdsl.attach_adapters``, which validates the complete state;
    ``base_state`` is not modified.

    Args:
        path: the file.
        model: the adapted model; its adapter layers (names, ops, attributes) must match
            the file.
        base_state: the base model's values.
        seed: seed for missing state entries (dropout keys).
        limits: size limits, as ``load`` takes them.

    Returns:
        (ModelState): the complete state, adapter values of the shapes the graph gives (A
        ``[in, r]``, B ``[r, out]``, magnitude ``[out]``).

    Raises:
        SerializationError: a corrupt file, or adapter layers that do not match ``model``.
        StateError: unknown, missing or mis-shaped values.

    Examples:
        >>> from graphdsl import lora
        >>> base = gd.dense(gd.input("x", shape=(None, 4)), 4, name="attn")
        >>> base_state = gd.build(base)[0](np.zeros((1, 4), np.float32))
        >>> model = lora.adapt(base, ["attn"], rank=2)
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32), base_state)
        >>> _ = gd.save_adapters("a.gdsl", model, state)
        >>> gd.load_adapters("a.gdsl", model, base_state) == state
        True
    """
    path = need_path(path, "gd.load_adapters")
    check_model_arg(model, "gd.load_adapters")
    label = file_label(path)
    need_state(base_state, "base_state must be",
               "pass the base model's state (e.g. from gd.load or init_fn)")
    members = read_archive(path, ADAPTER_MEMBERS, limits, what="adapter file", mapped=WEIGHTS)
    source = f"{label}:{ADAPTERS_JSON}"
    doc = parse_json(members[ADAPTERS_JSON], source)
    if not isinstance(doc, dict) or set(doc) != _ADAPTERS_KEYS:
        raise SerializationError(f"{source}: must be an object with the keys "
                                 f"{sorted(_ADAPTERS_KEYS)}",
                                 fix="save the adapters again with gd.save_adapters")
    check_version(doc, source, fix="save the adapters again with this graphdsl "
                                   "(gd.save_adapters), or upgrade graphdsl")
    g, nodes = adapter_layers(model)
    _check_layers(doc, g, nodes, label, source)
    mods = doc["modules_to_save"]
    owners = {k[0] for k in g.params}
    if not isinstance(mods, list) or not all(isinstance(x, str) and x in owners for x in mods):
        raise SerializationError(f"{source}: 'modules_to_save' lists {mods!r}, which are not "
                                 "layers with parameters in this model",
                                 fix="use the model the adapters were saved with")
    want = expected_tensors(g, _owned_keys(g, nodes) + [k for k in g.params if k[0] in mods])
    frozen = read_frozen(doc["frozen"], want, source, "parameters saved in the file",
                         "save the adapters again")
    arrays = read_weights(members[WEIGHTS], want, f"{label}:{WEIGHTS}")
    saved = ModelState(by_layer(arrays, want), frozen, state_entries(g, want))
    return attach_adapters(model, base_state, saved, seed=seed)
