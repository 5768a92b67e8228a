"""The ONNX graph under construction: nodes, initializers and unique tensor names.

Rules (:mod:`.rules`) and custom-layer rules emit ONNX nodes through a :class:`Builder`;
its helpers hide what changes between opsets (reduce axes as an attribute before opset
18, as an input from 18) and give dynamic sizes as 1-D int64 tensors.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphdsl.dtypes import is_float, np_dtype

#: graphdsl dtype -> ONNX element type (float64 values are computed in float32)
ELEM = {"float32": TensorProto.FLOAT, "float64": TensorProto.FLOAT,
        "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
        "int32": TensorProto.INT32, "int64": TensorProto.INT64}
INT64_MAX = np.iinfo(np.int64).max
_REDUCE_AXES_INPUT = {"ReduceSum": 13}  # the others take axes as an input from opset 18


class Builder:
    """Collects ONNX nodes and initializers for one export at ``opset``.

    ``layer`` is the graphdsl layer being lowered: it prefixes the names of the tensors
    and nodes a rule creates, so the ONNX graph reads like the graphdsl one. ``dtype``:
    the float dtype the graph computes in (float32, float16, bfloat16): every float
    tensor, weight and constant has it unless a rule asks for float32 (:meth:`f32`).
    """

    def __init__(self, opset: int, reserved: Sequence[str] = (), dtype: str = "float32") -> None:
        self.opset = opset
        self.dtype = dtype
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}
        self.used: set[str] = set(reserved)
        self.layer = "graph"
        self._consts: dict[tuple, str] = {}

    def fresh(self, base: str) -> str:
        """A tensor name not used yet: ``base`` itself when free, else ``base_1``, ..."""
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
           **attrs: Any) -> Any:
        """Add node ``op_type(inputs, **attrs)``; returns its output name (a list when
        ``outputs`` > 1 or a list of names is given). Empty input names skip an input."""
        outs = ([self.fresh(f"{self.layer}/{op_type}") for _ in range(outputs)]
                if isinstance(outputs, int) else list(outputs))
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.fresh(f"{self.layer}/{op_type}#"),
                                           **attrs))
        return outs[0] if isinstance(outputs, int) and outputs == 1 else outs

    def elem(self, dtype: str) -> int:
        """The ONNX element type of graphdsl ``dtype`` in this export (floats: ``self.dtype``)."""
        return ELEM[self.dtype if is_float(dtype) else dtype]

    def weight(self, array: np.ndarray, name: str) -> str:
        """An initializer holding ``array`` (a weight; float arrays stored in ``self.dtype``)."""
        arr = np.asarray(array)
        if is_float(arr.dtype):
            arr = arr.astype(np_dtype(self.dtype), copy=False)
        return self._initializer(arr, name)

    def _initializer(self, arr: np.ndarray, name: str) -> str:
        name = self.fresh(name)
        self.initializers[name] = numpy_helper.from_array(np.array(arr, order="C"), name)
        return name

    def const(self, value: Any, dtype: str | None = None) -> str:
        """A small constant initializer (``dtype``: int64, float32, or None for the
        export's float dtype), shared by equal values."""
        arr = np.asarray(value, dtype=np_dtype(dtype or self.dtype))
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self._initializer(arr, f"{self.layer}/const")
        return self._consts[key]

    def full(self, shape: str, value: float = 0.0, dtype: str | None = None) -> str:
        """A tensor of ``shape`` (a 1-D int64 tensor) filled with ``value``, of ``dtype``
        (None: the export's float dtype)."""
        arr = np.full([1], value, np_dtype(dtype or self.dtype))
        return self.op("ConstantOfShape", [shape], value=numpy_helper.from_array(arr, "value"))

    def f32(self, x: str) -> str:
        """Float tensor ``x`` in float32 (no node in a float32 export): for what half
        precision loses, as transformers computes norms, softmax and rotary angles."""
        return x if self.dtype == "float32" else self.op("Cast", [x], to=TensorProto.FLOAT)

    def narrow(self, x: str) -> str:
        """Float32 tensor ``x`` back in the export's float dtype (the inverse of :meth:`f32`)."""
        return x if self.dtype == "float32" else self.op("Cast", [x], to=ELEM[self.dtype])

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (shapes, axes, starts)."""
        return self.const(list(values), "int64")

    def cast(self, x: str, have: str, want: str) -> str:
        """``x`` (graphdsl dtype ``have``) as dtype ``want`` (no node if they agree)."""
        if self.elem(have) == self.elem(want):
            return x
        return self.op("Cast", [x], to=self.elem(want))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """``op_type`` (ReduceMean, ReduceSum, ReduceMax) over ``axes``, in the form the
        export's opset takes."""
        if self.opset >= _REDUCE_AXES_INPUT.get(op_type, 18):
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes)])

    def dim(self, x: str, axis: int, static: int | None = None) -> str:
        """The size of ``x`` on ``axis`` as a 1-D int64 tensor of one element: a constant
        when ``static`` is known, else read from ``Shape(x)`` at run time."""
        if static is not None:
            return self.ints([static])
        return self.op("Gather", [self.op("Shape", [x]), self.ints([axis])], axis=0)

    def reshape(self, x: str, parts: Sequence[int | str]) -> str:
        """``x`` reshaped to ``parts``: ints (0 keeps x's size) or 1-D int64 tensors. A
        run-time shape goes through an Abs (sizes are >= 0) so that ONNX Runtime's reshape
        fusion cannot turn a computed size into -1, which fails on an empty tensor; from
        opset 14 it is read with allowzero=1 (a computed 0 is a 0, not "keep x's size")."""
        if all(isinstance(p, int) for p in parts):
            return self.op("Reshape", [x, self.ints(parts)])
        zero = {"allowzero": 1} if self.opset >= 14 else {}
        if zero:
            parts = [self.dim(x, i) if p == 0 else p for i, p in enumerate(parts)]
        shape = self.op("Concat", [p if isinstance(p, str) else self.ints([p]) for p in parts],
                        axis=0)
        return self.op("Reshape", [x, self.op("Abs", [shape])], **zero)

    def refuse(self, x: str, when: str) -> str:
        """``x`` (float), with the run refused where the boolean ``when [1]`` is true: ONNX
        has no exceptions, so a Gather out of bounds (ONNX Runtime: "indices element out
        of data bounds") computes the 0 added to ``x``."""
        flag = self.op("Cast", [when], to=TensorProto.INT64)
        return self.op("Add", [x, self.op("Gather", [self.const([0.0]), flag], axis=0)])

    def slice(self, x: str, start: int | str, stop: int | str | None, axis: int) -> str:
        """``x[start:stop]`` on ``axis``; bounds are ints or 1-D int64 tensor names."""
        def bound(v: int | str | None, default: int) -> str:
            return v if isinstance(v, str) else self.ints([default if v is None else v])
        return self.op("Slice", [x, bound(start, 0), bound(stop, INT64_MAX),
                                 self.ints([axis])])


def prune(nodes: list[Any], initializers: dict[str, Any], outputs: Sequence[str]
          ) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers the ``outputs`` depend on (e.g. an optional input's
    default subgraph is dropped when the input is exported), in their order."""
    need = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    keep.reverse()
    return keep, [t for name, t in initializers.items() if name in need]
