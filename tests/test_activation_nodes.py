"""Activations are nodes, as in Axon: ``gd.dense(x, 10, activation="relu")`` is a dense
node followed by a relu node (Axon's ``dense``/``conv``/... end with ``activation(node,
activation)``), so get_op_counts, map_nodes and rewrite_nodes see Axon's graph.

References: Axon's test/axon_test.exs ("works with activation": the output node is the
activation, its parent the layer), the get_op_counts doctests of lib/axon.ex, and the
"graph manipulation" tests of test/axon/compiler_test.exs (rewrite_nodes: skip, relu ->
tanh, the residual rewriter on :dense, removing layers), whose expected values are
written out here in NumPy from the layer's own weights. Files written while activations
were fused into the layer (tests/golden/fused_act_v2.*, saved before the change by the
code of commit 2cdb8e3) load into the two-node form with the outputs they gave then.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import export_and_run

import graphdsl as gd
from graphdsl import dora, lora
from graphdsl.compiler import make_plan

GOLDEN = Path(__file__).parent / "golden"
ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
ONES = np.ones((1, 10), np.float32)  # Axon's Nx.broadcast(1, {1, 10})


def _dense(x: np.ndarray, st: gd.ModelState, name: str = "dense_0") -> np.ndarray:
    return x @ st.data[name]["kernel"] + st.data[name]["bias"]  # Axon.Layers.dense


def _relu(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0)


def _run(model: gd.Node, x: np.ndarray, seed: int = 0) -> tuple[gd.ModelState, list]:
    """The state of ``model`` and its outputs for ``x`` on NumPy and torch."""
    st = gd.build(model, seed=seed)[0](x)
    return st, [np.asarray(gd.predict(model, st, x, backend=b)) for b in ("numpy", "torch")]


# -- Axon's graph: axon_test.exs "works with activation" -----------------------------------
def _axon_layers():
    return {
        "dense": lambda act: gd.dense(gd.input("input", (None, 784)), 128, activation=act),
        "conv": lambda act: gd.conv(gd.input("input", (None, 1, 28, 28)), 64, activation=act),
        "conv_transpose": lambda act: gd.conv_transpose(gd.input("input", (None, 1, 28, 28)),
                                                        64, activation=act),
        "depthwise_conv": lambda act: gd.depthwise_conv(gd.input("input", (None, 1, 28, 28)),
                                                        64, activation=act),
        "separable_conv2d": lambda act: gd.separable_conv2d(
            gd.input("input", (None, 3, 28, 28)), 3, activation=act),
        "separable_conv3d": lambda act: gd.separable_conv3d(
            gd.input("input", (None, 3, 2, 28, 28)), 3, activation=act),
        "dora": lambda act: dora.dora_layer(gd.input("input", (None, 784)), 784, 128,
                                            activation=act),
        "lora": lambda act: lora.lora_layer(gd.input("input", (None, 784)), 784, 128,
                                            activation=act),
    }


@pytest.mark.parametrize("op", list(_axon_layers()))
def test_works_with_activation(op):
    """Axon: ``%Axon.Node{op: :relu, parent: [_]} = nodes[id]``: the model's output is the
    relu node, whose one parent is the layer (with no activation of its own)."""
    y = _axon_layers()[op]("relu")
    assert y.op == "relu" and len(y.inputs) == 1 and y.attrs == {}
    layer = y.inputs[0]
    assert layer.op == op and "activation" not in layer.attrs
    assert gd.get_op_counts(y) == {"input": 1, op: 1, "relu": 1}
    plain = _axon_layers()[op](None)
    assert plain.op == op and gd.get_op_counts(plain) == {"input": 1, op: 1}
    assert y.shape == plain.shape


def test_get_op_counts_as_axon():
    """lib/axon.ex's doctests, and the same with ``activation:``: one node more."""
    x = gd.input("input", (None, 1))
    assert gd.get_op_counts(gd.dense(x, 2)) == {"input": 1, "dense": 1}
    assert gd.get_op_counts(gd.tanh(gd.tanh(x))) == {"input": 1, "tanh": 2}
    mlp = gd.dense(gd.dense(x, 4, activation="relu"), 2, activation="softmax")
    assert gd.get_op_counts(mlp) == {"input": 1, "dense": 2, "relu": 1, "softmax": 1}
    assert gd.reduce_nodes(mlp, 0, lambda n, k: k + (n.op == "relu")) == 1


def test_default_names_as_axon():
    """Axon names the activation by its op's default name: ``dense_0`` then ``relu_0``
    (the state keys of compiler_test's ``"dense_0" => %{"kernel", "bias"}``); an explicit
    layer name stays the layer's."""
    y = gd.dense(gd.dense(gd.input("x", (None, 10)), 10, activation="relu"), 3,
                 activation="relu", name="head")
    g = gd.graph.analyze(y)
    assert [g.name(n) for n in g.order] == ["x", "dense_0", "relu_0", "head", "relu_1"]
    st = gd.build(y)[0](ONES)
    assert sorted(st.data) == ["dense_0", "head"]


def test_activation_options_and_errors():
    """An unknown activation names the layer and its op; a reducing activation is a node
    like any (Axon accepts any activation atom): log_sumexp keeps its axis of size 1."""
    x = gd.input("x", (None, 6))
    with pytest.raises(gd.GraphDSLError) as e:
        gd.dense(x, 3, activation="rleu", name="fc")
    msg = str(e.value)
    assert "unknown activation 'rleu'" in msg and "'fc'" in msg and "(op dense)" in msg
    assert "test_activation_nodes.py" in msg and "relu" in e.value.fix
    with pytest.raises(gd.GraphDSLError, match="unknown activation"):
        gd.conv(gd.input("i", (None, 4, 4, 1)), 2, activation=3)
    y = gd.dense(x, 3, activation="log_sumexp", name="fc")
    assert y.op == "log_sumexp" and y.shape == (None, 1)
    v = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    st, outs = _run(y, v)
    h = _dense(v, st, "fc")
    ref = np.log(np.exp(h).sum(-1, keepdims=True))
    for out in outs:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # the options a fused activation used are the activation node's defaults
    assert gd.dense(x, 3, activation="leaky_relu").attrs == {"alpha": 0.01}
    assert gd.dense(x, 3, activation="gelu").attrs == {"approximate": False}


# -- Axon's compiler_test.exs "graph manipulation" ----------------------------------------
def test_rewrite_nodes_does_nothing_if_all_rewrites_are_skip():
    model = gd.rewrite_nodes(gd.dense(gd.input("x", (None, 10)), 10, activation="relu"),
                             lambda n: None)
    st, outs = _run(model, ONES)
    for out in outs:
        np.testing.assert_allclose(out, _relu(_dense(ONES, st)), rtol=1e-6, atol=1e-6)


def test_rewrite_nodes_applies_simple_rewriters():
    """``%Axon.Node{op: :relu} -> fn [x], _ -> Axon.tanh(x)``: tanh(dense(x))."""
    model = gd.rewrite_nodes(gd.dense(gd.input("x", (None, 10)), 10, activation="relu"),
                             lambda n: (lambda ins, out: gd.tanh(ins[0]))
                             if n.op == "relu" else None)
    assert gd.get_op_counts(model) == {"input": 1, "dense": 1, "tanh": 1}
    st, outs = _run(model, ONES)
    for out in outs:
        np.testing.assert_allclose(out, np.tanh(_dense(ONES, st)), rtol=1e-6, atol=1e-6)


def test_rewrite_nodes_applies_residual_rewriter():
    """``%Axon.Node{op: :dense} -> fn [x], out -> Axon.add(x, out)``: the residual goes
    between the dense and its relu: relu(dense(x) + x) — what a fused activation could
    not give (it would be relu(dense(x)) + x)."""
    model = gd.rewrite_nodes(gd.dense(gd.input("x", (None, 10)), 10, activation="relu"),
                             lambda n: (lambda ins, out: gd.add(ins[0], out))
                             if n.op == "dense" else None)
    x = np.linspace(-2, 2, 10, dtype=np.float32)[None]  # and Axon's ones
    for v in (ONES, x):
        st, outs = _run(model, v)
        ref = _relu(_dense(v, st) + v)
        assert np.abs(ref - (_relu(_dense(v, st)) + v)).max() > 0.1 or v is ONES
        for out in outs:
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_rewrite_nodes_properly_removes_layers():
    x = gd.input("x", (None, 10))
    relu_tanh_input = gd.tanh(gd.relu(x))
    model = gd.add(gd.relu(gd.relu(gd.tanh(gd.tanh(gd.relu(gd.tanh(gd.relu(x))))))),
                   relu_tanh_input)
    model = gd.rewrite_nodes(model, lambda n: (lambda ins, out: ins[0])
                             if n.op == "relu" else None)
    v = np.linspace(-3, 3, 10, dtype=np.float32)[None]
    ref = np.tanh(np.tanh(np.tanh(v))) + np.tanh(v)
    for b in ("numpy", "torch"):
        np.testing.assert_allclose(gd.predict(model, gd.ModelState.empty(), v, backend=b),
                                   ref, rtol=1e-6, atol=1e-6)


def test_map_nodes_replaces_relu_with_tanh():
    """lib/axon.ex's map_nodes example: every relu layer becomes a tanh layer."""
    x = gd.input("x", (None, 10))
    model = gd.dense(gd.dense(x, 6, activation="relu", name="a"), 4, activation="relu",
                     name="b")
    mapped = gd.map_nodes(model, lambda n: gd.tanh(n.inputs[0]) if n.op == "relu" else n)
    assert gd.get_op_counts(mapped) == {"input": 1, "dense": 2, "tanh": 2}
    v = np.linspace(-2, 2, 20, dtype=np.float32).reshape(2, 10)
    st, outs = _run(mapped, v)
    ref = np.tanh(_dense(np.tanh(_dense(v, st, "a")), st, "b"))
    for out in outs:
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


# -- every constructor: the pair computes act(layer(x)) ---------------------------------------
@pytest.mark.parametrize("op,act", [("dense", "relu"), ("conv", "tanh"),
                                    ("conv_transpose", "sigmoid"), ("depthwise_conv", "elu"),
                                    ("separable_conv2d", "softmax"), ("dora", "gelu"),
                                    ("lora", "leaky_relu")])
def test_layer_then_activation_values(op, act):
    """The model with ``activation=`` gives the activation (its default options) of the
    model without it, on the same weights, on NumPy, torch and ONNX Runtime."""
    small = {
        "dense": lambda a: gd.dense(gd.input("x", (None, 5)), 4, activation=a, name="L"),
        "conv": lambda a: gd.conv(gd.input("x", (None, 5, 5, 2)), 3, 3, activation=a,
                                  channels="last", name="L"),
        "conv_transpose": lambda a: gd.conv_transpose(gd.input("x", (None, 4, 4, 2)), 3, 2,
                                                      strides=2, activation=a, name="L"),
        "depthwise_conv": lambda a: gd.depthwise_conv(gd.input("x", (None, 2, 5, 5)), 2, 3,
                                                      channels="first", activation=a,
                                                      name="L"),
        "separable_conv2d": lambda a: gd.separable_conv2d(gd.input("x", (None, 5, 5, 2)), 2,
                                                          (2, 3), activation=a, name="L"),
        "dora": lambda a: dora.dora_layer(gd.input("x", (None, 5)), 5, 4, rank=2,
                                          activation=a, name="L"),
        "lora": lambda a: lora.lora_layer(gd.input("x", (None, 5)), 5, 4, rank=2,
                                          activation=a, name="L"),
    }[op]
    model, plain = small(act), small(None)
    assert model.op == act and model.inputs[0].op == op == plain.op
    shape = tuple(4 if d is None else d for d in gd.get_inputs(model)["x"])
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    st = gd.build(plain, seed=1)[0](x)
    h = np.asarray(gd.predict(plain, st, x))
    ref = np.asarray(gd.predict(gd.activation(gd.input("h", h.shape), act),
                                gd.ModelState.empty(), h, backend="torch"))
    assert np.abs(ref - h).max() > 1e-3  # the activation changes the values
    outs = [gd.predict(model, st, x, backend=b) for b in ("numpy", "torch")]
    if ONNX:
        outs.append(export_and_run(model, st, {"x": x})[0][0])
    for out in outs:
        np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=2e-6)


def test_numpy_runs_the_activation_in_place_only_on_a_buffer_of_its_own():
    """The NumPy plan fuses a dense/conv and the element-wise activation that is its only
    reader (the activation overwrites the layer's new buffer); where another layer also
    reads the layer's output (here a view of it, by reshape), the activation gets a new
    buffer and the other reader still sees the values before the activation."""
    from graphdsl.backends.numpy_backend import in_place

    x = gd.input("x", (None, 4))
    h = gd.dense(x, 6, name="fc")
    shared = gd.container([gd.reshape(h, (None, 2, 3)), gd.relu(h), gd.tanh(
        gd.dense(x, 6, activation="relu", name="fc2"))])
    plan = make_plan(shared)
    fused = in_place(plan)
    # fc2's relu; not fc's relu (two readers), not the tanh (its input is a relu)
    assert [s.op for s in plan.steps if s.out in fused] == ["relu"]
    v = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    st = gd.build(shared)[0](v)
    r, a, t = gd.predict(shared, st, v)
    hv = _dense(v, st, "fc")
    assert (hv < 0).any()
    np.testing.assert_allclose(r, hv.reshape(3, 2, 3), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, _relu(hv), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t, np.tanh(_relu(_dense(v, st, "fc2"))), rtol=1e-6, atol=1e-6)
    mlp = gd.dense(gd.dense(x, 8, activation="relu"), 3, activation="sigmoid")
    fused = in_place(p := make_plan(mlp))
    assert [s.op for s in p.steps if s.out in fused] == ["relu", "sigmoid"]
    st, (got, ref) = _run(mlp, v)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-_dense(_relu(_dense(v, st)), st,
                                                            "dense_1"))), rtol=1e-6)


def test_the_fused_pair_keeps_the_layers_state_updates():
    """A LoRA layer with dropout in train mode returns its new dropout key (Stateful); fused
    with the relu after it, the pair still gives the key and relu of the same output."""
    x = gd.input("x", (None, 5))
    with_act = lora.lora_layer(x, 5, 4, rank=2, dropout=0.5, activation="relu", name="L")
    plain = lora.lora_layer(x, 5, 4, rank=2, dropout=0.5, name="L")
    from graphdsl.backends.numpy_backend import in_place

    assert len(in_place(make_plan(with_act, mode="train"))) == 1
    v = np.random.default_rng(6).normal(size=(8, 5)).astype(np.float32)
    st = gd.build(plain, seed=4)[0](v)
    st.data["L"]["B"] = np.random.default_rng(7).normal(size=(2, 4)).astype(np.float32)
    got = gd.build(with_act, mode="train")[1](st, v)
    ref = gd.build(plain, mode="train")[1](st, v)
    np.testing.assert_array_equal(got["prediction"], _relu(ref["prediction"]))
    assert got["state"].data["L"]["key"] == ref["state"].data["L"]["key"] != st.data["L"]["key"]


# -- adapters on a layer with an activation node -----------------------------------------------
@pytest.mark.parametrize("mod", [dora, lora])
def test_adapt_merge_and_export_keep_the_activation_node(mod):
    """adapt() replaces the dense under its relu; merge_adapters gives back dense + relu;
    to_torch, the torch backend and ONNX (a separate Relu op) agree with NumPy."""
    x = gd.input("x", (None, 6))
    model = gd.dense(gd.dense(x, 5, activation="relu", name="fc"), 3, name="out")
    adapted = mod.adapt(model, ["fc"], rank=2)
    op = mod.__name__.split(".")[-1]
    assert gd.get_op_counts(adapted) == {"input": 1, op: 1, "relu": 1, "dense": 1}
    relu = adapted.inputs[0]
    assert relu.op == "relu" and relu.inputs[0].op == op and relu.inputs[0].name == "fc_" + op
    v = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    st0 = gd.build(model, seed=2)[0](v)
    st = gd.build(adapted, seed=2)[0](v, gd.ModelState({k: dict(p) for k, p in
                                                      st0.data.items()}))
    np.testing.assert_allclose(gd.predict(adapted, st, v), gd.predict(model, st0, v),
                               rtol=1e-5, atol=1e-6)  # equal at init
    B = st.data["fc_" + op]["B"]
    st.data["fc_" + op]["B"] = np.random.default_rng(4).normal(size=B.shape).astype(B.dtype)
    ref = np.asarray(gd.predict(adapted, st, v))
    merged, mst = gd.merge_adapters(adapted, st)
    assert gd.get_op_counts(merged) == {"input": 1, "dense": 2, "relu": 1}
    assert merged.inputs[0].op == "relu" and merged.inputs[0].inputs[0].name == "fc"
    import torch

    module = gd.to_torch(adapted, st)
    with torch.no_grad():
        got = [module(torch.from_numpy(v)).numpy(),
               np.asarray(gd.predict(adapted, st, v, backend="torch")),
               np.asarray(gd.predict(merged, mst, v))]
    for g in got:
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
    if ONNX:
        out, proto = export_and_run(adapted, st, {"x": v})
        ops = [n.op_type for n in proto.graph.node]
        assert "Relu" in ops and ops.index("Relu") > ops.index("MatMul")
        np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-5)


def test_wrap_a_layer_with_an_activation_node():
    """dora.wrap / lora.wrap of ``dense(..., activation="relu", name="fc")`` (a relu node)
    wrap the dense and keep the relu after the adapter; equal to the original at init."""
    x = gd.input("x", (None, 6))
    h = gd.dense(x, 5, activation="relu", name="fc")
    v = np.random.default_rng(5).normal(size=(3, 6)).astype(np.float32)
    st0 = gd.build(h)[0](v)
    for mod in (dora, lora):
        w = mod.wrap(x, h, rank=2)
        assert w.op == "relu" and w.inputs[0].op in ("dora", "lora")
        assert w.inputs[0].attrs["base"] == "fc"
        st = gd.build(w)[0](v, gd.ModelState({"fc": dict(st0.data["fc"])}))
        np.testing.assert_allclose(gd.predict(w, st, v), _relu(_dense(v, st0, "fc")),
                                   rtol=1e-5, atol=1e-6)


# -- files written while activations were fused -----------------------------------------------
def _today() -> gd.Node:
    """The golden files' model built today (as tests/golden/fused_act_v2.* were built)."""
    x = gd.input("x", (None, 4, 4, 2))
    h = gd.conv(x, 3, 3, padding="same", activation="tanh", name="c1")
    h = gd.flatten(h, name="flat")
    h = gd.dense(h, 8, activation="relu", name="fc1")
    h = gd.dense(h, 6, activation="leaky_relu", name="fc2")
    y = gd.dense(h, 5, activation="softmax", name="out")
    return dora.adapt(y, ["c1", "fc1"], rank=2)


def test_old_json_loads_as_two_nodes():
    """fused_act_v2.json: DoRA on a conv (tanh) and a dense (relu), dense + leaky_relu and
    dense + softmax, each activation fused as an ``activation`` attribute. It loads as the
    model built today (each layer, then its activation node with a default name) and is
    written back without ``activation`` attributes, still format_version 2."""
    text = (GOLDEN / "fused_act_v2.json").read_text()
    assert text.count('"activation": ') == 4
    model = gd.from_json(text)
    assert gd.get_op_counts(model) == {"input": 1, "dora": 2, "tanh": 1, "flatten": 1,
                                       "relu": 1, "dense": 2, "leaky_relu": 1, "softmax": 1}
    assert gd.to_json(model) == gd.to_json(_today())
    doc = json.loads(gd.to_json(model))
    assert doc["format_version"] == 2 and doc["outputs"] == "softmax_0"
    assert not any("activation" in n["attrs"] for n in doc["nodes"])
    assert [n["name"] for n in doc["nodes"] if n["op"] == "relu"] == ["relu_0"]
    assert next(n for n in doc["nodes"] if n["name"] == "fc2")["inputs"] == ["relu_0"]
    bad = text.replace('"activation": "relu"', '"activation": "rleu"')
    with pytest.raises(gd.GraphDSLError, match="unknown activation 'rleu'") as e:
        gd.from_json(bad)
    assert "fc1_dora" in str(e.value)


def test_old_model_file_gives_the_same_outputs():
    """fused_act_v2.gdsl (weights with B and magnitude moved off their init) gives the
    outputs saved with it, on NumPy, torch and ONNX Runtime, and merged."""
    z = np.load(GOLDEN / "fused_act_v2_outputs.npz")
    model, st = gd.load(GOLDEN / "fused_act_v2.gdsl")
    assert model.op == "softmax" and model.inputs[0].name == "out"
    np.testing.assert_array_equal(gd.predict(model, st, z["x"]), z["out"])
    np.testing.assert_allclose(gd.predict(model, st, z["x"], backend="torch"), z["out"],
                               rtol=1e-5, atol=1e-6)
    merged, mst = gd.merge_adapters(model, st)
    np.testing.assert_allclose(gd.predict(merged, mst, z["x"]), z["out"], rtol=1e-5,
                               atol=1e-6)
    if ONNX:
        np.testing.assert_allclose(export_and_run(model, st, {"x": z["x"]})[0][0], z["out"],
                                   rtol=1e-5, atol=1e-6)


def test_old_adapter_file_loads():
    """fused_act_v2_adapters.gdsl records ``activation`` on the DoRA layers; it loads into
    the model built today with activation= (and into the loaded old model) with the
    saved outputs, and is refused, naming the activation, by a model without it."""
    z = np.load(GOLDEN / "fused_act_v2_outputs.npz")
    _, st = gd.load(GOLDEN / "fused_act_v2.gdsl")
    base = gd.ModelState({k: dict(v) for k, v in st.data.items() if not k.endswith("_dora")})
    for model in (_today(), gd.load(GOLDEN / "fused_act_v2.gdsl")[0]):
        got = gd.load_adapters(GOLDEN / "fused_act_v2_adapters.gdsl", model, base)
        np.testing.assert_array_equal(gd.predict(model, got, z["x"]), z["out"])
    no_relu = gd.rewrite_nodes(_today(), lambda n: (lambda ins, out: ins[0])
                               if n.op == "relu" else None)
    with pytest.raises(gd.GraphDSLError, match="'fc1_dora' was saved with the activation "
                                               "'relu'"):
        gd.load_adapters(GOLDEN / "fused_act_v2_adapters.gdsl", no_relu, base)
