"""The op registry: one entry per op, holding everything backends do not own.

An ``OpDef`` carries the shape rule, the parameter specs, the attribute
check and the docstring. Backends hold only kernels keyed by the op name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GraphDSLError

Shape = tuple  # tuple[int | None, ...]


@dataclass(frozen=True)
class DerivedInit:
    """A data-dependent initializer: ``fn(params) -> array`` where ``params`` maps the
    node's local parameter names (those listed before this one) to their arrays."""

    fn: Callable[[Mapping[str, Any]], Any]
    label: str = "derived"


@dataclass(frozen=True)
class ParamSpec:
    """A parameter (or non-trainable state entry) a node reads from the ModelState.

    What ``node.params`` and ``graphdsl.get_parameters`` hold, and what an op's
    ``params`` rule returns.

    Attributes:
        name: the name under ``state.data[layer]`` (``"kernel"``, ``"bias"``, ...).
        shape: its fixed shape (Axon layout: a dense ``kernel [in, out]``).
        initializer: an initializer name, a callable ``(shape, dtype, rng) -> array``, or
            a data-dependent ``DerivedInit``.
        trainable: False for a parameter frozen from the start.
        owner: the layer whose ``state.data[owner]`` holds it (None: the node itself), which
            is how adapters share the kernel of the layer they wrap.
        kind: ``"param"`` or ``"state"`` (a dropout RNG key, batch-norm statistics).
        dtype: its dtype; None for the compute dtype (float32 unless asked).

    Examples:
        >>> spec = gd.dense(gd.input("x", shape=(None, 3)), 2).params[0]
        >>> spec.name, spec.shape, spec.initializer, spec.kind
        ('kernel', (3, 2), 'glorot_uniform', 'param')
    """

    name: str
    shape: Shape
    initializer: Any = "zeros"  # initializer name, callable(shape, dtype, rng) or DerivedInit
    trainable: bool = True
    owner: str | None = None
    kind: str = "param"  # "param" or "state"
    dtype: str | None = None  # None: the compute dtype (float32 unless asked)


#: the uint64 RNG key a layer that draws random numbers reads (dropout, attention's and
#: the adapters' dropout): a state entry, never trainable, whose next value the kernel
#: returns (``Stateful``)
RNG_KEY = ParamSpec("key", (), "rng_key", False, kind="state", dtype="uint64")


def _no_params(in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> list[ParamSpec]:
    return []


def _same_dtype(in_dtypes: Sequence[str], attrs: Mapping[str, Any]) -> str:
    return "float32"


@dataclass(frozen=True)
class OpDef:
    """One op of the registry (``gd.OPS[name]``): everything backends do not own.

    Backends hold only kernels keyed by the op name; the architecture page says how to add
    an op.

    Attributes:
        name: the op name (``"dense"``).
        infer_shape: ``(in_shapes, attrs) -> shape``, raising ``RuleError`` on a mismatch.
        params: ``(in_shapes, attrs) -> [ParamSpec]``.
        check_attrs: ``attrs -> checked attrs`` with defaults filled in; keys it drops are
            reported as unknown options.
        arity: the number of inputs, or ``(min, max)`` with max None = any.
        doc: one line for views and the docs.
        infer_dtype: ``(in_dtypes, attrs) -> dtype``.
        category: ``"layer"``, ``"activation"``, ...
        output_alias: may the output share memory with ``"none"``, ``"inputs"`` or
            ``"model"``.
        probe: runs the op to get a concrete shape its rule leaves unknown, or None.
        extra: op-specific data.

    Examples:
        >>> op = gd.OPS["dense"]
        >>> op.name, op.arity, op.category
        ('dense', 1, 'layer')
    """

    name: str
    infer_shape: Callable[[Sequence[Shape], Mapping[str, Any]], Shape]
    params: Callable[[Sequence[Shape], Mapping[str, Any]], list[ParamSpec]] = _no_params
    # returns the checked attributes; keys it drops are reported as unknown options
    check_attrs: Callable[[dict[str, Any]], dict[str, Any]] = lambda a: {}
    arity: Any = 1
    doc: str = ""
    infer_dtype: Callable[[Sequence[str], Mapping[str, Any]], str] = _same_dtype
    category: str = "layer"
    # may the output share memory with: "none" (always a new array), "inputs" (an input
    # or a view of one: reshape, dropout, ...), "model" (the model's own memory: constant)
    output_alias: str = "none"
    # concrete output shape by running the op (a custom layer) when its rule leaves sizes
    # unknown: probe(in_shapes, in_dtypes, attrs) -> shape; None: the rule is exact
    probe: Callable[[Sequence[Shape], Sequence[str], Mapping[str, Any]], Shape] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


OPS: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add an op to the registry (a name can be registered once)."""
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} is already registered")
    OPS[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    """The registry entry of op ``name``; an unknown name lists the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise GraphDSLError(
            f"unknown op {name!r}", fix=f"use one of: {', '.join(sorted(OPS))}"
        ) from None
