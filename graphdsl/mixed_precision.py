"""Mixed-precision policies, Axon's ``Axon.MixedPrecision``: a ``Policy`` sets per
layer the dtype its parameters are stored in (``params``), the dtype it computes in
(``compute``: its floating-point inputs and parameters are cast to it before the op) and
the dtype of its result (``output``); ``None`` casts nothing (Axon's ``nil``). Integer
values (token ids, masks) are never cast:

    from graphdsl import mixed_precision as mp
    policy = mp.create_policy(params="float32", compute="bfloat16", output="float32")
    model = mp.apply_policy(model, policy, exclude=["lm_head"])

A policy is a rewrite rule: ``apply_policy`` returns a new graph in which each
policied layer carries the policy (its parameters' dtype; read in ``compute``) between
explicit ``cast`` layers (its inputs to ``compute``, its result to ``output``), so the
model file, ``as_table`` and every backend see the casts. Backends: torch computes in the
compute dtype; NumPy has no fast half-precision path, so there a float16/bfloat16
compute dtype rounds inputs and parameters to it and computes in float32 (values stored,
and outputs given, in the policy's dtypes); the ONNX export does the same with Cast
nodes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .adapters.adapt import match_targets
from .dtypes import FLOATS, HALF, float_name, is_float, np_dtype
from .errors import OptionError, RuleError
from .graph import analyze
from .node import Node, caller_location, make_node, rebuild
from .ops._attrs import boolean
from .registry import OPS, OpDef, register_op
from .transforms import rewrite_nodes

_FIELDS = ("params", "compute", "output")
_SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
#: ops a policy leaves alone, as Axon's compiler does (inputs, plumbing, the casts)
_UNCAST = frozenset({"input", "container", "block", "block_output", "optional", "cast"})


@dataclass(frozen=True)
class Policy:
    """The dtypes of one layer (Axon's ``Axon.MixedPrecision.Policy``).

    Make one with ``create_policy``; frozen and hashable.

    Attributes:
        params: the dtype parameters are stored in, or None.
        compute: the dtype the layer computes in (its float inputs and parameters cast to
            it), or None.
        output: the dtype of its result, or None.

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> mp.create_policy(params="float32", compute="bfloat16", output="float32")
        Policy<p=f32 c=bf16 o=f32>
    """

    params: str | None = None
    compute: str | None = None
    output: str | None = None

    def __repr__(self) -> str:  # Axon's #Axon.MixedPrecision.Policy<p=f32 c=bf16 o=f32>
        parts = [f"{k[0]}={_SHORT[v]}" for k in _FIELDS if (v := getattr(self, k))]
        return f"Policy<{' '.join(parts)}>"

    def to_json(self) -> dict[str, str]:
        """The policy as the model file writes it: the fields that are set.

        Returns:
            (dict[str, str]): e.g. ``{"compute": "bfloat16"}``.
        """
        return {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}


def create_policy(params: Any = None, compute: Any = None, output: Any = None) -> Policy:
    """Axon's ``create_policy``: a ``Policy`` from three dtypes.

    Args:
        params: the parameters' dtype: a name (``"bfloat16"``), a NumPy or a torch dtype,
            or None (the default: not cast).
        compute: the compute dtype, as ``params``.
        output: the output dtype, as ``params``.

    Returns:
        (Policy): the policy.

    Raises:
        OptionError: anything but float16, bfloat16, float32, float64 or None (Axon never
            casts to an integer type).

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> p = mp.create_policy(compute="bfloat16")
        >>> p, p.to_json()
        (Policy<c=bf16>, {'compute': 'bfloat16'})
    """
    return Policy(*(_checked(k, v) for k, v in zip(_FIELDS, (params, compute, output))))


def _checked(field: str, value: Any) -> str | None:
    if value is None:
        return None
    name = float_name(value)
    if name is None:
        raise OptionError(f"create_policy: {field}={value!r} is not a floating-point dtype",
                          op="create_policy", fix=f"use one of {', '.join(FLOATS)}, or None "
                                                  "(no cast)")
    return name


def policy_from_json(value: Any) -> Policy:
    """A policy as ``Policy.to_json`` wrote it (a model file's ``"policy"`` entry).

    Args:
        value: ``{"params"?, "compute"?, "output"?: dtype name}``.

    Returns:
        (Policy): the policy.

    Raises:
        OptionError: not such an object, or a bad dtype.

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> mp.policy_from_json({"compute": "float16"})
        Policy<c=f16>
    """
    if not isinstance(value, Mapping) or set(value) - set(_FIELDS):
        raise OptionError(f"a policy is an object with keys among {_FIELDS}, got {value!r}",
                          fix='write e.g. "policy": {"compute": "bfloat16"}')
    return create_policy(**value)


def _cast_attrs(a: dict) -> dict:
    dtype = float_name(a.get("dtype"))
    if dtype is None:
        raise RuleError(f"cast: dtype must be one of {FLOATS}, got {a.get('dtype')!r}",
                        "pass dtype='bfloat16' (integers are never cast)", OptionError)
    return {"dtype": dtype, "compute": boolean(a.get("compute", False), "compute")}


register_op(OpDef(
    "cast", lambda s, a: s[0], check_attrs=_cast_attrs, output_alias="inputs",
    infer_dtype=lambda d, a: a["dtype"] if is_float(d[0]) else d[0],
    doc="A floating-point input as dtype (integers unchanged). compute=True: the value "
        "feeds a layer computing in dtype; a backend without a fast path for a "
        "half-precision dtype (NumPy, the ONNX export) rounds it to dtype and keeps it in "
        "float32.",
))


def cast(x: Node, dtype: Any, compute: bool = False, name: str | None = None) -> Node:
    """``x`` as ``dtype``, as a layer; integer values pass unchanged.

    The layer a policy puts around a layer.

    Args:
        x: input node, any shape.
        dtype: float16, bfloat16, float32 or float64 (a name, NumPy or torch dtype).
        compute: the value feeds a layer computing in ``dtype``: a backend without a fast
            half-precision path (NumPy, the ONNX export) rounds it to ``dtype`` and keeps it
            in float32.
        name: layer name (default ``"cast_{n}"``).

    Returns:
        (Node): ``x``'s shape, of ``dtype`` (integer inputs keep theirs).

    Raises:
        OptionError: ``dtype`` is not a floating dtype.

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> mp.cast(gd.input("x", shape=(None, 4)), "float16").dtype
        'float16'
    """
    return make_node("cast", [x], {"dtype": dtype, "compute": compute}, name,
                     where=caller_location())


def widened(arr: Any, dtype: str) -> np.ndarray:
    """``arr`` rounded to ``dtype`` and, for float16/bfloat16, held in float32.

    How NumPy and the ONNX export read a value in a half-precision compute dtype (neither
    has a fast half-precision path).

    Args:
        arr: an array-like, any shape.
        dtype: ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``.

    Returns:
        (np.ndarray): float32 for a half dtype, else of ``dtype``.

    Raises:
        GraphDSLError: an unknown dtype, or bfloat16 without ml_dtypes.

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> mp.widened(np.array([3.14159], np.float32), "bfloat16")
        array([3.140625], dtype=float32)
    """
    out = np.asarray(arr)
    dt = np_dtype(dtype)
    out = out if out.dtype == dt else out.astype(dt)
    return out.astype(np.float32) if dtype in HALF else out


def apply_policy(model: Node, policy: Policy, filter: Callable[[Node], bool] | None = None,
                 *, only: Iterable[str] | None = None, exclude: Any = None) -> Node:
    """Axon's ``apply_policy``: a new model in which every layer selected gets ``policy``.

    Selected: every layer but inputs, containers, block calls and casts (a constant gets
    only its output cast, as in Axon), narrowed by ``filter`` or ``only`` and by
    ``exclude``. A layer that reads a half-precision result and has no compute dtype reads
    it as float32 (the promotion Nx applies with float32 parameters), so every backend sees
    one floating-point dtype per layer. Names and state keys do not move; the casts are new
    layers (``cast_0``, ...). Applied again, a policy replaces the earlier one on the layers
    it selects. Parameters are created in ``policy.params`` (``init_fn``); values given in a
    state keep their dtype and are read in ``compute``.

    Args:
        model: the model.
        policy: from ``create_policy``.
        filter: a predicate on a node (Axon's filter); exclusive with ``only``.
        only: op names (Axon's ``only: [:dense]``).
        exclude: targets as ``adapt`` takes them (a regex on the layer name, a list of
            names, ``"lm_head"`` matching every layer ending in ``.lm_head``, or a predicate;
            Axon's ``except: [:batch_norm]`` is ``exclude=lambda n: n.op == "batch_norm"``).

    Returns:
        (Node): the model with policies and ``cast`` layers.

    Raises:
        OptionError: ``policy`` is not a Policy, both ``filter`` and ``only`` are given, or
            ``only`` names an unknown op.
        GraphDSLError: an ``exclude`` entry that matches no layer.

    Examples:
        >>> from graphdsl import mixed_precision as mp
        >>> x = gd.input("x", shape=(None, 4))
        >>> model = gd.dense(gd.dense(x, 8, name="fc"), 2, name="lm_head")
        >>> policy = mp.create_policy(params="float32", compute="bfloat16", output="float32")
        >>> gd.properties(mp.apply_policy(model, policy, exclude=["lm_head"]))
        {'x': 'input', 'cast_0': 'cast', 'fc': 'dense', 'cast_1': 'cast', 'lm_head': 'dense'}
    """
    if not isinstance(policy, Policy):
        raise OptionError(f"apply_policy takes a Policy, got {type(policy).__name__}",
                          fix="make one with mixed_precision.create_policy(...)")
    if filter is not None and only is not None:
        raise OptionError("apply_policy takes one of filter= and only=, as Axon does",
                          fix="fold the op test into the filter function")
    where = caller_location()
    g = analyze(model)
    pick = _selection(g, filter, only, exclude, where)
    chosen = {n.id for n in g.order if n.op not in _UNCAST and pick(replace(n, name=g.name(n)))}
    out_dtype = policy.output or policy.compute  # a layer's result without an output cast

    def rewrite(n: Node, inputs: list[Node], out: Node) -> Node:
        src = n.inputs[0] if n.inputs else n
        if n.op == "cast" and not n.attrs["compute"] and src.id in chosen and src.policy:
            return inputs[0]  # an earlier policy's output cast: this one replaces it
        if n.op in ("container", "cast", "block_output") or (
                n.id not in chosen and n.policy is not None):  # an earlier policy's layer
            return out
        if n.id in chosen and n.policy is not None:  # its earlier compute casts go
            inputs = [i.inputs[0] if i.op == "cast" and i.attrs["compute"] else i
                      for i in inputs]
        compute = policy.compute if n.id in chosen else None
        ins = [_cast(i, compute, True) if compute and is_float(i.dtype) else
               _cast(i, "float32") if i.dtype in HALF else i for i in inputs]
        if n.id not in chosen:
            return out if all(a is b for a, b in zip(ins, inputs)) else rebuild(out, ins)
        y = out if n.op == "constant" else rebuild(out, ins, policy=policy)
        return _cast(y, out_dtype) if out_dtype and is_float(y.dtype) else y

    return rewrite_nodes(model, lambda n: lambda inputs, out: rewrite(n, inputs, out),
                         keep_names=True)


def _cast(x: Node, dtype: str, compute: bool = False) -> Node:
    return make_node("cast", [x], {"dtype": dtype, "compute": compute}, where=x.where)


def _selection(g: Any, filter: Any, only: Any, exclude: Any, where: str
               ) -> Callable[[Node], bool]:
    """The predicate of the layers ``apply_policy`` applies the policy to."""
    names = [g.name(n) for n in g.order if n.op not in _UNCAST]
    base: Callable[[Node], bool] = lambda n: True  # noqa: E731
    if filter is not None:
        base = match_targets(filter, g, names, "apply_policy filter", where)
    elif only is not None:
        ops = [only] if isinstance(only, str) else list(only)
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise OptionError(f"apply_policy: only= names unknown ops {unknown}",
                              fix=f"ops in this model: {sorted({n.op for n in g.order})}")
        base = lambda n: n.op in ops  # noqa: E731
    if exclude is None:
        return base
    skip = match_targets(exclude, g, names, "apply_policy exclude", where)
    return lambda n: base(n) and not skip(n)


__all__ = ["Policy", "apply_policy", "cast", "create_policy", "policy_from_json", "widened"]
