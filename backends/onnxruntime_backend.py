"""ONNX Runtime backend (``build(model, backend="onnxruntime")``), inference only.

``compile`` exports the plan with :func:`.onnx_backend.export_plan` (in memory) and runs
it in an ``onnxruntime.InferenceSession`` on the CPU. The export is made on the first
call and again on the first call after a state value the model reads is replaced (state
values are immutable, so their identity says whether the weights changed); one per set
of optional inputs a call gives (those become graph inputs; the others' default
subgraphs are exported). Inputs are checked by the compiler as on every backend; the
outputs are the NumPy backend's: arrays of the same dtypes, containers as tuples/dicts.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from graphdsl.dtypes import HALF, np_dtype
from graphdsl.errors import BackendError, GraphDSLError
from graphdsl.node import Node
from graphdsl.shapes import is_int

from .base import Backend
from .numpy_backend import convert_input
from .onnx_backend import RULES, choose_opset, export_plan

if TYPE_CHECKING:  # pragma: no cover
    from graphdsl.compiler import Plan


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    kernels = RULES  # every op with an ONNX rule runs (custom rules included)

    def compile(self, plan: Plan, threads: int = 2, opset: int | None = None,
                **options: Any) -> Callable:
        """``run(state, arrays)``; ``threads``: ONNX Runtime's intra-op threads;
        ``opset``: the export's (None: the lowest that covers the model's layers)."""
        if options:
            raise BackendError(f"the onnxruntime backend takes threads= and opset=, got "
                               f"{sorted(options)}", fix="drop the others")
        if plan.training:
            raise GraphDSLError("the onnxruntime backend runs inference only (ONNX Runtime "
                                "has no training mode here)", op="build",
                                fix="build with mode='inference', or train on "
                                    "backend='numpy' or backend='torch'")
        if plan.dtype != "float32":
            raise GraphDSLError(f"the onnxruntime backend computes in float32 (the ONNX "
                                f"export's dtype), got dtype={plan.dtype!r}", op="build",
                                fix="pass dtype='float32', or use backend='numpy'")
        if not is_int(threads) or int(threads) < 1:
            raise BackendError(f"threads must be an int >= 1, got {threads!r}",
                               fix="pass e.g. threads=2")
        opset = choose_opset(plan, opset)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        keys = sorted({(r.owner, r.name) for step in plan.steps for r in step.params})
        ins = [(name, node, np.dtype("float32" if node.dtype.startswith("float")
                                     else node.dtype)) for name, _, node in plan.inputs]
        optional = plan.graph.optional
        sessions: dict[frozenset, tuple] = {}  # given optional inputs -> (values, session)

        def run(state: Any, arrays: list) -> tuple[Any, dict]:
            data = state.data
            values = tuple(_value(data, k) for k in keys)
            given = frozenset(n for (n, _, _), a in zip(ins, arrays)
                              if a is not None and n in optional)
            hit = sessions.get(given)
            if hit is None or any(a is not b for a, b in zip(hit[0], values)):
                proto = export_plan(plan, data, opset, set(given))
                hit = sessions[given] = (values, ort.InferenceSession(
                    proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
            feed = {n: convert_input(a, dt.kind in "iu", np.dtype("float32"), n, node)
                    .astype(dt, copy=False)
                    for (n, node, dt), a in zip(ins, arrays) if a is not None}
            try:
                outs = hit[1].run(None, feed)
            except Exception as e:  # e.g. a token id out of the vocabulary
                raise GraphDSLError(f"ONNX Runtime refused the run: {e}", op="onnxruntime",
                                    fix="check the input values (token ids within the "
                                        "vocabulary)") from None
            return _rebuild(plan.graph.output, iter(outs)), {}

        return run


def _value(data: Any, key: tuple[str, str]) -> Any:
    try:
        return data[key[0]][key[1]]
    except (KeyError, TypeError):
        return None  # missing: the export's StateError says so


def _rebuild(node: Node, outs: Any) -> Any:
    """The output of ``node`` from ONNX Runtime's flat outputs, in the order of
    :func:`.onnx_backend.output_names`: containers as tuples or dicts; an output a
    policy's cast makes half precision (the export holds it in float32, rounded) as
    NumPy gives it."""
    if node.op != "container":
        y = next(outs)
        return y.astype(np_dtype(node.dtype)) if node.dtype in HALF else y
    parts = [_rebuild(x, outs) for x in node.inputs]
    keys = node.attrs["keys"]
    return dict(zip(keys, parts)) if keys is not None else tuple(parts)


BACKEND = OnnxRuntimeBackend()

__all__ = ["BACKEND", "OnnxRuntimeBackend"]
