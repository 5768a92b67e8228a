"""The adapter contract, asked by every module that treats adapters specially (adapt,
merge, adapter-only state and files, display, torch interop, the backends' kernels).

An adapter op is an op registered with ``category="adapter"`` (today ``dora`` and
``lora``). It reads a frozen base kernel — the wrapped layer's ``kernel`` (owner = that
layer) or its own ``base_weight`` — and the base ``bias [out]``; everything else it
reads (``A``, ``B [r, out]``, ``magnitude [out]``, a dropout ``key``) belongs to the
adapter. Its ``layer`` attribute names the kind of layer it adapts (``ADAPTABLE``,
one record each in graphdsl.adapters.kinds: dense ``K [in, out]``, ``A [in, r]``; conv
``K`` in the conv's layout, ``A [*kernel_size, in, r]``; embedding ``K [vocab, dim]``,
``A [vocab, r]``); it carries that layer's options and merges into a plain layer of that
kind through the ``merge`` function its registry entry names in ``extra``: ``merge(K,
params, attrs) -> K'`` on the flat kernel ``[fan_in, out]`` (``flat_kernel``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..node import Node
from ..registry import OPS, ParamSpec
from .kinds import DEFAULT, KINDS, AdaptableKind

#: parameter names that belong to the base layer, not to the adapter
BASE_PARAMS = frozenset({"kernel", "bias", "base_weight"})
#: the layers adapters wrap
ADAPTABLE = tuple(KINDS)


def is_adapter(op: str | Node) -> bool:
    """Whether ``op`` (an op name or a node) is an adapter op."""
    name = op.op if isinstance(op, Node) else op
    opdef = OPS.get(name)
    return opdef is not None and opdef.category == "adapter"


def adapter_ops() -> list[str]:
    """The names of the registered adapter ops, sorted."""
    return sorted(name for name in OPS if is_adapter(name))


def base_kernel(params: Mapping[str, Any]) -> Any:
    """The frozen base kernel ``[in, out]`` among an adapter's parameters (by local
    name): the wrapped layer's ``kernel`` or the adapter's own ``base_weight``."""
    return params["kernel"] if "kernel" in params else params["base_weight"]


def owns(node: Node, spec: ParamSpec) -> bool:
    """Whether ``spec`` (one of ``node``'s parameters) belongs to the adapter itself (A, B,
    magnitude, the dropout key) rather than to its base layer. False for non-adapters."""
    return is_adapter(node) and spec.owner is None and spec.name not in BASE_PARAMS


def wrap_options(base: Node, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of an adapter wrapping the (named) ``base`` layer (dense, conv or
    embedding): the adapter options ``opts`` plus the layer's own options and ``base``."""
    kind = KINDS[base.op]
    own = {k: base.attrs[kind.renames.get(k, k)] for k in kind.options}
    own.update(kind.fixed)
    if kind.name != DEFAULT:
        own["layer"] = kind.name
    return dict(opts, base=base.name, **own)


def layer_of(adapter: Node | Mapping[str, Any]) -> str:
    """The kind of layer (dense, conv, embedding) an adapter node (or its attrs) adapts."""
    attrs = adapter.attrs if isinstance(adapter, Node) else adapter
    return attrs.get("layer", DEFAULT)


def kind_of(adapter: Node | Mapping[str, Any]) -> AdaptableKind:
    """The record of the kind of layer an adapter node (or its attrs) adapts."""
    return KINDS[layer_of(adapter)]


def base_options(adapter: Node | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(op, attrs)`` of the plain layer an adapter (node or attrs) merges into."""
    kind = kind_of(adapter)
    return kind.name, kind.base_attrs(adapter.attrs if isinstance(adapter, Node) else adapter)


def flat_kernel(K: Any, attrs: Mapping[str, Any]) -> Any:
    """The base kernel of an adapter with ``attrs`` as a ``[fan_in, out]`` matrix: dense
    and embedding kernels as they are, a conv kernel as ``[*kernel_size * in, filters]``
    (NumPy arrays or tensors)."""
    return kind_of(attrs).flat(K, attrs)


def flat_A(A: Any) -> Any:
    """``A`` as ``[fan_in, r]`` (a conv adapter's ``A [*kernel_size, in, r]`` flattened)."""
    return A if A.ndim == 2 else A.reshape(-1, A.shape[-1])


def merged_kernel(op: str, params: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
                  ) -> np.ndarray:
    """The plain layer's kernel (the base kernel's shape and layout) equal to adapter
    ``op`` with ``params`` (by local name) and ``attrs``, in the dtype of the arrays given
    (raises RuleError for a zero-norm DoRA column)."""
    K = base_kernel(params)
    kind = kind_of(attrs)
    flat = dict(params, A=flat_A(params["A"]))
    return kind.unflat(OPS[op].extra["merge"](kind.flat(K, attrs), flat, attrs), K.shape,
                       attrs)
