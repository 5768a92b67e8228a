"""gd.block, Axon's block: one function applied at several places with one shared set of
parameters.

References: Axon's compiler tests (test/axon/compiler_test.exs, describe "block": the
parameter layout and shapes for one dense used once, twice, ten times, two blocks, a block
inside a block, two inputs, and the predictions written out with Axon.Layers.dense),
ported with NumPy as the reference; and torch modules written by hand that call one
``nn.Linear`` / ``nn.BatchNorm1d`` several times (values, summed gradients, running
statistics). Every model also runs on the torch backend, the to_torch module and ONNX
Runtime; the op-case rows (tests/op_cases.py) add JSON, files and the empty batch.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import check_onnx, export_and_run, flat

import graphdsl as gd
from graphdsl import GraphDSLError, lora
from graphdsl.compiler import make_plan
from graphdsl.node import make_node

R = np.random.default_rng(905)
TOL = {"rtol": 1e-5, "atol": 1e-6}


def dense(x, p):
    """Axon.Layers.dense(x, kernel, bias)."""
    return x @ p["kernel"] + p["bias"]


def relu(x):
    return np.maximum(x, 0)


def features(n=1):
    return gd.input("features", (None, n))


def init(model, template):
    return gd.build(model)[0](template)


def layout(st):
    """``{layer: sorted params}`` of a state: Axon's ``parameters`` map, flattened."""
    return {layer: sorted(v) for layer, v in st.data.items()}


def everywhere(model, st, feed, expected):
    """NumPy, the torch backend, the to_torch module and ONNX Runtime all give
    ``expected``."""
    arg = feed if len(feed) > 1 else next(iter(feed.values()))
    np.testing.assert_allclose(gd.predict(model, st, arg), expected, **TOL)
    np.testing.assert_allclose(np.asarray(gd.predict(model, st, arg, backend="torch")),
                               expected, **TOL)
    mod = gd.to_torch(model, st).eval()
    with torch.no_grad():
        got = mod(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(got.numpy(), expected, **TOL)
    check_onnx(model, st, feed)


# -- Axon's compiler tests: parameter layout ---------------------------------------------------
def test_single_dense_used_once():
    model = gd.block(lambda x: gd.dense(x, 32))(features())
    st = init(model, {"features": (1, 1)})
    assert layout(st) == {"block_0.dense_0": ["bias", "kernel"]}
    k, b = st.data["block_0.dense_0"]["kernel"], st.data["block_0.dense_0"]["bias"]
    assert k.shape == (1, 32) and b.shape == (32,)
    assert k.dtype == np.float32 and b.dtype == np.float32
    x = R.random((1, 1), dtype=np.float32)
    everywhere(model, st, {"features": x}, dense(x, st.data["block_0.dense_0"]))


def test_single_dense_used_twice():
    blk = gd.block(lambda x: gd.dense(x, 1))
    model = blk(blk(features()))
    st = init(model, {"features": (1, 1)})
    assert layout(st) == {"block_0.dense_0": ["bias", "kernel"]}  # no second layer or block
    p = st.data["block_0.dense_0"]
    assert p["kernel"].shape == (1, 1) and p["bias"].shape == (1,)
    x = R.random((1, 1), dtype=np.float32)
    everywhere(model, st, {"features": x}, dense(dense(x, p), p))


def _two_dense(units):
    return gd.block(lambda x: gd.dense(gd.dense(x, 32, activation="relu"), units,
                                       activation="relu"))


def test_multiple_dense_used_once():
    model = _two_dense(32)(features())
    st = init(model, {"features": (1, 1)})
    assert layout(st) == {"block_0.dense_0": ["bias", "kernel"],
                          "block_0.dense_1": ["bias", "kernel"]}
    p0, p1 = st.data["block_0.dense_0"], st.data["block_0.dense_1"]
    assert [p0["kernel"].shape, p0["bias"].shape, p1["kernel"].shape, p1["bias"].shape] == [
        (1, 32), (32,), (32, 32), (32,)]


def test_multiple_dense_used_ten_times():
    blk = _two_dense(1)
    h = features()
    for _ in range(10):
        h = blk(h)
    st = init(h, {"features": (1, 1)})
    assert layout(st) == {"block_0.dense_0": ["bias", "kernel"],
                          "block_0.dense_1": ["bias", "kernel"]}
    p0, p1 = st.data["block_0.dense_0"], st.data["block_0.dense_1"]
    assert [p0["kernel"].shape, p0["bias"].shape, p1["kernel"].shape, p1["bias"].shape] == [
        (1, 32), (32,), (32, 1), (1,)]
    assert gd.get_op_counts(h) == {"input": 1, "block": 10}
    x = R.random((3, 1), dtype=np.float32)
    want = x
    for _ in range(10):
        want = relu(dense(relu(dense(want, p0)), p1))
    everywhere(h, st, {"features": x}, want)


def test_multiple_dense_used_twice_predicts():
    blk = _two_dense(1)
    model = blk(blk(features()))
    st = init(model, {"features": (1, 1)})
    p0, p1 = st.data["block_0.dense_0"], st.data["block_0.dense_1"]
    x = R.random((1, 1), dtype=np.float32)
    once = lambda v: relu(dense(relu(dense(v, p0)), p1))  # noqa: E731
    everywhere(model, st, {"features": x}, once(once(x)))


def test_multiple_blocks_in_network():
    b1, b2 = gd.block(lambda x: gd.dense(x, 32)), gd.block(lambda x: gd.dense(x, 32))
    model = b2(b1(features()))
    st = init(model, {"features": (1, 1)})
    assert layout(st) == {"block_0.dense_0": ["bias", "kernel"],
                          "block_1.dense_0": ["bias", "kernel"]}
    p1, p2 = st.data["block_0.dense_0"], st.data["block_1.dense_0"]
    assert p1["kernel"].shape == (1, 32) and p2["kernel"].shape == (32, 32)
    x = R.random((1, 1), dtype=np.float32)
    everywhere(model, st, {"features": x}, dense(dense(x, p1), p2))


def test_block_inside_a_block():
    def outer(x):
        inner = gd.block(lambda h: gd.dense(h, 1))
        return inner(inner(x))

    blk = gd.block(outer)
    model = blk(blk(features()))
    st = init(model, {"features": (1, 1)})
    assert layout(st) == {"block_0.block_0.dense_0": ["bias", "kernel"]}
    p = st.data["block_0.block_0.dense_0"]
    assert p["kernel"].shape == (1, 1) and p["bias"].shape == (1,)
    x = R.random((1, 1), dtype=np.float32)
    everywhere(model, st, {"features": x}, dense(dense(dense(dense(x, p), p), p), p))


def test_multiple_block_inputs():
    def body(x, y):
        d = gd.block(lambda h: gd.dense(h, 4))
        return gd.add(d(y), d(x))

    model = gd.dense(gd.block(body)(gd.input("input1", (None, 1)),
                                    gd.input("input2", (None, 1))), 1)
    feed = {"input1": np.array([[0.5]], np.float32), "input2": np.array([[0.75]], np.float32)}
    st = init(model, feed)
    assert layout(st) == {"block_0.block_0.dense_0": ["bias", "kernel"],
                          "dense_0": ["bias", "kernel"]}
    p1, p2 = st.data["block_0.block_0.dense_0"], st.data["dense_0"]
    assert p1["kernel"].shape == (1, 4) and p2["kernel"].shape == (4, 1)
    want = dense(dense(feed["input1"], p1) + dense(feed["input2"], p1), p2)
    everywhere(model, st, feed, want)


# -- graphdsl: names, counts, views -------------------------------------------------------
def _mlp():
    return gd.block(lambda h: gd.dense(gd.dense(h, 8, activation="relu"), 4), name="mlp")


def test_named_block_layout_calls_and_counts():
    blk = _mlp()
    x = gd.input("x", (None, 4))
    model = blk(x) + blk(gd.dense(x, 4, name="pre"))
    assert gd.properties(model) == {"x": "input", "mlp": "block", "pre": "dense",
                                    "mlp_1": "block", "add_0": "add"}
    assert gd.get_op_counts(model) == {"input": 1, "block": 2, "dense": 1, "add": 1}
    params = gd.get_parameters(model)
    assert sorted(params) == ["mlp.dense_0", "mlp.dense_1", "pre"]
    st = init(model, {"x": (2, 4)})
    shared = 4 * 8 + 8 + 8 * 4 + 4
    assert st.parameter_count() == shared + 4 * 4 + 4  # the block's parameters once
    table = gd.display.as_table(model, {"x": (2, 4)}, state=st)
    assert "mlp ( block )" in table and "mlp_1 ( block )" in table
    assert "mlp.dense_0.kernel: f32[4][8] (trainable, shared)" in table
    assert re.search(rf"Total parameters:\s+{shared + 20}\s", table)
    graph = gd.display.as_graph(model)
    assert '"mlp (block) (None, 4)"' in graph and '"mlp_1 (block) (None, 4)"' in graph
    assert "mlp (block)" in gd.display.to_dot(model)
    assert set(gd.to_networkx(model).nodes) == {"x", "mlp", "pre", "mlp_1", "add_0"}
    x0 = R.standard_normal((2, 4)).astype(np.float32)
    once = lambda v: dense(relu(dense(v, st.data["mlp.dense_0"])), st.data["mlp.dense_1"])  # noqa: E731
    everywhere(model, st, {"x": x0}, once(x0) + once(dense(x0, st.data["pre"])))


def test_to_torch_one_parameter_and_summed_gradients():
    """The module holds each shared parameter once; its gradient is the sum over the uses,
    as for a hand-written module calling one nn.Linear pair three times."""
    blk = _mlp()
    x = gd.input("x", (None, 4))
    model = blk(blk(x)) * blk(x)
    st = init(model, {"x": (3, 4)})
    mod = gd.to_torch(model, st)
    names = [n for n, _ in mod.named_parameters()]
    assert sorted(names) == ["mlp.dense_0.bias", "mlp.dense_0.kernel", "mlp.dense_1.bias",
                             "mlp.dense_1.kernel"]
    l0, l1 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)
    with torch.no_grad():
        for lin, layer in ((l0, "mlp.dense_0"), (l1, "mlp.dense_1")):
            lin.weight.copy_(torch.from_numpy(np.array(st.data[layer]["kernel"]).T))
            lin.bias.copy_(torch.from_numpy(np.array(st.data[layer]["bias"])))
    xt = torch.from_numpy(R.standard_normal((3, 4)).astype(np.float32))

    def f(h):
        return l1(torch.relu(l0(h)))

    ref = f(f(xt)) * f(xt)
    got = mod(xt)
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), **TOL)
    (ref ** 2).sum().backward()
    (got ** 2).sum().backward()
    p = dict(mod.named_parameters())
    for lin, layer in ((l0, "mlp.dense_0"), (l1, "mlp.dense_1")):
        np.testing.assert_allclose(p[f"{layer}.kernel"].grad.numpy(),
                                   lin.weight.grad.numpy().T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p[f"{layer}.bias"].grad.numpy(), lin.bias.grad.numpy(),
                                   rtol=1e-5, atol=1e-5)
    back = gd.from_torch(mod)
    assert sorted(back.data) == ["mlp.dense_0", "mlp.dense_1"]


def test_json_file_and_onnx_hold_the_body_once(tmp_path):
    blk = _mlp()
    x = gd.input("x", (None, 4))
    model = gd.dense(blk(blk(x)) + blk(x), 2, name="head")
    text = gd.to_json(model)
    assert text.count('"body": {') == 1  # the later calls name the first: "body": "mlp"
    assert '"body": "mlp"' in text
    again = gd.from_json(text)
    assert gd.to_json(again) == text
    st = init(model, {"x": (2, 4)})
    x0 = R.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(again, st, x0), gd.predict(model, st, x0))
    gd.save(tmp_path / "m.gdsl", model, st)
    m2, st2 = gd.load(tmp_path / "m.gdsl")
    assert st2 == st and gd.to_json(m2) == text
    proto = check_onnx(model, st, {"x": x0})
    inits = sorted(i.name for i in proto.graph.initializer if i.name.startswith("mlp"))
    assert inits == ["mlp.dense_0.bias", "mlp.dense_0.kernel", "mlp.dense_1.bias",
                     "mlp.dense_1.kernel"]


def test_json_names_unnamed_blocks_and_refuses_a_bad_body_reference():
    blk = gd.block(lambda h: gd.dense(h, 3))
    model = blk(blk(features(3)))
    text = gd.to_json(model)
    assert '"block": "block_0"' in text and '"body": "block_0"' in text
    with pytest.raises(GraphDSLError, match="neither a model document nor the name"):
        gd.from_json(text.replace('"body": "block_0"', '"body": "nothing"'))


# -- state: a stateful body ----------------------------------------------------------------
def test_stateful_body_chains_its_uses_like_a_reused_torch_module():
    """Batch norm in a body used twice, in training: each use reads the running statistics
    the previous use left (as calling one nn.BatchNorm1d twice does); the new state holds
    the last use's values. NumPy, the torch backend and to_torch agree with torch."""
    blk = gd.block(lambda h: gd.batch_norm(gd.dense(h, 6), momentum=0.3, name="bn"),
                   name="norm")
    model = blk(blk(gd.input("x", (None, 6))))
    st = init(model, {"x": (5, 6)})
    x0 = R.standard_normal((5, 6)).astype(np.float32)
    lin, bn = torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6, momentum=0.3)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.array(st.data["norm.dense_0"]["kernel"]).T))
        lin.bias.copy_(torch.from_numpy(np.array(st.data["norm.dense_0"]["bias"])))
    bn.train()
    xt = torch.from_numpy(x0)
    ref = bn(lin(bn(lin(xt)))).detach().numpy()
    want = {"mean": bn.running_mean.numpy(), "var": bn.running_var.numpy()}
    # one use alone moves the statistics less: the chaining is visible
    assert not np.allclose(want["mean"], 0.3 * lin(xt).mean(0).detach().numpy(), atol=1e-3)
    for backend in ("numpy", "torch"):
        out = gd.build(model, backend=backend, mode="train")[1](st, x0)
        np.testing.assert_allclose(np.asarray(out["prediction"]), ref, rtol=1e-4, atol=1e-5)
        for k in ("mean", "var"):
            np.testing.assert_allclose(out["state"].data["norm.bn"][k], want[k], rtol=1e-5,
                                       atol=1e-6)
    mod = gd.to_torch(model, st).train()
    np.testing.assert_allclose(mod(xt).detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    after = gd.from_torch(mod)
    for k in ("mean", "var"):
        np.testing.assert_allclose(after.data["norm.bn"][k], want[k], rtol=1e-5, atol=1e-6)


# -- transforms -----------------------------------------------------------------------------
def test_adapt_leaves_the_block_body_alone():
    """adapt does not look inside blocks: their body layers are no targets (an error lists
    the adaptable layers), and like every layer that is not a target the block's shared
    parameters are frozen."""
    blk = gd.block(lambda h: gd.dense(h, 3, name="fc"), name="mlp")
    model = gd.dense(blk(blk(features(3))), 2, name="head")
    st = init(model, {"features": (2, 3)})
    adapted = lora.adapt(model, targets=["head"], rank=2)
    st2 = gd.build(adapted)[0]({"features": (2, 3)}, st)
    assert {("mlp.fc", "kernel"), ("mlp.fc", "bias")} <= st2.frozen
    x0 = R.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(gd.predict(adapted, st2, x0), gd.predict(model, st, x0), **TOL)
    with pytest.raises(GraphDSLError, match=r"adaptable layers in this model: \['head'\]; a "
                       r"gd.block's body layers are not adaptable"):
        lora.adapt(model, targets=["fc"], rank=2)
    with pytest.raises(GraphDSLError, match="is a block layer"):
        lora.adapt(model, targets=["mlp"], rank=2)


def test_freeze_map_and_rewrite_nodes():
    blk = _mlp()
    x = gd.input("x", (None, 4))
    model = blk(blk(x))
    st = init(gd.freeze(model), {"x": (2, 4)})
    assert st.trainable_parameter_count() == 0 and st.frozen_parameter_count() == 76
    mod = gd.to_torch(gd.freeze(model), st)
    assert not any(p.requires_grad for p in mod.parameters())
    # freezing one call freezes the parameters every call shares
    one = gd.freeze(model, lambda n: n.name == "mlp_1")
    assert init(one, {"x": (2, 4)}).trainable_parameter_count() == 0
    st = init(model, {"x": (2, 4)})
    x0 = R.standard_normal((2, 4)).astype(np.float32)
    same = gd.map_nodes(model, lambda n: n)
    np.testing.assert_array_equal(gd.predict(same, st, x0), gd.predict(model, st, x0))
    relu_after = gd.rewrite_nodes(
        model, lambda n: (lambda inputs, out: gd.relu(out)) if n.op == "block" else None)
    assert gd.get_op_counts(relu_after) == {"input": 1, "block": 2, "relu": 2}
    p0, p1 = st.data["mlp.dense_0"], st.data["mlp.dense_1"]
    once = lambda v: relu(dense(relu(dense(v, p0)), p1))  # noqa: E731
    np.testing.assert_allclose(gd.predict(relu_after, st, x0), once(once(x0)), **TOL)


# -- errors ------------------------------------------------------------------------------------
def test_a_later_call_of_other_shapes_is_refused():
    blk = _mlp()
    blk(gd.input("x", (None, 4)))
    with pytest.raises(GraphDSLError) as e:
        blk(gd.input("y", (None, 5)))
    msg = str(e.value)
    assert "mlp_1" in msg and "(op block)" in msg and "test_block_axon.py:" in msg
    assert "argument 0 has shape (None, 5)" in msg and "built for (None, 4)" in msg
    assert "fix: call the block on inputs of shape (None, 4)" in msg
    with pytest.raises(GraphDSLError, match="takes 1 input"):
        blk(gd.input("a", (None, 4)), gd.input("b", (None, 4)))


def test_bad_functions_and_names_are_refused():
    x = gd.input("x", (None, 4))
    with pytest.raises(GraphDSLError, match="returned int"):
        gd.block(lambda h: 3)(x)
    with pytest.raises(GraphDSLError, match=r"reads the input\(s\) \['x'\]"):
        gd.block(lambda h: h + x)(gd.dense(x, 4))
    with pytest.raises(GraphDSLError, match=r"ignores its argument\(s\) \['subgraph1'\]"):
        gd.block(lambda a, b: gd.relu(a))(x, x)
    with pytest.raises(GraphDSLError, match="needs a function"):
        gd.block(3)
    with pytest.raises(GraphDSLError, match="invalid block name"):
        gd.block(gd.relu, name="a b")
    with pytest.raises(GraphDSLError, match="at least one input"):
        gd.block(gd.relu)()
    one, two = gd.block(gd.relu, name="act"), gd.block(gd.tanh, name="act")
    two(x)  # elsewhere: the next call of two is act_1, not a layer name one's call uses
    with pytest.raises(GraphDSLError, match="two different blocks are named 'act'"):
        gd.get_parameters(gd.add(one(x), gd.dense(two(x), 4)))


def test_copies_keep_one_body_and_an_identity_body_runs():
    import copy
    import pickle

    blk = gd.block(lambda h: gd.dense(h, 3))
    model = blk(blk(features(3)))
    for c in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        calls = [n for n in gd.topo_order(c) if n.op == "block"]
        assert calls[0].attrs["body"] is calls[1].attrs["body"]
        assert sorted(init(c, {"features": (2, 3)}).data) == ["block_0.dense_0"]
    table = gd.display.as_table(model)
    assert "body layers: 1" in table and "block: None" not in table
    assert "block_0.dense_0.kernel: f32[3][3] (trainable, shared)" in table
    ident = gd.block(lambda h: h)
    x = features(3)
    same = ident(x) + ident(x)
    x0 = R.standard_normal((2, 3)).astype(np.float32)
    everywhere(same, init(same, {"features": (2, 3)}), {"features": x0}, 2 * x0)


def test_the_inlined_layers_are_named_after_their_call():
    """The compiler's plan: each call's body layers as ``{call}.{body layer}``, the body's
    output as the call itself (the ONNX output, error messages), nested calls too."""
    def outer(h):
        inner = gd.block(lambda v: gd.dense(v, 3), name="inner")
        return inner(gd.dense(h, 3))

    blk = gd.block(outer, name="outer")
    model = blk(blk(features(3)))
    steps = [(s.name, s.params[0].owner) for s in make_plan(model).steps]
    assert steps == [("outer.dense_0", "outer.dense_0"), ("outer", "outer.inner.dense_0"),
                     ("outer_1.dense_0", "outer.dense_0"), ("outer_1", "outer.inner.dense_0")]
    st = init(model, {"features": (2, 3)})
    _, proto = export_and_run(model, st, {"features": np.ones((2, 3), np.float32)})
    assert [o.name for o in proto.graph.output] == ["outer_1"]


# -- a function returning several outputs (Axon's block of Axon.container(...)) --------------
def _two_blocks():
    """``pair`` returns a tuple, ``named`` (two inputs) a dict; each is called twice."""
    pair = gd.block(lambda h: (gd.dense(h, 3, name="a"),
                               gd.relu(gd.dense(h, 3, name="b"))), name="pair")
    named = gd.block(lambda u, v: {"x": gd.dense(u, 3, name="fc") + v, "y": gd.tanh(v)},
                     name="named")
    x = gd.input("x", (None, 4))
    a1, b1 = pair(x)
    a2, b2 = pair(gd.relu(x))
    d1, d2 = named(a1, b2), named(a2, b1)
    return gd.container({"s": d1["x"] * d2["y"], "t": d2["x"] - d1["y"], "a": a1})


def _two_blocks_numpy(st, x):
    p = st.data

    def pair(h):
        return dense(h, p["pair.a"]), relu(dense(h, p["pair.b"]))

    def named(u, v):
        return {"x": dense(u, p["named.fc"]) + v, "y": np.tanh(v)}

    (a1, b1), (a2, b2) = pair(x), pair(relu(x))
    d1, d2 = named(a1, b2), named(a2, b1)
    return {"s": d1["x"] * d2["y"], "t": d2["x"] - d1["y"], "a": a1}


def test_a_block_returning_a_tuple_and_a_dict_used_twice():
    """Each call returns the function's structure of nodes; the parameters exist once, under
    the block's name; NumPy, the torch backend, the to_torch module and ONNX Runtime give
    the hand-written NumPy values."""
    model = _two_blocks()
    st = init(model, {"x": (3, 4)})
    assert layout(st) == {"named.fc": ["bias", "kernel"], "pair.a": ["bias", "kernel"],
                          "pair.b": ["bias", "kernel"]}
    assert gd.get_op_counts(model)["block"] == 4
    x0 = R.standard_normal((3, 4)).astype(np.float32)
    want = flat(_two_blocks_numpy(st, x0))
    for got in (gd.predict(model, st, x0), gd.predict(model, st, x0, backend="torch"),
                gd.to_torch(model, st)(torch.from_numpy(x0))):
        assert len(flat(got)) == 3
        for g, w in zip(flat(got), want):
            np.testing.assert_allclose(g, w, **TOL)
    proto = check_onnx(model, st, {"x": x0})
    assert sorted(i.name for i in proto.graph.initializer if "kernel" in i.name) == [
        "named.fc.kernel", "pair.a.kernel", "pair.b.kernel"]
    assert gd.get_output_shape(model, {"x": (5, 4)}) == {"s": (5, 3), "t": (5, 3),
                                                         "a": (5, 3)}
    call = next(n for n in gd.topo_order(model) if n.op == "block")
    assert call.shape == ((None, 3), (None, 3))
    table = gd.display.as_table(model)
    assert "((None, 3), (None, 3))" in table and "{'x': (None, 3), 'y': (None, 3)}" in table
    assert "path: ('y'" in table and "path: (1,)" in table


def test_shared_parameters_of_a_several_output_block_get_both_uses_gradients():
    """to_torch: one parameter per shared value, its gradient the sum over both calls, as a
    hand-written torch function calling each nn.Linear twice."""
    model = _two_blocks()
    st = init(model, {"x": (3, 4)})
    mod = gd.to_torch(model, st)
    assert sorted(n for n, _ in mod.named_parameters()) == [
        f"{layer}.{p}" for layer in ("named.fc", "pair.a", "pair.b") for p in ("bias", "kernel")]
    lin = {k: torch.nn.Linear(*np.shape(st.data[k]["kernel"]))
           for k in ("pair.a", "pair.b", "named.fc")}
    with torch.no_grad():
        for k, m in lin.items():
            m.weight.copy_(torch.from_numpy(np.array(st.data[k]["kernel"]).T))
            m.bias.copy_(torch.from_numpy(np.array(st.data[k]["bias"])))
    xt = torch.from_numpy(R.standard_normal((3, 4)).astype(np.float32))

    def pair(h):
        return lin["pair.a"](h), torch.relu(lin["pair.b"](h))

    def named(u, v):
        return {"x": lin["named.fc"](u) + v, "y": torch.tanh(v)}

    (a1, b1), (a2, b2) = pair(xt), pair(torch.relu(xt))
    d1, d2 = named(a1, b2), named(a2, b1)
    ref = {"s": d1["x"] * d2["y"], "t": d2["x"] - d1["y"], "a": a1}
    got = mod(xt)
    w = {k: torch.from_numpy(R.standard_normal((3, 3)).astype(np.float32)) for k in ref}
    sum((ref[k] * w[k]).sum() for k in ref).backward()
    sum((got[k] * w[k]).sum() for k in ref).backward()
    p = dict(mod.named_parameters())
    for k, m in lin.items():
        assert m.weight.grad.abs().sum() > 0
        np.testing.assert_allclose(p[f"{k}.kernel"].grad.numpy(), m.weight.grad.numpy().T,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p[f"{k}.bias"].grad.numpy(), m.bias.grad.numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_several_output_blocks_round_trip_json_and_files(tmp_path):
    model = _two_blocks()
    text = gd.to_json(model)
    assert text.count('"body": {') == 2 and '"body": "pair"' in text
    assert '"path": ["y"]' in text
    again = gd.from_json(text)
    assert gd.to_json(again) == text
    st = init(model, {"x": (2, 4)})
    x0 = R.standard_normal((2, 4)).astype(np.float32)
    for g, w in zip(flat(gd.predict(again, st, x0)), flat(gd.predict(model, st, x0))):
        np.testing.assert_array_equal(g, w)
    gd.save(tmp_path / "m.gdsl", model, st)
    m2, st2 = gd.load(tmp_path / "m.gdsl")
    assert st2 == st and gd.to_json(m2) == text
    for bad in ('["z"]', '[1]', '["y", 0]'):
        with pytest.raises(GraphDSLError, match=r"have no item at path"):
            gd.from_json(text.replace('"path": ["y"]', f'"path": {bad}'))
    with pytest.raises(GraphDSLError, match=r"path must be a non-empty list"):
        gd.from_json(text.replace('"path": ["y"]', '"path": []'))


def test_a_several_output_call_feeds_only_its_outputs():
    """A nested structure and a gd.container come back as nodes; the call node itself is no
    layer input; the nodes of the first call work alone (the second's body is shared)."""
    blk = gd.block(lambda h: gd.container([h, gd.container([gd.relu(h), gd.container(
        {"n": gd.dense(h, 2)})])]))
    x = gd.input("x", (None, 4))
    out = blk(x)
    assert isinstance(out, tuple) and isinstance(out[1][1], dict)
    assert out[1][1]["n"].shape == (None, 2) and out[0].op == "block_output"
    with pytest.raises(GraphDSLError, match="block call of several outputs") as e:
        gd.dense(out[0].inputs[0], 2)
    assert "test_block_axon.py:" in str(e.value)
    with pytest.raises(GraphDSLError, match="several outputs"):
        gd.container([out[0].inputs[0]])
    with pytest.raises(GraphDSLError, match=r"path \[1\] leads to several outputs"):
        make_node("block_output", [out[0].inputs[0]], {"path": (1,)})
    x0 = R.standard_normal((2, 4)).astype(np.float32)
    model = out[1][0] + out[0]
    st = init(model, {"x": (2, 4)})
    assert st.data == {}
    everywhere(model, st, {"x": x0}, relu(x0) + x0)
