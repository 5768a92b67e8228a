"""NumPy backend: embedded inference (and forward passes in train mode), no heavy deps.

``compile`` lays the plan out as a flat list of kernel calls over numbered slots (the
executor every backend shares, :func:`..base.plan_runner`): no graph walking per call,
each intermediate released after its last use. Kernels: :mod:`.kernels` (core and
transformer ops), :mod:`.conv` (conv, norms), :mod:`.conv_variants` (conv_transpose,
depthwise and separable convs), :mod:`.pool` (pools), one module per further family
(special, recurrent, ...) and :mod:`.adapters` (dora, lora on dense, conv and embedding
layers). Half-precision state values stay as stored and are computed in float32
(:mod:`.half`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from graphdsl.arrays import as_numpy
from graphdsl.dtypes import HALF, np_dtype
from graphdsl.errors import BackendError, InputError

from ..base import Backend, KernelContext, plan_runner, state_fetch
from . import adapters, cache, conv, conv_variants, kernels, pool, recurrent, special
from .half import upcast_fetch
from .kernels import ACTIVATIONS, FRESH_OUTPUT, IN_PLACE, inverted_dropout

if TYPE_CHECKING:  # pragma: no cover
    from graphdsl.compiler import Plan

KERNELS: dict[str, Callable] = {**kernels.KERNELS, **conv.KERNELS, **pool.KERNELS,
                                **adapters.KERNELS, **special.KERNELS, **conv_variants.KERNELS,
                                **recurrent.KERNELS, **cache.KERNELS}


def register_kernel(op: str, kernel: Callable) -> None:
    """Add the NumPy kernel of an op defined outside the core (e.g. adapters)."""
    KERNELS[op] = kernel


class NumpyBackend(Backend):
    name = "numpy"
    kernels = KERNELS

    def compile(self, plan: Plan, **options: Any) -> Callable:
        if options:
            raise BackendError(f"the numpy backend takes no options, got {sorted(options)}",
                               fix="drop them, or build(model, backend='torch', "
                                   "device='cuda') to run on a GPU")
        dtype = np.dtype(plan.dtype)
        return plan_runner(
            plan, KERNELS,
            lambda step: KernelContext(plan.training, dtype, step.name, step.op, np),
            upcast_fetch(state_fetch(plan, _state_array), dtype),
            lambda a, is_int, name, node: convert_input(a, is_int, dtype, name, node),
            lambda a: np.array(a, copy=True), then=in_place(plan))


def in_place(plan: Plan) -> dict[int, Callable]:
    """The fusions of a layer and the activation after it (``dense(x, n,
    activation="relu")``), as :func:`..base.plan_runner` takes them: an element-wise
    activation of :data:`IN_PLACE` that is the only reader of a layer's new buffer
    (:data:`FRESH_OUTPUT`) overwrites that buffer in the layer's call, so the pair costs
    what the layer costs, as the hand-written ``np.maximum(x @ k + b, 0)``."""
    readers = Counter(i for step in plan.steps for i in step.ins)
    made_by = {step.out: step.op for step in plan.steps}
    return {step.out: IN_PLACE[step.op] for step in plan.steps if step.op in IN_PLACE
            and readers[step.ins[0]] == 1 and made_by.get(step.ins[0]) in FRESH_OUTPUT}


def _state_array(arr: Any, ref: Any) -> np.ndarray:
    """A state value (any shape) as the read-only plain array kernels get, in the
    parameter's dtype; a float16/bfloat16 value of a float parameter as stored (upcast
    per kernel call: .half), one a policy reads in half precision rounded to it."""
    dt = np_dtype(ref.dtype)
    keep = arr.dtype == dt or (arr.dtype.name in HALF and ref.dtype in ("float32", "float64"))
    out = arr.view(np.ndarray) if keep else arr.astype(dt)
    out.flags.writeable = False
    return out


def convert_input(a: Any, is_int: bool, dtype: np.dtype, name: str, node: Any
                  ) -> np.ndarray:
    """Input ``name`` (any shape) as a NumPy array: int64 for an integer input (bools
    and whole-number floats accepted), else ``dtype``; fractions in an integer input are
    an InputError. The onnxruntime backend converts its inputs with it too."""
    if type(a) is not np.ndarray or not a.dtype.isnative:
        a = as_numpy(a)
    if is_int:  # bool, or floats holding whole numbers (a mask as transformers takes it)
        if a.dtype.kind == "b" or (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0)):
            return a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise InputError(f"input {name!r} holds integers (token ids, a 0/1 mask), got "
                             f"dtype {a.dtype} with fractions", layer=name, op="input",
                             where=node.where, fix="pass np.int64 values (x.astype(np.int64))")
        return a
    return a if a.dtype == dtype else a.astype(dtype)


BACKEND = NumpyBackend()

__all__ = ["ACTIVATIONS", "BACKEND", "KERNELS", "NumpyBackend", "convert_input",
           "inverted_dropout", "register_kernel"]
