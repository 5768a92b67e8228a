"""instance_norm (Axon's: per instance over the spatial axes in training, the running
statistics at inference) and the gamma/beta initializer options of the norms, against
torch.nn.functional.instance_norm and the shapes and options of Axon's compiler tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphdsl as gd

BACKENDS = ("numpy", "torch")


def _model(**kw):
    return gd.instance_norm(gd.input("x", (None, 5, 4, 3)), name="in", **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm_train_matches_torch_and_moves_running_values(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 3)).astype(np.float32) * 2 + 1
    model = _model(momentum=0.3, epsilon=1e-3)
    init, train = gd.build(model, backend=backend, mode="train")
    st = init()
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    st.data["in"].update(gamma=gamma, beta=beta)
    rm, rv = torch.zeros(3), torch.ones(3)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    for _ in range(2):  # two steps: the running values move as torch moves them
        out = train(st, x)
        ref = F.instance_norm(xt, rm, rv, torch.from_numpy(gamma), torch.from_numpy(beta),
                              True, 0.3, 1e-3).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(out["prediction"]), ref, rtol=1e-4, atol=1e-5)
        st = out["state"]
        np.testing.assert_allclose(st.data["in"]["mean"], rm.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.data["in"]["var"], rv.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm_inference_uses_the_running_statistics(backend):
    """Axon's :inference mode: normalize(input, ra_mean, ra_var, gamma, beta)."""
    x = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3) / 4
    model = gd.instance_norm(gd.input("x", (None, 3, 2, 2)), axis=1, name="in")
    st = gd.build(model)[0]()
    mean, var = np.float32([0.5, -1, 2]), np.float32([1, 4, 0.25])
    gamma, beta = np.float32([1, 2, 3]), np.float32([0, 1, -1])
    st.data["in"].update(mean=mean, var=var, gamma=gamma, beta=beta)
    x = x.reshape(2, 3, 2, 2)
    c = (slice(None), None, None)
    want = (x - mean[c]) / np.sqrt(var[c] + 1e-5) * gamma[c] + beta[c]
    np.testing.assert_allclose(np.asarray(gd.predict(model, st, x, backend=backend)), want,
                               rtol=1e-5, atol=1e-6)


def test_instance_norm_params_and_state_as_axon_initializes_them():
    """Axon's compiler test: input {nil, 2, 2, 3} gives gamma, beta, mean, var of {3}."""
    st = gd.build(gd.instance_norm(gd.input("x", (None, 2, 2, 3)), name="norm"))[0]()
    assert {k: v.shape for k, v in st.data["norm"].items()} == {
        "gamma": (3,), "beta": (3,), "mean": (3,), "var": (3,)}
    assert all(v.dtype == np.float32 for v in st.data["norm"].values())
    np.testing.assert_array_equal(st.data["norm"]["mean"], 0)
    np.testing.assert_array_equal(st.data["norm"]["var"], 1)


@pytest.mark.parametrize("make", [
    lambda x, **kw: gd.batch_norm(x, name="norm", **kw),
    lambda x, **kw: gd.group_norm(x, 3, name="norm", **kw),
    lambda x, **kw: gd.instance_norm(x, name="norm", **kw),
    lambda x, **kw: gd.layer_norm(x, name="norm", **kw),
], ids=["batch_norm", "group_norm", "instance_norm", "layer_norm"])
def test_gamma_and_beta_initializers(make):
    """Axon's "initializes with custom initializers": gamma_initializer: :zeros, then
    beta_initializer: :ones; the others keep their defaults (ones, zeros)."""
    x = gd.input("x", (None, 2, 2, 3))
    st = gd.build(make(x))[0]()
    np.testing.assert_array_equal(st.data["norm"]["gamma"], np.ones(3, np.float32))
    np.testing.assert_array_equal(st.data["norm"]["beta"], np.zeros(3, np.float32))
    st = gd.build(make(x, gamma_initializer="zeros"))[0]()
    np.testing.assert_array_equal(st.data["norm"]["gamma"], 0)
    np.testing.assert_array_equal(st.data["norm"]["beta"], 0)
    model = make(x, beta_initializer="ones")
    st = gd.build(gd.from_json(gd.to_json(model)))[0]()
    np.testing.assert_array_equal(st.data["norm"]["gamma"], 1)
    np.testing.assert_array_equal(st.data["norm"]["beta"], 1)
    with pytest.raises(gd.GraphDSLError, match="unknown gamma_initializer 'nope'"):
        make(x, gamma_initializer="nope")


def test_instance_norm_needs_a_spatial_axis():
    """Axon: "rank of input shape must be at least 3"."""
    with pytest.raises(gd.GraphDSLError, match="instance_norm") as err:
        gd.instance_norm(gd.input("x", (None, 3)), name="in")
    assert "test_norms_axon.py" in str(err.value)
    with pytest.raises(gd.GraphDSLError, match="batch axis"):
        gd.instance_norm(gd.input("x", (None, 2, 3)), axis=0)


def test_instance_norm_single_value_per_instance_in_training_is_an_error():
    model = gd.instance_norm(gd.input("x", (None, 1, 3)), name="in")
    for backend in BACKENDS:
        init, train = gd.build(model, backend=backend, mode="train")
        with pytest.raises(gd.GraphDSLError, match="layer 'in'"):
            train(init(), np.ones((2, 1, 3), np.float32))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 1, 3)])
def test_instance_norm_training_without_statistics_is_one_error(backend, shape):
    """No instance (an empty batch) or one value per instance: no statistics to take, the
    same GraphDSLError on both backends, never NaN running values."""
    model = gd.instance_norm(gd.input("x", (None, None, 3)), name="inorm")
    st = gd.build(model)[0]()
    run = gd.build(model, backend=backend, mode="train")[1]
    with pytest.raises(gd.GraphDSLError, match=r"instance_norm in training needs more than 1 "
                       r"value per instance and channel, and at least one instance"):
        run(st, np.ones(shape, np.float32))


def _rms(x: np.ndarray, gamma: np.ndarray, **kw) -> np.ndarray:
    model = gd.rms_norm(gd.input("x", (None,) + x.shape[1:]), name="rms", **kw)
    state = gd.build(model)[0]()
    state.data["rms"]["gamma"] = gamma.astype(np.float32)
    return gd.predict(model, state, {"x": x.astype(np.float32)})


def test_rms_norm_axon_values():
    """Axon's layers_test "rms_norm: matches pytorch 2D input" and "with ones weight"."""
    x = np.array([[1.9269, 1.4873, 0.9007, -2.1055, 0.6784, -1.2345, -0.0431, -1.6047],
                  [-0.7521, 1.6487, -0.3925, -1.4036, -0.7279, -0.5594, -0.7688, 0.7624]])
    g = np.array([0.4617, 0.2674, 0.5349, 0.8094, 1.1103, -1.6898, -0.9890, 0.9580])
    want = [[0.6344, 0.2836, 0.3436, -1.2153, 0.5372, 1.4877, 0.0304, -1.0962],
            [-0.3605, 0.4576, -0.2179, -1.1793, -0.8390, 0.9814, 0.7893, 0.7582]]
    np.testing.assert_allclose(_rms(x, g), want, atol=1e-3)
    x = np.array([[0.6127, -1.1754, -0.7646, -0.6666], [0.7444, -0.6453, -1.3890, -0.2730]])
    want = [[0.7342, -1.4084, -0.9163, -0.7987], [0.8632, -0.7483, -1.6108, -0.3165]]
    np.testing.assert_allclose(_rms(x, np.ones(4)), want, atol=1e-3)


def test_rms_norm_shift_and_gamma_initializer():
    """Axon's ``shift`` scales by ``shift + gamma`` (Gemma's ``1 + weight``): equal to
    torch's RMSNorm with weight ``shift + gamma``, on NumPy, torch and after a JSON round
    trip; ``gamma_initializer`` sets the initial gamma."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(3, 5, 8)), rng.normal(size=8)
    ref = torch.nn.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(1.0 + g, dtype=torch.float32))
    want = ref(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(_rms(x, g, shift=1.0), want, rtol=1e-5, atol=1e-5)
    model = gd.from_json(gd.to_json(gd.rms_norm(gd.input("x", (None, 8)), shift=1.0,
                                                gamma_initializer="zeros", name="rms")))
    state = gd.build(model)[0]()
    np.testing.assert_array_equal(state.data["rms"]["gamma"], 0)
    xs = x[0].astype(np.float32)
    for backend in ("numpy", "torch"):
        y = gd.predict(model, state, {"x": xs}, backend=backend)
        np.testing.assert_allclose(np.asarray(y), xs / np.sqrt((xs ** 2).mean(-1, keepdims=True)
                                                                + 1e-6), rtol=1e-5, atol=1e-6)
    with pytest.raises(gd.GraphDSLError, match="shift"):
        gd.rms_norm(gd.input("x", (None, 8)), shift=float("inf"))
