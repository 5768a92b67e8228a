"""Axon's special layers (blur_pool, mask, cond, or_else, stack_columns, nx) and graph
functions (reduce_nodes, pop_node, get/set_options, properties), with the inputs and
expectations of Axon's compiler_test.exs, against torch (blur_pool: MosaicML's
F.conv2d form, which Axon follows) and ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import check_onnx

import graphdsl as gd
from graphdsl.node import make_node

BACKENDS = ("numpy", "torch")
R = np.random.default_rng(22)


def _run(model, feed, backend, state=None):
    out = gd.predict(model, state or gd.ModelState.empty(), feed, backend=backend)
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


# -- blur_pool ---------------------------------------------------------------------------------
def _torch_blur(x: np.ndarray, channels: str = "last") -> np.ndarray:
    """MosaicML composer's blurpool2d (Axon's source): F.conv2d with the [1 2 1] outer
    product / 16, padding 1, one group per channel."""
    t = torch.from_numpy(x).double()
    if channels == "last":
        t = t.permute(0, 3, 1, 2)
    c = t.shape[1]
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    w = (torch.outer(f, f) / 16).expand(c, 1, 3, 3)
    y = F.conv2d(t, w, padding=1, groups=c)
    return (y.permute(0, 2, 3, 1) if channels == "last" else y).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,channels", [((1, 8, 4, 1), "last"), ((1, 32, 32, 1), "last"),
                                            ((2, 5, 7, 3), "last"), ((2, 3, 5, 7), "first")])
def test_blur_pool_matches_torch(backend, shape, channels):
    x = R.standard_normal(shape).astype(np.float32)
    model = gd.blur_pool(gd.input("input", (None, *shape[1:])), channels=channels)
    assert gd.get_output_shape(model) == (None, *shape[1:])
    assert gd.build(model)[0]({"input": x}).data == {}  # no parameters (Axon's first test)
    got = _run(model, x, backend)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_blur(x, channels), rtol=1e-6, atol=1e-6)


def test_blur_pool_values_by_hand():
    # a 3x3 image of ones: the corners keep 4/16 + 2*2/16 + 1/16 = 9/16, the edges 12/16
    x = np.ones((1, 3, 3, 1), np.float32)
    y = _run(gd.blur_pool(gd.input("x", (None, 3, 3, 1))), x, "numpy")[0, :, :, 0]
    np.testing.assert_allclose(y, np.array([[9, 12, 9], [12, 16, 12], [9, 12, 9]]) / 16)
    # an impulse spreads to the filter itself
    x = np.zeros((1, 5, 5, 2), np.float32)
    x[0, 2, 2, 1] = 16.0
    y = _run(gd.blur_pool(gd.input("x", (None, 5, 5, 2))), x, "torch")
    np.testing.assert_allclose(y[0, 1:4, 1:4, 1], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    assert not y[..., 0].any()


def test_blur_pool_of_integers_is_float_and_exports():
    x = R.integers(0, 9, (2, 4, 4, 2))
    model = gd.blur_pool(gd.input("x", (None, 4, 4, 2), dtype="int64"))
    for backend in BACKENDS:
        got = _run(model, x, backend)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _torch_blur(x.astype(np.float32)), rtol=1e-6)
    check_onnx(model, gd.ModelState.empty(), {"x": x})


def test_blur_pool_refuses_what_axon_refuses():
    with pytest.raises(gd.GraphDSLError, match=r"rank-4 input.*\(None, 8, 3\)"):
        gd.blur_pool(gd.input("x", (None, 8, 3)))
    with pytest.raises(gd.GraphDSLError, match="rank-4"):
        gd.blur_pool(gd.input("x", (None, 4, 4, 4, 3)))
    with pytest.raises(gd.GraphDSLError, match="known channel axis"):
        gd.blur_pool(gd.input("x", (None, 4, 4, None)))
    with pytest.raises(gd.GraphDSLError, match="channels must be 'last' or 'first'"):
        gd.blur_pool(gd.input("x", (None, 4, 4, 1)), channels="middle")
    with pytest.raises(gd.GraphDSLError, match="no option"):  # Axon documents :strides,
        make_node("blur_pool", [gd.input("x", (None, 4, 4, 1))], {"strides": 2})  # refuses it
    model = gd.blur_pool(gd.input("x", (None, None, 4, 1)))
    with pytest.raises(gd.GraphDSLError, match="larger than the padded input"):
        gd.predict(model, gd.ModelState.empty(), np.zeros((1, 0, 4, 1), np.float32))


# -- mask ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_marks_the_eos_tokens(backend):
    # Axon's lstm test: a review [1, 2, 3, 4] padded with the eos token 0
    ids = np.pad(np.array([[1, 2, 3, 4]]), [(0, 0), (0, 60)])
    model = gd.mask(gd.input("review", (None, None), dtype="int64"), 0)
    got = _run(model, ids, backend)
    assert got.dtype == np.int64 and model.dtype == "int64"
    np.testing.assert_array_equal(got, np.r_[[0] * 4, [1] * 60][None])
    # Nx.as_type to s64 truncates toward zero before the comparison
    x = np.array([[0.5, -0.5, 1.0, 2.9, -2.9, 3.0]], np.float32)
    f = gd.mask(gd.input("x", (None, 6)), 2, name="eos")
    np.testing.assert_array_equal(_run(f, x, backend), [[0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(_run(gd.mask(gd.input("x", (None, 6)), 0), x, backend),
                                  [[1, 1, 0, 0, 0, 0]])


def test_mask_exports_and_checks_its_token():
    x = np.array([[0.5, -0.5, 1.0, 2.9, -2.9, 3.0]], np.float32)
    check_onnx(gd.mask(gd.input("x", (None, 6)), -2), gd.ModelState.empty(), {"x": x})
    for bad in (1.5, True, "0", None):
        with pytest.raises(gd.GraphDSLError, match="eos_token must be an integer"):
            gd.mask(gd.input("x", (None, 6)), bad)


# -- cond -----------------------------------------------------------------------------------------
@gd.register_function("axon_misc_all")
def all_nonzero(x, *, xp):
    return xp.all(x != 0)


@gd.register_onnx_rule(all_nonzero)
def _all_nonzero_onnx(b, x):
    return b.op("Greater", [b.op("ReduceMin", [b.op("Abs", [x])], keepdims=0), b.const(0.0)])


@gd.register_function("axon_misc_equal_one")
def equal_one(x, *, xp):
    return x == 1


def _cond_model(shape=(None, 2)):
    inp = gd.input("input", shape)
    return gd.cond(inp, all_nonzero, gd.relu(inp), gd.sigmoid(inp), name="pick")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cond_picks_the_branch(backend):
    model = _cond_model()
    assert gd.build(model)[0]({"input": np.ones((1, 2))}).data == {}  # no parameters
    one, zero = np.array([[1.0, 1.0]], np.float32), np.array([[0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(_run(model, one, backend), [[1.0, 1.0]])  # relu
    np.testing.assert_array_equal(_run(model, zero, backend), [[0.5, 0.5]])  # sigmoid
    x = np.array([[-2.0, 3.0]], np.float32)
    np.testing.assert_allclose(_run(model, x, backend), [[0.0, 3.0]])
    assert gd.properties(model) == {"input": "input", "pick_predicate": "custom",
                                    "relu_0": "relu", "sigmoid_0": "sigmoid", "pick": "cond"}


def test_cond_exports_saves_and_trains_one_branch(tmp_path):
    model = _cond_model((None, 3))
    for x in (np.array([[-2.0, 3.0, 1.0]], np.float32), np.zeros((2, 3), np.float32)):
        check_onnx(model, gd.ModelState.empty(), {"input": x})
    gd.save(tmp_path / "m.gdsl", model, gd.ModelState.empty())
    loaded, st = gd.load(tmp_path / "m.gdsl")
    x = np.array([[-2.0, 3.0, 1.0]], np.float32)
    np.testing.assert_array_equal(gd.predict(loaded, st, x), gd.predict(model, st, x))
    # gradients reach the branch taken only (relu here), as Axon's if does
    m = gd.to_torch(model, gd.ModelState.empty())
    t = torch.tensor([[-2.0, 3.0, 1.0]], requires_grad=True)
    m(t).sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([[0.0, 1.0, 1.0]]))


def test_cond_refuses_a_predicate_that_is_not_a_scalar():
    inp = gd.input("input", (None, 1, 10))
    with pytest.raises(gd.GraphDSLError, match=r"cond_fn must return a scalar.*\(None, 1, 10\)"):
        gd.cond(inp, equal_one, gd.relu(inp), gd.sigmoid(inp))
    with pytest.raises(gd.GraphDSLError, match="same shape"):
        gd.cond(inp, all_nonzero, inp, gd.reshape(inp, (None, 10, 1)))
    with pytest.raises(gd.GraphDSLError, match="same dtype"):
        gd.cond(inp, all_nonzero, inp, gd.mask(inp, 0))
    a, b = gd.input("a", (None, 2)), gd.input("b", (None, 2))
    model = gd.cond(a, all_nonzero, a, b, name="pick")
    feed = {"a": np.ones((3, 2), np.float32), "b": np.ones((1, 2), np.float32)}
    for backend in BACKENDS:  # sizes the shape rule could not see: refused, not broadcast
        with pytest.raises(gd.GraphDSLError, match=r"(?s)same shape.*\(3, 2\) and \(1, 2\).*pick"):
            gd.predict(model, gd.ModelState.empty(), feed, backend=backend)


# -- or_else, stack_columns, nx ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_or_else_is_the_input_when_given_else_the_default(backend):
    x = gd.input("x", (None, 3))
    scale = gd.or_else(gd.input("scale", (None, 3)), gd.full_like(x, 2.0), name="scale_or_2")
    model = gd.multiply(x, scale)
    assert gd.get_op_counts(model)["optional"] == 1
    v, s = R.standard_normal((2, 3)).astype(np.float32), np.full((2, 3), 3.0, np.float32)
    np.testing.assert_allclose(_run(model, {"x": v}, backend), 2 * v, rtol=1e-6)
    np.testing.assert_allclose(_run(model, {"x": v, "scale": s}, backend), 3 * v, rtol=1e-6)
    with pytest.raises(gd.GraphDSLError, match="or_else needs a model input first"):
        gd.or_else(gd.relu(x), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stack_columns_stacks_on_a_new_last_axis(backend):
    # Axon's test: %{a: [[1]], b: [[2]], c: [[3]]} with ignore: [:b] -> [[[1, 3]]]
    cols = {k: gd.input(k, (None, 1), dtype="int64") for k in "abc"}
    model = gd.stack_columns(cols, ignore=["b"])
    assert list(gd.get_inputs(model)) == ["a", "c"]  # b is never read (Axon's LazyOnly)
    got = _run(model, {"a": np.array([[1]]), "c": np.array([[3]])}, backend)
    assert model.shape == (None, 1, 2) and model.dtype == "int64"
    np.testing.assert_array_equal(got, [[[1, 3]]])
    # a container keeps its key order; a list stacks in order; floats stay float32
    a, b = gd.input("a", (None, 4)), gd.input("b", (None, 4))
    va, vb = R.standard_normal((3, 4)).astype(np.float32), R.standard_normal((3, 4)).astype(
        np.float32)
    for m in (gd.stack_columns(gd.container({"b": b, "a": a})), gd.stack_columns([b, a])):
        np.testing.assert_array_equal(_run(m, {"a": va, "b": vb}, backend),
                                      np.stack([vb, va], axis=-1))


def test_the_compositions_export_to_onnx():
    a, b = gd.input("a", (None, 4)), gd.input("b", (None, 4))
    feed = {"a": R.standard_normal((3, 4)).astype(np.float32),
            "b": R.standard_normal((3, 4)).astype(np.float32)}
    check_onnx(gd.stack_columns({"b": b, "a": a}), gd.ModelState.empty(), feed)
    model = gd.multiply(a, gd.or_else(b, gd.full_like(a, 2.0)))
    check_onnx(model, gd.ModelState.empty(), {"a": feed["a"]})  # b left out: its default
    check_onnx(model, gd.ModelState.empty(), feed, optional_inputs=True)


def test_stack_columns_refuses_what_it_cannot_stack():
    a, b = gd.input("a", (None, 4)), gd.input("b", (None, 5))
    with pytest.raises(gd.GraphDSLError, match="one shape"):
        gd.stack_columns({"a": a, "b": b})
    with pytest.raises(gd.GraphDSLError, match=r"ignore names \['z'\]"):
        gd.stack_columns({"a": a}, ignore=["z"])
    with pytest.raises(gd.GraphDSLError, match="no column is left"):
        gd.stack_columns({"a": a}, ignore="a")


@gd.register_function("axon_misc_sin")
def sin(x, *, xp):
    return xp.sin(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nx_applies_the_function(backend):
    model = gd.nx(gd.input("input", (None, 10)), sin)
    x = R.standard_normal((1, 10)).astype(np.float32)
    assert model.op == "custom" and model.attrs["fn_name"] == "axon_misc_sin"
    np.testing.assert_allclose(_run(model, x, backend), np.sin(x), rtol=1e-6)


# -- graph functions --------------------------------------------------------------------------
def _mlp():
    x = gd.input("x", (None, 4))
    return gd.tanh(gd.relu(gd.dense(gd.relu(gd.dense(x, 8)), 3)))


def test_reduce_nodes_visits_each_node_once_output_first():
    model = _mlp()
    # Axon's doc example: the number of relu layers
    assert gd.reduce_nodes(model, 0, lambda n, acc: acc + (n.op == "relu")) == 2
    ops = gd.reduce_nodes(model, [], lambda n, acc: acc + [n.op])
    assert ops == ["tanh", "relu", "dense", "relu", "dense", "input"]  # Axon's order
    # Axon's get_inputs is a reduce_nodes; a node shared by two paths is visited once
    x = gd.input("x", (None, 4))
    shared = gd.relu(x)
    m = gd.add(gd.tanh(shared), gd.sigmoid(shared))
    assert gd.reduce_nodes(m, {}, lambda n, acc: {**acc, n.name: n.shape}
                           if n.op == "input" else acc) == gd.get_inputs(m)
    assert gd.reduce_nodes(m, 0, lambda n, acc: acc + 1) == len(gd.topo_order(m)) == 5


def test_pop_node_returns_the_output_and_the_rest():
    model = _mlp()
    top, rest = gd.pop_node(model)
    assert top is model and top.op == "tanh" and rest is model.inputs[0]
    st = gd.build(model)[0]()
    x = R.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(np.tanh(gd.predict(rest, st, x)), gd.predict(model, st, x),
                               rtol=1e-6)
    a, b = gd.input("a", (None, 2)), gd.input("b", (None, 2))
    assert gd.pop_node(gd.add(a, b))[1] == [a, b]
    assert gd.pop_node(gd.container([a, b]))[1] == (a, b)
    assert gd.pop_node(gd.container({"p": a, "q": b}))[1] == {"p": a, "q": b}
    with pytest.raises(gd.GraphDSLError, match="without parents"):
        gd.pop_node(a)


def test_get_options_and_properties():
    x = gd.input("x", (None, 4))
    model = gd.dropout(gd.leaky_relu(gd.dense(x, 3, name="fc")), 0.2)
    assert gd.get_options(model) == {"rate": 0.2}
    assert gd.get_options(model, "fc")["units"] == 3
    assert gd.get_options(model, "leaky_relu_0") == {"alpha": 0.01}
    assert gd.properties(model) == {"x": "input", "fc": "dense", "leaky_relu_0": "leaky_relu",
                                    "dropout_0": "dropout"}
    with pytest.raises(gd.GraphDSLError, match=r"(?s)no layer named 'fc2'.*'fc'"):
        gd.get_options(model, "fc2")


def test_set_options_rebuilds_the_layers_and_keeps_names_and_state():
    x = gd.input("x", (None, 4))
    model = gd.dense(gd.leaky_relu(gd.dense(x, 3)), 2)
    st = gd.build(model)[0]()
    v = R.standard_normal((5, 4)).astype(np.float32)
    new = gd.set_options(model, {"leaky_relu_0": {"alpha": 0.5}})
    assert gd.get_options(new, "leaky_relu_0") == {"alpha": 0.5}
    assert gd.get_options(model, "leaky_relu_0") == {"alpha": 0.01}  # the model is unchanged
    assert gd.properties(new) == gd.properties(model)
    K0, b0 = st.data["dense_0"]["kernel"], st.data["dense_0"]["bias"]
    h = v @ K0 + b0
    ref = np.where(h > 0, h, 0.5 * h) @ st.data["dense_1"]["kernel"] + st.data["dense_1"]["bias"]
    np.testing.assert_allclose(gd.predict(new, st, v), ref, rtol=1e-5, atol=1e-6)
    # a size change re-infers the layers after it; the names (state keys) stay
    wide = gd.set_options(model, {"dense_0": {"units": 6}})
    assert gd.get_parameters(wide)["dense_1"]["kernel"].shape == (6, 2)
    assert list(gd.get_parameters(wide)) == ["dense_0", "dense_1"]
    with pytest.raises(gd.GraphDSLError, match="no layer named"):
        gd.set_options(model, {"dense_9": {"units": 2}})
    with pytest.raises(gd.GraphDSLError, match=r"(?s)units must be a positive.*dense_0"):
        gd.set_options(model, {"dense_0": {"units": 0}})
    with pytest.raises(gd.GraphDSLError, match="no option"):
        gd.set_options(model, {"dense_0": {"unit": 4}})
    with pytest.raises(gd.GraphDSLError, match="set_options takes"):
        gd.set_options(model, {"dense_0": 4})
