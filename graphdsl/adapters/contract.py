"""The adapter contract, asked by every module that treats adapters specially (adapt,
merge, adapter-only state and files, display, torch interop, the backends' kernels).

An adapter op is an op registered with ``category="adapter"`` (today ``dora`` and
``lora``). It reads a frozen base kernel ``[in, out]`` — the wrapped dense layer's
``kernel`` (owner = that layer) or its own ``base_weight`` — and the base ``bias
[out]``; everything else it reads (``A [in, r]``, ``B [r, out]``, ``magnitude [out]``,
a dropout ``key``) belongs to the adapter. It carries the wrapped dense layer's options
(:data:`DENSE_OPTIONS`) and merges into a plain dense kernel through the ``merge``
function its registry entry names in ``extra``: ``merge(K, params, attrs) -> K'``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..node import Node
from ..registry import OPS, ParamSpec

#: parameter names that belong to the base layer, not to the adapter
BASE_PARAMS = frozenset({"kernel", "bias", "base_weight"})
#: the options an adapter takes over from the dense layer it wraps (and gives back on merge)
DENSE_OPTIONS = ("units", "use_bias", "activation", "kernel_initializer",
                 "bias_initializer")


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


def wrap_options(dense: Node, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of an adapter wrapping the dense layer ``dense`` (named): the
    adapter options ``opts`` plus the dense layer's own options and ``base``."""
    return dict(opts, base=dense.name, **{k: dense.attrs[k] for k in DENSE_OPTIONS})


def dense_options(adapter: Node) -> dict[str, Any]:
    """The attributes of the dense layer an adapter merges into."""
    return {k: adapter.attrs[k] for k in DENSE_OPTIONS}


def merged_kernel(op: str, params: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
                  ) -> np.ndarray:
    """The plain dense kernel ``[in, out]`` equal to adapter ``op`` with ``params`` (by
    local name) and ``attrs``, in the dtype of the arrays given (raises RuleError for a
    zero-norm DoRA column)."""
    return OPS[op].extra["merge"](base_kernel(params), params, attrs)
