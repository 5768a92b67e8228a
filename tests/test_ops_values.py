"""Every core op against a hand-written NumPy reference (values, not just shapes)."""
import math

import numpy as np
import pytest

import graphdsl as gd


def run(model, state_data=None, inputs=None, dtype="float32", seed=0):
    init, pred = gd.build(model, seed=seed, dtype=dtype)
    st = init(None, gd.ModelState(state_data or {}))
    return pred(st, inputs), st


def erf(x):
    return np.vectorize(math.erf)(x)


REF_ACT = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "log_softmax": lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "softplus": lambda x: np.log1p(np.exp(x)),
}


@pytest.mark.parametrize("act", sorted(REF_ACT))
def test_activation_values(act, rng):
    x = rng.normal(size=(3, 5, 7)).astype(np.float64) * 3
    model = gd.activation(gd.input("x", (None, 5, 7)), act)
    out, _ = run(model, inputs=x, dtype="float64")
    np.testing.assert_allclose(out, REF_ACT[act](x), rtol=1e-6, atol=1e-6)
    out32, _ = run(model, inputs=x.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, REF_ACT[act](x), rtol=1e-5, atol=1e-5)


def test_activation_options(rng):
    x = rng.normal(size=(4, 6))
    inp = gd.input("x", (None, 6))
    out, _ = run(gd.leaky_relu(inp, alpha=0.2), inputs=x, dtype="float64")
    np.testing.assert_allclose(out, np.where(x > 0, x, 0.2 * x))
    out, _ = run(gd.elu(inp, alpha=0.5), inputs=x, dtype="float64")
    np.testing.assert_allclose(out, np.where(x > 0, x, 0.5 * (np.exp(x) - 1)))
    out, _ = run(gd.softmax(inp, axis=0), inputs=x, dtype="float64")
    np.testing.assert_allclose(out, np.exp(x) / np.exp(x).sum(0, keepdims=True))
    out, _ = run(gd.gelu(inp, approximate=True), inputs=x, dtype="float64")
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(out, ref)


@pytest.mark.parametrize("dtype, tol", [("float32", 2e-6), ("float64", 1e-10)])
def test_gelu_is_exact_to_rounding_against_torch(dtype, tol):
    """The erf form over [-10, 10], densely near -3.5 where 1 + erf(x/sqrt 2) cancels:
    relative error against torch in float64 (F.gelu where its own 1 + erf is exact,
    |x| < 5; beyond, torch's erfc form, since F.gelu in float64 cancels there too)."""
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-10, 10, 20_001), np.linspace(-3.6, -3.4, 2_001)])
    x = x[x != 0].astype(dtype).reshape(-1, 1)
    out, _ = run(gd.gelu(gd.input("x", (None, 1))), inputs=x, dtype=dtype)
    assert out.dtype == dtype
    X = torch.from_numpy(x.astype(np.float64))
    near = np.abs(x) < 5
    ref = np.where(near, torch.nn.functional.gelu(X).numpy(),
                   (0.5 * X * torch.special.erfc(-X / math.sqrt(2))).numpy())
    rel = np.abs(out - ref) / np.abs(ref)
    assert rel.max() <= tol, (rel.max(), x.ravel()[rel.argmax()])


def test_extreme_inputs_stay_finite():
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], np.float32)
    inp = gd.input("x", (None, 5))
    for act in REF_ACT:
        out, _ = run(gd.activation(inp, act), inputs=x)
        assert np.all(np.isfinite(out)), act


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6), (2, 2, 2, 6), (6,)])
def test_dense_any_rank(shape, rng):
    x = rng.normal(size=shape)
    sym = (None,) * (len(shape) - 1) + (6,)
    model = gd.dense(gd.input("x", sym), 5, activation="tanh", name="fc")
    K, b = rng.normal(size=(6, 5)), rng.normal(size=5)
    out, st = run(model, {"fc": {"kernel": K, "bias": b}}, x, dtype="float64")
    np.testing.assert_allclose(out, np.tanh(x @ K + b), rtol=1e-12)
    assert out.shape == shape[:-1] + (5,)


def test_dense_no_bias_and_initializers():
    model = gd.dense(gd.input("x", (None, 3)), 2, use_bias=False, kernel_initializer="ones",
                     name="fc")
    out, st = run(model, inputs=np.ones((1, 3), np.float32))
    assert "bias" not in st.data["fc"]
    np.testing.assert_array_equal(out, [[3.0, 3.0]])


def test_arithmetic_broadcasting(rng):
    a, b, c = rng.normal(size=(4, 1, 3)), rng.normal(size=(5, 3)), rng.normal(size=(3,))
    ia, ib = gd.input("a", (None, 1, 3)), gd.input("b", (5, 3))
    ic = gd.constant(c)
    feed = {"a": a, "b": b}
    out, _ = run(gd.add([ia, ib, ic]), inputs=feed, dtype="float64")
    np.testing.assert_allclose(out, a + b + c.astype(np.float32), rtol=1e-6)
    out, _ = run(gd.subtract([ia, ib, ic]), inputs=feed, dtype="float64")
    np.testing.assert_allclose(out, a - b - c.astype(np.float32), rtol=1e-6)
    out, _ = run(gd.multiply(ia, ib), inputs=feed, dtype="float64")
    np.testing.assert_allclose(out, a * b)
    out, _ = run(ia * ib - ia + ib, inputs=feed, dtype="float64")
    np.testing.assert_allclose(out, a * b - a + b)


def test_concatenate(rng):
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    out, _ = run(gd.concatenate([gd.input("a", (None, 3, 4)), gd.input("b", (None, 5, 4))],
                                axis=1), inputs={"a": a, "b": b}, dtype="float64")
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=1))


def test_dropout_inference_identity_and_train_mask(rng):
    x = rng.normal(size=(64, 32)).astype(np.float32)
    model = gd.dropout(gd.input("x", (None, 32)), rate=0.25, name="drop")
    out, st = run(model, inputs=x)
    np.testing.assert_array_equal(out, x)
    init, pred = gd.build(model, mode="train", seed=3)
    st = init()
    r1 = pred(st, x)
    y = r1["prediction"]
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert 0.6 < kept.mean() < 0.9
    r2 = pred(r1["state"], x)  # the RNG advances through the returned state
    assert not np.array_equal(r2["prediction"] != 0, kept)
    np.testing.assert_array_equal(pred(st, x)["prediction"], y)  # same state, same mask
    assert st.data["drop"]["key"] is not r1["state"].data["drop"]["key"]
    assert "key" in st.entries["drop"] and st.parameter_count() == 0


def test_layer_norm(rng):
    x = rng.normal(size=(3, 4, 5))
    g, b = rng.normal(size=4), rng.normal(size=4)
    model = gd.layer_norm(gd.input("x", (None, 4, 5)), axis=1, name="ln")
    out, _ = run(model, {"ln": {"gamma": g, "beta": b}}, x, dtype="float64")
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * g[None, :, None] + b[None, :, None]
    np.testing.assert_allclose(out, ref, rtol=1e-10)


def test_embedding(rng):
    ids = rng.integers(0, 10, size=(2, 7))
    model = gd.embedding(gd.input("ids", (None, 7), dtype="int64"), 10, 3, name="emb")
    K = rng.normal(size=(10, 3))
    out, _ = run(model, {"emb": {"kernel": K}}, ids, dtype="float64")
    np.testing.assert_array_equal(out, K[ids])


def test_reshape_flatten_transpose_matmul(rng):
    x = rng.normal(size=(2, 4, 6))
    inp = gd.input("x", (None, 4, 6))
    out, _ = run(gd.reshape(inp, (None, 3, -1)), inputs=x, dtype="float64")
    np.testing.assert_array_equal(out, x.reshape(2, 3, 8))
    out, _ = run(gd.flatten(inp), inputs=x, dtype="float64")
    np.testing.assert_array_equal(out, x.reshape(2, 24))
    out, _ = run(gd.transpose(inp, (0, 2, 1)), inputs=x, dtype="float64")
    np.testing.assert_array_equal(out, x.transpose(0, 2, 1))
    out, _ = run(gd.transpose(inp), inputs=x, dtype="float64")
    np.testing.assert_array_equal(out, x.T)
    out, _ = run(gd.matmul(inp, gd.transpose(inp, (0, 2, 1))), inputs=x, dtype="float64")
    np.testing.assert_allclose(out, x @ x.transpose(0, 2, 1))
    w = gd.param("w", (6, 2))
    out, st = run(inp @ w, inputs=x, dtype="float64")
    np.testing.assert_allclose(out, x @ st.data["w"]["value"])


def test_flatten_empty_batch():
    out, _ = run(gd.flatten(gd.input("x", (None, 2, 3))), inputs=np.zeros((0, 2, 3)))
    assert out.shape == (0, 6)


def test_custom_layer_and_param(rng):
    def scaled_tanh(x, w, xp, scale=1.0):
        return xp.tanh(x @ w) * scale

    x = rng.normal(size=(3, 4))
    inp = gd.input("x", (None, 4))
    w = gd.param("w", (4, 2), initializer="normal")
    model = gd.layer(scaled_tanh, [inp, w], name="custom", scale=2.0)
    assert model.shape == (None, 2)
    out, st = run(model, inputs=x, dtype="float64")
    np.testing.assert_allclose(out, np.tanh(x @ st.data["w"]["value"]) * 2.0)


def test_container_outputs(rng):
    x = rng.normal(size=(2, 3)).astype(np.float32)
    inp = gd.input("x", (None, 3))
    a, b = gd.relu(inp), gd.tanh(inp)
    out, _ = run(gd.container((a, b)), inputs=x)
    assert isinstance(out, tuple) and len(out) == 2
    np.testing.assert_array_equal(out[0], np.maximum(x, 0))
    out, _ = run(gd.container({"r": a, "t": b}), inputs=x)
    assert list(out) == ["r", "t"]
    np.testing.assert_allclose(out["t"], np.tanh(x))
    assert gd.get_output_shape(gd.container({"r": a, "t": b}), (5, 3)) == {
        "r": (5, 3), "t": (5, 3)}


def test_multi_input_model_and_float_casting(rng):
    a = gd.input("a", (None, 3))
    b = gd.input("b", (None, 3))
    model = gd.dense(gd.concatenate([a, b]), 2, name="fc")
    init, pred = gd.build(model)
    st = init()
    out = pred(st, {"a": np.ones((2, 3)), "b": np.ones((2, 3), np.int32)})
    assert out.dtype == np.float32
    K, bias = st.data["fc"]["kernel"], st.data["fc"]["bias"]
    np.testing.assert_allclose(out, np.ones((2, 6)) @ K + bias, rtol=1e-6)


def test_gd_predict_matches_build(rng):
    model = gd.dense(gd.input("x", (None, 3)), 2)
    init, pred = gd.build(model)
    st = init()
    x = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(model, st, x), pred(st, x))


def test_replaced_state_value_is_used():
    model = gd.dense(gd.input("x", (None, 2)), 2, name="fc")
    init, pred = gd.build(model)
    st = init()
    x = np.ones((1, 2), np.float32)
    pred(st, x)
    st.data["fc"]["kernel"] = np.zeros((2, 2), np.float32)
    st.data["fc"]["bias"] = np.full(2, 7.0, np.float32)
    np.testing.assert_array_equal(pred(st, x), [[7.0, 7.0]])


def test_float64_state_cast_to_float32():
    model = gd.dense(gd.input("x", (None, 2)), 2, name="fc")
    init, pred = gd.build(model)
    st = init(None, gd.ModelState({"fc": {"kernel": np.eye(2), "bias": np.zeros(2)}}))
    assert st.data["fc"]["kernel"].dtype == np.float32
    st.data["fc"]["kernel"] = np.eye(2)  # float64 replaced after init
    assert pred(st, np.ones((1, 2))).dtype == np.float32
