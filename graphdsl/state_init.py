"""State initialization: the ModelState a graph reads, given values kept, others created.

Backend-independent (no plan, no compiler): values are created in NumPy from ``seed`` and
``"layer.param"`` (graphdsl.initializers), so every backend starts from the same weights.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import as_numpy
from .dtypes import HALF, is_float
from .errors import RuleError, StateError, fmt_shape
from .graph import (
    Graph,
    check_known_keys,
    check_value,
    infer_shapes,
    normalize_input_shapes,
)
from .initializers import initialize
from .node import Node
from .registry import ParamSpec
from .state import ModelState, need_state


def init_state(g: Graph, template: Any = None, initial_state: ModelState | None = None,
               seed: int = 0, dtype: str = "float32") -> ModelState:
    """A ModelState with every value ``g`` reads: those in ``initial_state`` kept (each
    checked to have the shape the parameter spec states, e.g. ``kernel [in, out]``, and
    converted to its dtype, ``dtype`` unless the spec names one), the missing ones created
    from ``seed``. ``template``: input arrays or shapes checked against the model
    (``{name: (batch, ...)}``, or one array for a 1-input model)."""
    if template is not None:
        infer_shapes(g, normalize_input_shapes(g, template))
    if initial_state is None:
        initial_state = ModelState.empty()
    need_state(initial_state, "initial_state must be",
               "wrap arrays as gd.ModelState({layer: {param: array}})")
    given = initial_state.data
    check_known_keys(g, given, "initial_state")
    data: dict[str, dict[str, np.ndarray]] = {}
    frozen = set(initial_state.frozen)
    state_names: dict[str, list[str]] = {}
    for n in g.order:
        local: dict[str, np.ndarray] = {}
        for spec in n.params:
            owner, pname = g.param_ref(n, spec)
            dt = spec.dtype or dtype
            if pname in data.get(owner, {}):
                local[spec.name] = data[owner][pname]
                continue
            if owner in given and pname in given[owner]:
                arr = _given_value(g, n, spec, given[owner][pname], dt)
            else:
                arr = _created_value(g, n, spec, dt, seed, local)
            data.setdefault(owner, {})[pname] = arr
            local[spec.name] = arr
            merged = g.params[(owner, pname)]
            if merged.kind == "state":
                state_names.setdefault(owner, []).append(pname)
            elif not merged.trainable:
                frozen.add((owner, pname))
    return ModelState(data, frozen, state_names)


def _given_value(g: Graph, n: Node, spec: ParamSpec, value: Any, dt: str) -> np.ndarray:
    """An ``initial_state`` value (numeric: a ModelState seals only real numbers) of the
    spec's shape, finite, in dtype ``dt``; a float16/bfloat16 value of a floating
    parameter keeps its dtype (a half-precision checkpoint stays half)."""
    arr = as_numpy(value)
    owner, pname = g.param_ref(n, spec)
    check_value(g, n, spec, arr, "initial_state")
    if is_float(arr.dtype) and not np.all(np.isfinite(arr)):
        raise g.error(n, f"initial_state value {owner}.{pname} holds NaN or infinity",
                      "pass finite values", cls=StateError)
    if arr.dtype.name in HALF and is_float(dt):
        return arr
    return arr if arr.dtype == np.dtype(dt) else arr.astype(dt)


def _created_value(g: Graph, n: Node, spec: ParamSpec, dt: str, seed: int,
                   local: dict[str, np.ndarray]) -> np.ndarray:
    """A new value for ``spec`` from its initializer (``local``: the node's values so far,
    which a derived initializer such as DoRA's magnitude reads)."""
    owner, pname = g.param_ref(n, spec)
    try:
        return initialize(spec.initializer, spec.shape, dt, seed, owner, pname, local)
    except RuleError as e:
        raise g.error(n, e.what, e.fix, cls=e.cls) from None
    except MemoryError:
        nbytes = np.dtype(dt).itemsize * float(np.prod(spec.shape, dtype=float))
        raise g.error(n, f"not enough memory to create {owner}.{pname} of shape "
                      f"{fmt_shape(spec.shape)} ({nbytes:.3g} bytes)",
                      "check the layer sizes", cls=StateError) from None
