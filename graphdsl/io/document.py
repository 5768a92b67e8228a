"""Rules shared by graphdsl's three JSON documents (the model definition ``model.json``, a
model file's ``state.json``, an adapter file's ``adapters.json``): the one format version,
its check and what padding "same" meant in version 1, the frozen-flag list, the list of
non-parameter state entries, and the checks on the ``model`` and ``state`` arguments of
the writers.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ..errors import GraphDSLError, SerializationError
from ..graph import Graph
from ..node import Node
from ..state import need_state
from ..windows import split_channels, tf_same_pads, window
from .value_codec import encode_value

#: the version every graphdsl document is written with. 2: padding="same" is Axon's rule
#: whatever the strides; version 1 (still read) padded "same" as TensorFlow does, which a
#: model.json of version 1 keeps by loading those layers with explicit pads.
FORMAT_VERSION = 2
#: the versions a document may carry
READ_VERSIONS = (1, 2)

Key = tuple[str, str]  # (layer, param)


def check_version(doc: Mapping[str, Any], source: str,
                  fix: str = "save the file again with this version of graphdsl, or "
                             "upgrade graphdsl") -> None:
    """Check a document's ``format_version``: missing, a bool or any value not in
    ``READ_VERSIONS`` is a SerializationError naming ``source``; ``fix`` words the
    remedy (e.g. which function writes the file again)."""
    v = doc.get("format_version")
    if v is None:
        raise SerializationError(f"{source} has no 'format_version'",
                                 fix=f"add \"format_version\": {FORMAT_VERSION}")
    if v not in READ_VERSIONS or not isinstance(v, int) or isinstance(v, bool):
        raise SerializationError(
            f"{source} has format_version {v!r}; this graphdsl reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}", fix=fix)


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


def read_frozen(value: Any, allowed: Collection[Key], source: str, allowed_what: str,
                fix: str) -> set[Key]:
    """The ``"frozen"`` list of a document as a set of ``(layer, param)``.

    ``value`` must be a list of ``[layer, param]`` string pairs, each in ``allowed``;
    otherwise a SerializationError ``"{source}: 'frozen' ..."`` that names the pairs that are
    not ``allowed_what`` (e.g. "parameters of the model").
    """
    if not isinstance(value, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x)
            for x in value):
        raise SerializationError(f"{source}: 'frozen' must be a list of [layer, param] pairs",
                                 fix=fix)
    frozen = {(a, b) for a, b in value}
    wrong = sorted(k for k in frozen if k not in allowed)
    if wrong:
        raise SerializationError(f"{source}: 'frozen' names {['.'.join(k) for k in wrong[:10]]}"
                                 f", which are not {allowed_what}", fix=fix)
    return frozen


def frozen_list(frozen: Iterable[Key], keys: Collection[Key]) -> list[list[str]]:
    """The ``"frozen"`` list a document stores: the sorted ``[layer, param]`` pairs of
    ``frozen`` that are among ``keys`` (the values the file holds)."""
    return [list(k) for k in sorted(frozen) if k in keys]


def state_entries(g: Graph, keys: Iterable[Key]) -> dict[str, list[str]]:
    """``{layer: [entry, ...]}``: the non-parameter state entries (ParamSpec kind
    ``"state"``, e.g. a dropout ``key``) among ``keys``, in the graph's order."""
    keys = set(keys)
    out: dict[str, list[str]] = {}
    for (layer, p), spec in g.params.items():
        if (layer, p) in keys and spec.kind == "state":
            out.setdefault(layer, []).append(p)
    return out


def check_model_arg(model: Any, what: str) -> None:
    """``model`` must be a Node (the model's output), else a GraphDSLError for ``what``."""
    if not isinstance(model, Node):
        raise GraphDSLError(f"{what}: the model must be a graph node (a layer's output), got "
                            f"{type(model).__name__}",
                            fix=f"call {what}(path, model, state) with the model's output node")


def check_state_arg(state: Any, what: str) -> None:
    """``state`` must be a ModelState, else a StateError for ``what``."""
    need_state(state, f"{what}: the state must be", f"call {what}(path, model, state) with "
               "the state from init_fn (or gd.load)")
