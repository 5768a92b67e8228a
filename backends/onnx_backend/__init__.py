"""ONNX export (``gd.to_onnx``): a graphdsl model and its state as an ``onnx.ModelProto``.

Each layer is lowered by its op's rule in :mod:`.rules` (one table, like a backend's
``KERNELS``) through a :class:`.builder.Builder`. Graph inputs keep graphdsl's names and
dtypes (None axes are dynamic); weights are initializers named ``layer.param``; the
outputs are the model's output, or one per container element (see
:func:`output_names`). Adapters export merged (one kernel each: the dense, conv or
embedding layer they adapt). An optional
input (``gd.optional``) is a graph input only when asked (``optional_inputs``); else
its default subgraph is exported in its place.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper

from graphdsl.compiler import make_plan
from graphdsl.dtypes import HALF, dtype_name, float_name
from graphdsl.errors import GraphDSLError, OptionError
from graphdsl.mixed_precision import widened
from graphdsl.node import Node
from graphdsl.state import ModelState

from .builder import Builder, prune
from .rules import FLOOR, RULES, Layer, custom_min_opset

_LARGE = 1_800_000_000  # bytes of weights beyond which a file keeps them in a side file


def _step_min_opset(step: Any) -> int:
    if step.op == "custom":
        return max(FLOOR, custom_min_opset(step.attrs["fn"]))
    return RULES[step.op].min_opset


def choose_opset(plan: Any, opset: int | None) -> int:
    """The export opset: ``opset`` checked against every layer's rule, or (None) the
    lowest that covers them all."""
    newest = onnx.defs.onnx_opset_version()
    for step in plan.steps:
        if step.op not in RULES:
            raise plan.step_error(step, f"op {step.op!r} has no ONNX rule",
                                  "add one to graphdsl.backends.onnx_backend.rules.RULES",
                                  cls=GraphDSLError)
    need = {s.name: _step_min_opset(s) for s in plan.steps}
    if opset is None:
        return max([FLOOR, *need.values()])
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise OptionError(f"opset must be an int, got {opset!r}", op="to_onnx",
                          fix="pass e.g. opset=17, or opset=None for the lowest that works")
    opset = int(opset)
    if opset > newest:
        raise OptionError(f"opset {opset} is newer than this onnx package knows ({newest})",
                          op="to_onnx", fix=f"pass opset <= {newest}, or upgrade onnx")
    for step in plan.steps:
        if need[step.name] > opset:
            raise plan.step_error(
                step, f"ONNX opset {opset} is too low: layer {step.name!r} (op {step.op}) "
                      f"needs opset >= {need[step.name]}",
                f"pass opset >= {max(need.values())} (or opset=None)", cls=OptionError)
    return opset


def output_names(plan: Any) -> list[tuple[str, Node]]:
    """``[(output name, node)]`` in the order ONNX Runtime returns them: the output
    layer's name; for a container, each element named by its dict key or (tuple) its
    layer name, nested elements prefixed with ``"parent."``; repeats get a suffix."""
    g = plan.graph
    out: list[tuple[str, Node]] = []

    def walk(node: Node, label: str, prefix: str) -> None:
        if node.op != "container":
            out.append((prefix + label, node))
            return
        keys = node.attrs["keys"]
        inner = prefix + label + "." if prefix or node is not g.output else ""
        for i, x in enumerate(node.inputs):
            walk(x, keys[i] if keys is not None else g.name(x), inner)

    walk(g.output, g.name(g.output), "")
    return out


def _dims(shape: Sequence[Any], name: str) -> list[Any]:
    return [f"{name}_dim{i}" if d is None else d for i, d in enumerate(shape)]


def _kept_optional(g: Any, optional_inputs: bool | Sequence[str]) -> set[str]:
    if optional_inputs is True:
        return set(g.optional)
    if optional_inputs is False or optional_inputs is None:
        return set()
    names = [optional_inputs] if isinstance(optional_inputs, str) else list(optional_inputs)
    bad = sorted(set(names) - set(g.optional))
    if bad:
        raise OptionError(f"optional_inputs names {bad}, which are not optional inputs of "
                          "this model", op="to_onnx",
                          fix=f"use some of {sorted(g.optional) or 'none (the model has no '}"
                              f"{'' if g.optional else 'optional inputs)'}")
    return set(names)


def _layer(plan: Any, step: Any, tensors: dict, data: Any, b: Builder,
           weights: dict) -> Layer:
    # a policy's half-precision compute dtype: the values rounded to it, held in float32
    arrays = {ref.local: widened(v, ref.dtype) if ref.dtype in HALF else v for ref, v in (
        (ref, plan.param_value(step, i, data)) for i, ref in enumerate(step.params))}
    owners = {r.local: (r.owner, r.name) for r in step.params}

    def param(local: str) -> str:
        key = owners[local]
        if key not in weights:
            weights[key] = b.weight(np.asarray(arrays[local]), f"{key[0]}.{key[1]}")
        return weights[key]

    ins = step.node.inputs
    return Layer(step.name, step.op, step.node, [tensors[i] for i in step.ins],
                 [x.shape for x in ins], [x.dtype for x in ins], step.attrs,
                 step.node.shape, step.node.dtype, arrays, param)


def to_onnx(model: Node, state: ModelState, path: str | os.PathLike | None = None,
            opset: int | None = None, *, optional_inputs: bool | Sequence[str] = False,
            kv_cache: bool = False, dtype: str | None = None) -> onnx.ModelProto:
    """Export ``model`` with the weights of ``state`` as an ONNX model.

    ``dtype`` (float32, float16, bfloat16; None: the half dtype of the state's float
    values if it has one, else float32): the dtype of every float weight, graph input and
    output and of the computation, except norms, the attention softmax and rotary angles,
    computed in float32 as transformers does; adapters are merged in float32 first.
    bfloat16 is refused when ONNX Runtime's CPU provider (when installed) has no bfloat16
    kernel for an op of the graph (1.32 has none for MatMul, Add, Mul).

    Inputs keep their names, dtypes and shapes (each None axis dynamic); outputs are
    named as :func:`output_names` says. ``opset`` None: the lowest opset that covers the
    model's layers (13 unless a rule needs more); a lower one is an error naming the
    layer. ``optional_inputs``: the optional inputs (``gd.optional``) to export as graph
    inputs (True: all); the others are left out and their default subgraph is exported
    (e.g. positions computed from ``input_ids``). ``path``: also write the file (weights
    over ~1.8 GB go to ``path + ".data"`` beside it). Returns the ``ModelProto``.

    ``kv_cache=True`` (causal LMs): the decode step :func:`graphdsl.generate.decoder`
    with optimum's names and axes (:func:`_as_optimum`): inputs ``input_ids`` and
    ``position_ids [batch_size, sequence_length]``, ``attention_mask [batch_size,
    past_sequence_length + sequence_length]``, ``past_key_values.{i}.key|value
    [batch_size, kv_heads, past_sequence_length, head_dim]``; outputs ``logits
    [batch_size, sequence_length, vocab]`` and ``present.{i}.key|value`` (the past and
    the new keys/values on axis 2). Prefill: a past of length 0.
    """
    if not isinstance(model, Node):
        raise GraphDSLError(f"to_onnx needs a model (a graph node), got "
                            f"{type(model).__name__}", op="to_onnx",
                            fix="pass the output node of the model")
    if not isinstance(state, ModelState):
        raise GraphDSLError(f"to_onnx needs a ModelState, got {type(state).__name__}",
                            op="to_onnx", fix="pass the state init_fn returned")
    if not isinstance(kv_cache, bool):
        raise OptionError(f"kv_cache must be True or False, got {kv_cache!r}", op="to_onnx",
                          fix="pass kv_cache=True for a causal LM's decode step")
    if kv_cache:
        from graphdsl.generate import decoder
        model = decoder(model)  # a GraphDSLError for a model that is not a causal LM
    plan = make_plan(model)
    dtype = export_dtype(state, dtype)
    proto = export_plan(plan, state.data, choose_opset(plan, opset),
                        _kept_optional(plan.graph, optional_inputs), dtype)
    if dtype == "bfloat16":
        _check_bfloat16(proto)
    if kv_cache:
        _as_optimum(proto)
    if path is not None:
        save_model(proto, os.fspath(path))
    return proto


_TOTAL = "past_sequence_length + sequence_length"
_AXES = {"input_ids": ("batch_size", "sequence_length"),
         "position_ids": ("batch_size", "sequence_length"),
         "attention_mask": ("batch_size", _TOTAL),
         "logits": ("batch_size", "sequence_length"),
         "past_key_values": ("batch_size", None, "past_sequence_length"),
         "present": ("batch_size", None, _TOTAL)}


def _as_optimum(proto: onnx.ModelProto) -> None:
    """Rename a decoder's cache inputs as optimum does (``past_key_values_0_key`` ->
    ``past_key_values.0.key``), order the inputs as optimum does (ids, mask, positions,
    then the cache by layer) and name the dynamic axes as optimum does (``_AXES``)."""
    from graphdsl.generate import optimum_name

    g = proto.graph
    first = ("input_ids", "attention_mask", "position_ids")
    ordered = sorted(g.input, key=lambda v: first.index(v.name) if v.name in first else 3)
    ordered = [type(v).FromString(v.SerializeToString()) for v in ordered]
    del g.input[:]
    g.input.extend(ordered)
    renamed = {v.name: optimum_name(v.name) for v in g.input}
    for node in g.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
    for v in [*g.input, *g.output]:
        v.name = renamed.get(v.name, v.name)
        axes = _AXES.get(v.name.split(".")[0], ())  # other inputs keep their own names
        for dim, label in zip(v.type.tensor_type.shape.dim, axes):
            if label is not None:
                dim.dim_param = label


def export_dtype(state: ModelState, dtype: str | None) -> str:
    """The float dtype of an export (see :func:`to_onnx`'s ``dtype``)."""
    if dtype is None:
        half = {dtype_name(v.dtype) for layer in state.data.values() for v in layer.values()
                if dtype_name(v.dtype) in HALF}
        if len(half) > 1:
            raise OptionError("the state holds both float16 and bfloat16 values",
                              op="to_onnx", fix="pass dtype='float16' (or 'float32')")
        return half.pop() if half else "float32"
    name = float_name(dtype)
    if name not in ("float32", *HALF):
        raise OptionError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}",
                          op="to_onnx", fix="pass dtype='float16', or None for the state's")
    return name


def _check_bfloat16(proto: onnx.ModelProto) -> None:
    """A GraphDSLError naming the first op ONNX Runtime's CPU provider cannot run in
    bfloat16 (it says so when a session is made); nothing when ONNX Runtime is absent."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    g = proto.graph  # the weights as graph inputs: the same kernels chosen, no copy made
    weights = [t for t in g.initializer if len(t.raw_data) > 1024]
    graph = helper.make_graph(g.node, g.name, [*g.input, *(helper.make_tensor_value_info(
        t.name, t.data_type, t.dims) for t in weights)], g.output,
        [t for t in g.initializer if len(t.raw_data) <= 1024])
    light = helper.make_model(graph, opset_imports=proto.opset_import,
                              ir_version=proto.ir_version)
    try:
        ort.InferenceSession(light.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own NotImplemented, Fail, ...
        found = re.search(r"implementation for (\w+)\(\d+\) node with name '([^'/]*)", str(e))
        if found is None:
            raise
        raise GraphDSLError(f"ONNX Runtime's CPU provider has no bfloat16 kernel for "
                            f"{found[1]} (layer {found[2]!r}), so this bfloat16 export "
                            "cannot run there", layer=found[2], op="to_onnx",
                            fix="export float16 (dtype='float16'), or float32 "
                                "(dtype='float32' or state.astype('float32'))") from None


def _name_outputs(b: Builder, values: list[str], names: list[str], inputs: list[str]
                  ) -> None:
    """Give each graph output its name: the node making the value writes it under that
    name (an ``Identity`` would copy it on every run: a decoder's presents are the whole
    cache); a graph input, a weight or a value already named for another output goes
    through an ``Identity``. Nothing is renamed when a node holds a subgraph, whose body
    may read a value by its outer name."""
    made = {o for n in b.nodes for o in n.output}
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                 for n in b.nodes for a in n.attribute)
    renamed: dict[str, str] = {}
    for value, name in zip(values, names):
        if nested or value not in made or value in renamed or value in inputs:
            b.op("Identity", [renamed.get(value, value)], [name])
        else:
            renamed[value] = name
    for n in b.nodes:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]


def export_plan(plan: Any, data: Any, opset: int, kept: set[str],
                dtype: str = "float32") -> onnx.ModelProto:
    """The ``ModelProto`` of ``plan`` with the weights of ``data`` (``state.data``) at
    ``opset`` (checked by :func:`choose_opset`); ``kept``: the optional inputs exported as
    graph inputs (the others' default subgraphs are exported in their place); ``dtype``:
    the float dtype it computes in (:func:`export_dtype`)."""
    g = plan.graph
    outs = output_names(plan)
    in_names = [name for name, _, _ in plan.inputs]
    b = Builder(opset, reserved=in_names, dtype=dtype)
    out_names = [b.fresh(name) for name, _ in outs]
    tensors: dict[int, Any] = {}
    graph_inputs = []
    for name, slot, node in plan.inputs:
        if name in g.optional and name not in kept:
            tensors[slot] = None
            continue
        graph_inputs.append(helper.make_tensor_value_info(name, b.elem(node.dtype),
                                                          _dims(node.shape, name)))
        b.layer = name
        tensors[slot] = RULES["input"].fn(b, Layer(name, "input", node, [name], [],
                                                   [], node.attrs, node.shape, node.dtype))
    weights: dict = {}
    for step in plan.steps:
        b.layer = step.name
        layer = _layer(plan, step, tensors, data, b, weights)
        tensors[step.out] = RULES[step.op].fn(b, layer)
    slot_of = {n.id: i for i, n in enumerate(g.order)}
    graph_outputs = []
    b.layer = "output"
    _name_outputs(b, [tensors[slot_of[node.id]] for _, node in outs], out_names, in_names)
    for (_, node), oname in zip(outs, out_names):
        graph_outputs.append(helper.make_tensor_value_info(oname, b.elem(node.dtype),
                                                           list(node.shape)))
    nodes, inits = prune(b.nodes, b.initializers, out_names)
    graph = helper.make_graph(nodes, "graphdsl", graph_inputs, graph_outputs, inits)
    ops = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=ops, producer_name="graphdsl")
    proto.ir_version = helper.find_min_ir_version_for(ops)
    return proto


def is_large(proto: onnx.ModelProto) -> bool:
    """Whether the weights are too large for one protobuf (2 GB): saved beside the file."""
    return sum(len(t.raw_data) for t in proto.graph.initializer) > _LARGE


def save_model(proto: onnx.ModelProto, path: str) -> None:
    """Write ``proto`` to ``path``; weights over ~1.8 GB (:func:`is_large`) go to
    ``path + ".data"`` beside it. Atomic per file: each is written in a temporary folder
    beside ``path`` and moved over the old one, so a second export to the same path
    replaces the side file; a side file left by an earlier large export is removed when
    this one has none."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if not os.path.isdir(folder) or os.path.isdir(path):
        raise GraphDSLError(f"cannot write the ONNX file {path!r}: "
                            + ("it is a folder" if os.path.isdir(path) else
                               f"folder {folder!r} does not exist"), op="to_onnx",
                            fix="pass a file path in an existing folder")
    side, tmp = path + ".data", tempfile.mkdtemp(prefix=f".{name}.", dir=folder)
    try:
        if is_large(proto):  # moving the data out changes the proto, so move a copy's
            proto = _externalized(proto, os.path.join(tmp, "data"), name + ".data")
            os.replace(os.path.join(tmp, "data"), side)
        elif os.path.exists(side):
            os.remove(side)
        onnx.save_model(proto, os.path.join(tmp, "model"))
        os.replace(os.path.join(tmp, "model"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _externalized(proto: onnx.ModelProto, file: str, location: str) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers of 1 KiB or more are written to ``file``
    (new), to be read as ``location`` beside the model. onnx's own writer cannot be used:
    it refuses a ``location`` that exists relative to the working folder, or appends."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    with open(file, "wb") as f:
        for t in copy.graph.initializer:
            if len(t.raw_data) >= 1024:
                external_data_helper.set_external_data(t, location, f.tell(), len(t.raw_data))
                f.write(t.raw_data)
                t.ClearField("raw_data")
    return copy


__all__ = ["RULES", "choose_opset", "export_plan", "output_names", "is_large", "save_model",
           "to_onnx"]
