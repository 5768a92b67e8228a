"""Compiler front: validate -> topological plan -> backend.compile -> (init_fn, predict_fn).

The plan is backend-independent: a flat list of steps (op, attrs, input slots, output
slot, parameter references, slots to release). Backends turn it into an executable.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import state_init
from .backends import get_backend
from .block import expand_blocks
from .dtypes import FLOATS
from .errors import GraphDSLError, InputError, RuleError, fmt_shape
from .graph import Graph, analyze, check_input_names, state_value
from .node import Node
from .registry import OPS, ParamSpec
from .shapes import is_int
from .signatures import SignatureChecker
from .state import ModelState, need_state

MODES = ("inference", "train")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ParamRef:
    """Where a step finds one of its parameters: ``state.data[owner][name]``."""

    local: str  # the name the kernel sees (kernel, bias, A, ...)
    owner: str
    name: str
    shape: tuple
    dtype: str
    kind: str


@dataclass(frozen=True)
class Step:
    """One kernel call: ``slots[out] = KERNELS[op](inputs, params, attrs, ctx)``."""

    node: Node
    name: str
    op: str
    attrs: Mapping[str, Any]
    ins: tuple[int, ...]
    out: int
    params: tuple[ParamRef, ...]
    free: tuple[int, ...]  # slots whose value is not needed after this step


@dataclass(frozen=True)
class Plan:
    graph: Graph
    steps: tuple[Step, ...]
    inputs: tuple[tuple[str, int, Node], ...]  # (name, slot, node) in get_inputs order
    output: int
    n_slots: int
    mode: str
    dtype: str
    # which outputs may share the model's memory (a constant, a parameter, a view of
    # one): backends return copies of those. One flag, or one per container element.
    copy_out: tuple[bool, ...] = (False,)

    @property
    def training(self) -> bool:
        return self.mode == "train"

    def step_error(self, step: Step, what: str, fix: str | None = None, shapes: Any = None,
                   cls: type[GraphDSLError] = GraphDSLError) -> GraphDSLError:
        return cls(what, layer=step.name, op=step.op, where=step.node.where, shapes=shapes,
                   fix=fix)

    def param_value(self, step: Step, i: int, data: Mapping) -> Any:
        """``step``'s ``i``-th parameter in ``data`` (``{layer: {param: array}}``), checked
        as ``graphdsl.graph.state_value`` checks it (a StateError naming the layer)."""
        return state_value(self.graph, step.node, step.node.params[i], data)

    def kernel_failure(self, step: Step, exc: BaseException, slots: list) -> GraphDSLError:
        """Wrap an unexpected backend exception with the layer it happened in."""
        if isinstance(exc, GraphDSLError):
            return exc
        if isinstance(exc, RuleError):
            return self.step_error(step, exc.what, exc.fix, cls=exc.cls)
        shapes = ({f"input{i}": getattr(slots[s], "shape", None) for i, s in enumerate(step.ins)}
                  if slots else None)
        return self.step_error(step, f"{step.op} failed: {type(exc).__name__}: {exc}",
                               "check the input shapes and the layer options", shapes=shapes)


def make_plan(model: Node, mode: str = "inference", dtype: str = "float32") -> Plan:
    """Validate the graph and lay it out as a flat list of steps."""
    if mode not in MODES:
        raise GraphDSLError(f"unknown mode {mode!r}", fix=f"use one of {MODES}")
    if dtype not in DTYPES:
        raise GraphDSLError(f"unsupported compute dtype {dtype!r}", fix=f"use one of {DTYPES}")
    model = expand_blocks(model)  # block calls become their bodies' layers
    g = analyze(model)
    slot = {n.id: i for i, n in enumerate(g.order)}
    last_use: dict[int, int] = {}
    for i, n in enumerate(g.order):
        for x in n.inputs:
            last_use[slot[x.id]] = i
    frees: dict[int, list[int]] = {}
    for s, i in last_use.items():
        if s != slot[model.id]:
            frees.setdefault(i, []).append(s)
    steps = []
    for i, n in enumerate(g.order):
        if n.op == "input":
            continue
        refs = tuple(ParamRef(p.name, *g.param_ref(n, p), p.shape, read_dtype(n, p, dtype),
                              p.kind) for p in n.params)
        steps.append(Step(n, g.name(n), n.op, n.attrs, tuple(slot[x.id] for x in n.inputs),
                          slot[n.id], refs, tuple(frees.get(i, ()))))
    inputs = tuple((g.name(n), slot[n.id], n) for n in g.input_nodes)
    return Plan(g, tuple(steps), inputs, slot[model.id], len(g.order), mode, dtype,
                output_aliases(g, model))


def read_dtype(n: Node, p: ParamSpec, dtype: str) -> str:
    """The dtype layer ``n``'s kernel reads parameter ``p`` in: a floating-point
    parameter of a layer with a mixed-precision policy is cast to the policy's ``compute``
    dtype (``dtype`` when it has none: a half-precision value is widened, as Nx promotes
    it with float32 inputs); other parameters in their own dtype, else ``dtype``."""
    if n.policy is not None and p.dtype in (None, *FLOATS):
        return n.policy.compute or dtype
    return p.dtype or dtype


def output_aliases(g: Graph, model: Node) -> tuple[bool, ...]:
    """For the output (or each element of a container output): may it share memory with
    the model's own arrays? Follows ops whose ``output_alias`` is "inputs" back to one
    whose ``output_alias`` is "model" (constant, param)."""
    aliased: dict[int, bool] = {}
    for n in g.order:
        kind = OPS[n.op].output_alias
        aliased[n.id] = kind == "model" or (
            kind == "inputs" and any(aliased[i.id] for i in n.inputs))
    if model.op == "container":
        return tuple(aliased[i.id] for i in model.inputs)
    return (aliased[model.id],)


# -- predict -----------------------------------------------------------------------------------
class InputChecker:
    """Validates predict inputs; shape rules run once per pattern of input sizes."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.names = [name for name, _, _ in plan.inputs]
        self.optional = plan.graph.optional
        self.required = [k for k in self.names if k not in self.optional]
        # check_shapes(signature): one shape (or None: optional, left out) per input
        self.check_shapes = SignatureChecker(plan.graph)

    def __call__(self, inputs: Any) -> list[Any]:
        """The input arrays in plan order (None for an optional input left out)."""
        names = self.names
        if isinstance(inputs, Mapping):
            if len(inputs) != len(names) or any(k not in inputs for k in names):
                check_input_names(self.plan.graph, inputs)
            arrays = [inputs.get(k) for k in names]
        elif len(self.required) == 1:
            arrays = [inputs if k == self.required[0] else None for k in names]
        else:
            raise InputError(
                f"this model has {len(names)} inputs {names}; a bare array is ambiguous",
                shapes=dict(self.plan.graph.inputs),
                fix="pass a dict {name: array} with one entry per input")
        sig: list[tuple | None] = []
        for (name, _, node), a in zip(self.plan.inputs, arrays):
            if a is None and name in self.optional:
                sig.append(None)
                continue
            shp = getattr(a, "shape", None)
            if shp is None or not _numeric(a):
                raise self._bad_value(name, node, a)
            sig.append(tuple(shp))
        self.check_shapes(tuple(sig))
        return arrays

    def _bad_value(self, name: str, node: Node, a: Any) -> GraphDSLError:
        if a is None:
            what = f"input {name!r} is None"
        elif hasattr(a, "dtype"):
            what = f"input {name!r} has non-numeric dtype {a.dtype}"
        else:
            what = f"input {name!r} is a {type(a).__name__}, not an array"
        return InputError(what, layer=name, op="input", where=node.where,
                          shapes={"expected": node.shape},
                          fix=f"pass a numeric array of shape {fmt_shape(node.shape)}")


def _numeric(a: Any) -> bool:
    dt = getattr(a, "dtype", None)
    if isinstance(dt, np.dtype):
        return dt.kind in "biuf"
    return dt is not None and any(k in str(dt) for k in ("float", "int", "bool"))


def build(model: Node, backend: str = "numpy", mode: str = "inference", seed: int = 0,
          dtype: str = "float32", **backend_options: Any
          ) -> tuple[Callable[..., ModelState], Callable[..., Any]]:
    """Compile ``model`` for ``backend``; returns ``(init_fn, predict_fn)`` (Axon's ``build``).

    ``init_fn(template=None, initial_state=None) -> ModelState`` keeps every value given in
    ``initial_state`` and creates the missing ones from ``seed``; ``template`` (input arrays
    or shapes) is checked against the model. ``predict_fn(state, inputs)`` takes a bare
    array for a 1-input model, else ``{name: array}``, and returns an array (a tuple/dict
    for a container); in ``mode="train"`` it returns ``{"prediction": ..., "state":
    ModelState}`` with dropout active and batch-norm statistics updated.

    Args:
        model: the output node (or container).
        backend: ``"numpy"``, ``"torch"`` (``device=``) or ``"onnxruntime"`` (inference,
            float32: the model exported with ``gd.to_onnx``'s rules, re-exported when a
            state value is replaced, run in an ``InferenceSession``; ``threads=2``,
            ``opset=None``).
        mode: ``"inference"`` or ``"train"``.
        seed: non-negative int seeding the initializers and RNG keys.
        dtype: the dtype new parameters are created in (``"float32"``).
        **backend_options: options of the backend (``device``, ``threads``, ``opset``).

    Returns:
        (tuple[Callable, Callable]): ``(init_fn, predict_fn)``.

    Raises:
        GraphDSLError: a bad seed or mode; an invalid graph (duplicate name, ...).
        BackendError: an unknown backend, or one whose package is missing (names the extra).
        InputError: (from ``predict_fn``) inputs that do not fit the model.
        StateError: (from ``init_fn``/``predict_fn``) a state with unknown, missing or
            mis-shaped values.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> y = gd.dense(gd.dense(x, 32, activation="relu", name="fc1"), 4, name="out")
        >>> init_fn, predict_fn = gd.build(y, backend="numpy", seed=0)
        >>> state = init_fn({"x": np.zeros((1, 16), np.float32)}, gd.ModelState.empty())
        >>> predict_fn(state, np.ones((8, 16), np.float32)).shape
        (8, 4)
        >>> state.data["fc1"]["kernel"].shape
        (16, 32)
    """
    if not is_int(seed) or int(seed) < 0:
        raise GraphDSLError(f"seed must be a non-negative integer, got {seed!r}",
                            fix="pass seed=0 (or any int >= 0)")
    seed = int(seed)
    be = get_backend(backend)
    plan = make_plan(model, mode, dtype)
    executable = be.compile(plan, **backend_options)
    check = InputChecker(plan)

    def init_fn(template: Any = None, initial_state: ModelState | None = None) -> ModelState:
        return state_init.init_state(plan.graph, template, initial_state, seed, plan.dtype)

    def predict_fn(state: ModelState, inputs: Any) -> Any:
        need_state(state, "predict needs", "create one with init_fn(template)")
        out, updates = executable(state, check(inputs))
        if plan.training:
            new = state.copy()
            for (layer, name), value in updates.items():
                new.data[layer][name] = value
            return {"prediction": out, "state": new}
        return out

    init_fn.plan = predict_fn.plan = plan  # type: ignore[attr-defined]
    return init_fn, predict_fn


_PREDICT_CACHE: OrderedDict[tuple, tuple[Node, Callable]] = OrderedDict()


def predict(model: Node, state: ModelState, inputs: Any, backend: str = "numpy",
            mode: str = "inference", **kwargs: Any) -> Any:
    """Build (cached for the last few models) and run ``model`` once on ``backend``.

    Args:
        model: the output node.
        state: a ``ModelState`` holding every value the model reads.
        inputs: a bare array for a 1-input model, else ``{name: array}``.
        backend: ``"numpy"``, ``"torch"`` or ``"onnxruntime"``.
        mode: ``"inference"`` or ``"train"`` (then ``{"prediction", "state"}`` as
            ``build``'s ``predict_fn``).
        **kwargs: ``build``'s other options (``seed``, ``device``, ...).

    Returns:
        (Any): the output array (a tuple/dict for a container).

    Raises:
        InputError: inputs that do not fit the model.
        StateError: missing or mis-shaped values in ``state``.
        BackendError: an unknown or unavailable backend.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.dense(x, 1, kernel_initializer="ones", name="fc")
        >>> state = gd.build(y)[0](np.zeros((1, 2), np.float32))
        >>> gd.predict(y, state, np.array([[1.0, 2.0]], np.float32))
        array([[3.]], dtype=float32)
    """
    key = (id(model), backend, mode, tuple(sorted(kwargs.items())))
    hit = _PREDICT_CACHE.get(key)
    if hit is None or hit[0] is not model:
        hit = (model, build(model, backend=backend, mode=mode, **kwargs)[1])
        _PREDICT_CACHE[key] = hit
        if len(_PREDICT_CACHE) > 8:
            _PREDICT_CACHE.popitem(last=False)
    return hit[1](state, inputs)
