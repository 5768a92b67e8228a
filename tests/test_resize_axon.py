"""Axon's resize, bilinear and spatial / alpha / feature_alpha dropout (issue 22) against
Axon and torch.

References: Axon's layers tests (test/axon/layers_test.exs: resize "methods" and "without
anti-aliasing", values computed in jax; the rank checks), its documented examples
(lib/axon/layers.ex: resize channels first, bilinear) and compiler tests (parameter shapes,
use_bias, initializers); :func:`jax_resize`, jax's ``scale_and_translate`` written out one
output at a time in float64; torch's ``F.interpolate`` (nearest-exact, bilinear, and the
antialiased bilinear and bicubic, whose filters are jax's), ``F.bilinear`` and
``F.alpha_dropout``. Every model runs on NumPy, torch, the to_torch module and ONNX
Runtime; the op-case rows (tests/op_cases.py) add JSON, files and the empty batch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import export_and_run

import graphdsl as gd
from graphdsl import GraphDSLError

R = np.random.default_rng(22)
TOL = {"rtol": 1e-5, "atol": 1e-5}
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
ALPHA_P = -SELU_ALPHA * SELU_SCALE


def outputs(model: gd.Node, feed: dict, st: gd.ModelState | None = None
            ) -> dict[str, np.ndarray]:
    """The model's inference output on NumPy, torch, the to_torch module and ONNX."""
    st = st if st is not None else gd.build(model)[0](feed)
    outs = {"numpy": np.asarray(gd.predict(model, st, feed)),
            "torch": gd.predict(model, st, feed, backend="torch").numpy()}
    names = list(gd.get_inputs(model))
    with torch.no_grad():
        outs["module"] = gd.to_torch(model, st).eval()(
            *[torch.from_numpy(feed[k]) for k in names]).numpy()
    outs["onnx"] = export_and_run(model, st, feed)[0][0]
    return outs


def assert_all(model: gd.Node, feed: dict, want: np.ndarray, tol=TOL, st=None) -> None:
    for backend, got in outputs(model, feed, st).items():
        assert got.shape == want.shape, backend
        np.testing.assert_allclose(got, want, **tol, err_msg=backend)


def iota(*shape) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.float32).reshape(shape)


# -- resize: references --------------------------------------------------------------------
def _cubic(x: float) -> float:  # Keys' cubic convolution kernel, a = -0.5
    a = -0.5
    if x < 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


FILTERS = {"bilinear": lambda x: max(0.0, 1.0 - x), "bicubic": _cubic,
           "lanczos3": lambda x: float(np.sinc(x) * np.sinc(x / 3)) if x <= 3 else 0.0,
           "lanczos5": lambda x: float(np.sinc(x) * np.sinc(x / 5)) if x <= 5 else 0.0}


def jax_axis(x: np.ndarray, axis: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """jax.image.scale_and_translate on one axis (no translation), one output at a time:
    output j samples (j + 0.5) * n_in / n_out - 0.5 with the filter widened by the scale
    when antialiasing a downsampling; weights normalized, tiny ones (<= 1000 * 2**-23)
    dropped; nearest takes floor((j + 0.5) * n_in / n_out)."""
    x = np.moveaxis(x.astype(np.float64), axis, 0)
    n_in = x.shape[0]
    inv = n_in / n_out
    out = np.empty((n_out, *x.shape[1:]))
    for j in range(n_out):
        if method == "nearest":
            out[j] = x[min(int(math.floor((j + 0.5) * inv)), n_in - 1)]
            continue
        scale = max(1.0, inv) if antialias else 1.0
        center = (j + 0.5) * inv - 0.5
        w = np.array([FILTERS[method](abs(center - i) / scale) for i in range(n_in)])
        total = w.sum()
        w = np.where(np.abs(w) > 1000 * 2.0**-23, w / (total if total else 1.0), 0.0)
        out[j] = np.tensordot(w, x, axes=1)
    return np.moveaxis(out, 0, axis)


def jax_resize(x: np.ndarray, size, method: str, antialias: bool = True,
               channels: str = "last") -> np.ndarray:
    axes = (1, 2) if channels == "last" else (2, 3)
    for axis, n in zip(axes, size):
        if x.shape[axis] != n:
            x = jax_axis(x, axis, n, method, antialias)
    return x


def resize_model(shape, size, **kw) -> gd.Node:
    return gd.resize(gd.input("x", (None, *shape[1:])), size, **kw)


# -- resize: Axon's values -----------------------------------------------------------------
# layers_test.exs "methods": iota {1, 2, 2, 3} resized to {3, 3}, values computed in jax
AXON_METHODS = {
    "nearest": [[[0, 1, 2], [3, 4, 5], [3, 4, 5]], [[6, 7, 8], [9, 10, 11], [9, 10, 11]],
                [[6, 7, 8], [9, 10, 11], [9, 10, 11]]],
    "bilinear": [[[0, 1, 2], [1.5, 2.5, 3.5], [3, 4, 5]], [[3, 4, 5], [4.5, 5.5, 6.5],
                                                           [6, 7, 8]],
                 [[6, 7, 8], [7.5, 8.5, 9.5], [9, 10, 11]]],
    "bicubic": [[[-0.5921, 0.4079, 1.4079], [1.1053, 2.1053, 3.1053],
                 [2.8026, 3.8026, 4.8026]],
                [[2.8026, 3.8026, 4.8026], [4.5, 5.5, 6.5], [6.1974, 7.1974, 8.1974]],
                [[6.1974, 7.1974, 8.1974], [7.8947, 8.8947, 9.8947],
                 [9.5921, 10.5921, 11.5921]]],
    "lanczos3": [[[-1.1173, -0.1173, 0.8827], [0.7551, 1.7551, 2.7551],
                  [2.6276, 3.6276, 4.6276]],
                 [[2.6276, 3.6276, 4.6276], [4.5, 5.5, 6.5], [6.3724, 7.3724, 8.3724]],
                 [[6.3724, 7.3724, 8.3724], [8.2449, 9.2449, 10.2449],
                  [10.1173, 11.1173, 12.1173]]],
    "lanczos5": [[[-1.3525, -0.3525, 0.6475], [0.5984, 1.5984, 2.5984],
                  [2.5492, 3.5492, 4.5492]],
                 [[2.5492, 3.5492, 4.5492], [4.5, 5.5, 6.5], [6.4508, 7.4508, 8.4508]],
                 [[6.4508, 7.4508, 8.4508], [8.4016, 9.4016, 10.4016],
                  [10.3525, 11.3525, 12.3525]]],
}


@pytest.mark.parametrize("method", list(AXON_METHODS))
def test_resize_axon_methods(method):
    x = iota(1, 2, 2, 3)
    want = np.array([AXON_METHODS[method]], np.float32)
    exact = method in ("nearest", "bilinear")
    # Axon's (jax's) values are given to 4 decimals (Axon's own check: atol 1e-3)
    tol = {"rtol": 0, "atol": 1e-6} if exact else {"rtol": 0, "atol": 6e-5}
    model = resize_model(x.shape, (3, 3), method=method)
    assert gd.build(model)[0]().data == {}  # Axon's "initializes with no params"
    assert_all(model, {"x": x}, want, tol)
    np.testing.assert_allclose(jax_resize(x, (3, 3), method), want, **tol)


def test_resize_axon_without_antialias():
    """layers_test.exs "without anti-aliasing": bicubic iota {1, 4, 4, 3} -> {3, 3}
    (downsampling, where antialias matters) and {1, 2, 2, 3} -> {3, 3} (no effect)."""
    down = np.array([[[1.5427, 2.5427, 3.5427], [5.7341, 6.7341, 7.7341],
                      [9.9256, 10.9256, 11.9256]],
                     [[18.3085, 19.3085, 20.3085], [22.5, 23.5, 24.5],
                      [26.6915, 27.6915, 28.6915]],
                     [[35.0744, 36.0744, 37.0744], [39.2659, 40.2659, 41.2659],
                      [43.4573, 44.4573, 45.4573]]], np.float32)[None]
    tol = {"rtol": 0, "atol": 6e-5}  # 4 decimals given
    x = iota(1, 4, 4, 3)
    assert_all(resize_model(x.shape, (3, 3), method="bicubic", antialias=False), {"x": x},
               down, tol)
    antialiased = np.asarray(gd.predict(resize_model(x.shape, (3, 3), method="bicubic"),
                                        gd.ModelState(), x))
    assert np.abs(antialiased - down).max() > 0.1  # the option does something here
    up = np.array([AXON_METHODS["bicubic"]], np.float32)
    assert_all(resize_model((1, 2, 2, 3), (3, 3), method="bicubic", antialias=False),
               {"x": iota(1, 2, 2, 3)}, up, tol)


def test_resize_axon_doc_example_channels_first():
    want = np.array([[[[0, 1, 1, 2], [3, 4, 4, 5], [3, 4, 4, 5], [6, 7, 7, 8]]]], np.float32)
    x = iota(1, 1, 3, 3)
    assert_all(resize_model(x.shape, (4, 4), channels="first"), {"x": x}, want)


# -- resize: jax's formula and torch -------------------------------------------------------
@pytest.mark.parametrize("method", list(AXON_METHODS))
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matches_scale_and_translate(method, antialias):
    x = R.standard_normal((2, 7, 5, 3)).astype(np.float32)
    for size in [(4, 9), (13, 2)]:  # down and up on each axis
        model = resize_model(x.shape, size, method=method, antialias=antialias)
        assert_all(model, {"x": x}, jax_resize(x, size, method, antialias).astype(np.float32),
                   {"rtol": 1e-5, "atol": 2e-5})


def test_resize_channels_first_is_channels_last_transposed():
    x = R.standard_normal((2, 3, 6, 5)).astype(np.float32)
    for method in AXON_METHODS:
        first = resize_model(x.shape, (4, 8), method=method, channels="first")
        want = jax_resize(x.transpose(0, 2, 3, 1), (4, 8), method).transpose(0, 3, 1, 2)
        assert_all(first, {"x": x}, want.astype(np.float32), {"rtol": 1e-5, "atol": 2e-5})


SIZES = [((7, 6), (4, 9)), ((8, 8), (3, 5)), ((5, 4), (13, 11)), ((9, 7), (2, 3))]


@pytest.mark.parametrize("hw,size", SIZES)
def test_resize_matches_torch_interpolate(hw, size):
    """nearest = torch's nearest-exact; bilinear without antialias = torch's bilinear
    (align_corners=False); antialiased bilinear and bicubic = torch's antialias=True
    (its antialiased bicubic uses Keys a = -0.5 as jax does), up and down."""
    x = R.standard_normal((2, 3, *hw)).astype(np.float32)
    t = torch.from_numpy(x)
    pairs = [({"method": "nearest"}, {"mode": "nearest-exact"}),
             ({"method": "bilinear", "antialias": False}, {"mode": "bilinear"}),
             ({"method": "bilinear"}, {"mode": "bilinear", "antialias": True}),
             ({"method": "bicubic"}, {"mode": "bicubic", "antialias": True})]
    for ours, theirs in pairs:
        if theirs["mode"] != "nearest-exact":
            theirs["align_corners"] = False
        want = F.interpolate(t, size, **theirs).numpy()
        assert_all(resize_model(x.shape, size, channels="first", **ours), {"x": x}, want,
                   {"rtol": 1e-5, "atol": 2e-6})


def test_resize_bicubic_without_antialias_is_not_torch_bicubic():
    """jax's bicubic (a = -0.5, weights renormalized at the edges) is not torch's plain
    bicubic (a = -0.75, edges clamped): a recorded difference, not a bug."""
    x = R.standard_normal((1, 1, 5, 4)).astype(np.float32)
    ours = np.asarray(gd.predict(resize_model(x.shape, (9, 7), method="bicubic",
                                              channels="first"), gd.ModelState(), x))
    theirs = F.interpolate(torch.from_numpy(x), (9, 7), mode="bicubic",
                           align_corners=False).numpy()
    assert np.abs(ours - theirs).max() > 1e-2


def test_resize_gradient_matches_torch():
    x = R.standard_normal((2, 3, 6, 5)).astype(np.float32)
    g = R.standard_normal((2, 3, 4, 8)).astype(np.float32)
    for ours, theirs in [({"method": "bilinear"}, {"mode": "bilinear", "antialias": True}),
                         ({"method": "nearest"}, {"mode": "nearest-exact"})]:
        if "antialias" in theirs:
            theirs["align_corners"] = False
        model = resize_model(x.shape, (4, 8), channels="first", **ours)
        xt = torch.tensor(x, requires_grad=True)
        (gd.to_torch(model, gd.ModelState())(xt) * torch.from_numpy(g)).sum().backward()
        xr = torch.tensor(x, requires_grad=True)
        (F.interpolate(xr, (4, 8), **theirs) * torch.from_numpy(g)).sum().backward()
        np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_resize_unchanged_axes_and_identity():
    x = R.standard_normal((2, 4, 5, 3)).astype(np.float32)
    for method in AXON_METHODS:
        assert_all(resize_model(x.shape, (4, 5), method=method), {"x": x}, x)
        want = jax_resize(x, (4, 2), method).astype(np.float32)  # height kept as it is
        np.testing.assert_allclose(want[:, :, :, :], jax_axis(x, 2, 2, method, True),
                                   rtol=1e-6, atol=1e-6)
        assert_all(resize_model(x.shape, (4, 2), method=method), {"x": x}, want,
                   {"rtol": 1e-5, "atol": 2e-5})


@pytest.mark.parametrize("build,match", [
    (lambda: gd.resize(gd.input("x", (None, 4, 3)), (2, 2)), "rank-4 input"),
    (lambda: gd.resize(gd.input("x", (None, 2, 4, 4, 3)), (2, 2)), "rank-4 input"),
    (lambda: gd.resize(gd.input("x", (None, None, 4, 3)), (2, 2)), "known spatial sizes"),
    (lambda: gd.resize(gd.input("x", (None, 3, 4, None)), (2, 2), channels="first"),
     "known spatial sizes"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), (2, 2), method="foo"),
     "method must be one of nearest, bilinear, bicubic, lanczos3, lanczos5"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), 2), "size must be a pair"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), (2, 0)), "size must be a positive"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), (2, 2), antialias=1),
     "antialias must be True or False"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), (2, 2), channels="middle"),
     "channels must be 'last' or 'first'"),
    (lambda: gd.resize(gd.input("x", (None, 4, 4, 3)), (2**16, 2**16)), "positions per"),
])
def test_resize_refusals(build, match):
    with pytest.raises(GraphDSLError, match=match) as e:
        build()
    assert "op resize" in str(e.value) and "test_resize_axon.py" in str(e.value)


# -- bilinear --------------------------------------------------------------------------------
def bilinear_model(s1, s2, units, **kw):
    return gd.bilinear(gd.input("a", s1), gd.input("b", s2), units, name="bl", **kw)


def test_bilinear_axon_doc_example():
    """Axon.Layers.bilinear's example: iota {3, 2}, iota {3, 4}, kernel iota {1, 2, 4},
    bias 1.0 -> [[39], [455], [1319]]."""
    model = bilinear_model((None, 2), (None, 4), 1)
    st = gd.build(model)[0]()
    st.data["bl"]["kernel"] = iota(1, 2, 4)
    st.data["bl"]["bias"] = np.ones(1, np.float32)
    assert_all(model, {"a": iota(3, 2), "b": iota(3, 4)},
               np.array([[39.0], [455.0], [1319.0]], np.float32), st=st)


def test_bilinear_axon_parameters():
    """compiler_test.exs: kernel {units, in1, in2}, bias {units}; use_bias: false has no
    bias; the initializers are honoured."""
    st = gd.build(bilinear_model((None, 1), (None, 2), 1))[0]()
    assert st.data["bl"]["kernel"].shape == (1, 1, 2) and st.data["bl"]["bias"].shape == (1,)
    assert st.data["bl"]["kernel"].dtype == np.float32
    assert not np.all(st.data["bl"]["kernel"] == 0)  # glorot_uniform
    st = gd.build(bilinear_model((None, 1), (None, 2), 1, use_bias=False))[0]()
    assert set(st.data["bl"]) == {"kernel"}
    st = gd.build(bilinear_model((None, 1), (None, 2), 1, kernel_initializer="zeros",
                                 bias_initializer="ones"))[0]()
    assert np.all(st.data["bl"]["kernel"] == 0) and np.all(st.data["bl"]["bias"] == 1)


@pytest.mark.parametrize("lead", [(4,), (4, 3), (2, 3, 2)])
def test_bilinear_matches_torch(lead):
    """torch's F.bilinear (``(*, in1)``, ``(*, in2)``, weight ``[out, in1, in2]``: Axon's
    kernel layout), rank 2 to 4, and its gradients through to_torch."""
    s1, s2 = (None, *lead[1:], 3), (None, *lead[1:], 5)
    a = R.standard_normal((*lead, 3)).astype(np.float32)
    b = R.standard_normal((*lead, 5)).astype(np.float32)
    model = bilinear_model(s1, s2, 4)
    st = gd.build(model)[0]()
    st.data["bl"]["bias"] = R.standard_normal(4).astype(np.float32)
    k, bias = (torch.tensor(np.asarray(st.data["bl"][n]), requires_grad=True)
               for n in ("kernel", "bias"))
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ref = F.bilinear(at, bt, k, bias)
    assert_all(model, {"a": a, "b": b}, ref.detach().numpy(), st=st)
    ref.square().sum().backward()
    mod = gd.to_torch(model, st)
    a2, b2 = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    mod(a2, b2).square().sum().backward()
    np.testing.assert_allclose(a2.grad.numpy(), at.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b2.grad.numpy(), bt.grad.numpy(), rtol=1e-5, atol=1e-5)
    (kernel,) = [p for p in mod.parameters() if tuple(p.shape) == (4, 3, 5)]
    np.testing.assert_allclose(kernel.grad.numpy(), k.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_bilinear_activation_and_no_bias():
    model = bilinear_model((None, 3), (None, 2), 2, use_bias=False, activation="tanh")
    assert model.op == "tanh"
    a, b = iota(2, 3) / 10, iota(2, 2) / 10
    st = gd.build(model)[0]()
    k = np.asarray(st.data["bl"]["kernel"])
    want = np.tanh(np.einsum("ni,uij,nj->nu", a, k, b))
    assert_all(model, {"a": a, "b": b}, want.astype(np.float32), st=st)


@pytest.mark.parametrize("s1,s2,match", [
    ((None,), (None, 2), "one rank >= 2"),
    ((None, 2, 3), (None, 2), "one rank >= 2"),
    ((None, 3, 2), (None, 4, 2), "agree on every axis but the last"),
    ((None, None), (None, 2), "known last"),
])
def test_bilinear_refusals(s1, s2, match):
    with pytest.raises(GraphDSLError, match=match) as e:
        bilinear_model(s1, s2, 2)
    assert "op bilinear" in str(e.value)
    with pytest.raises(GraphDSLError, match="units must be a positive integer"):
        bilinear_model((None, 2), (None, 2), 0)


def test_bilinear_refuses_unequal_run_time_sizes():
    model = bilinear_model((None, 2), (None, 3), 1)
    st = gd.build(model)[0]()
    for backend in ("numpy", "torch"):
        with pytest.raises(GraphDSLError, match="agree on every axis but the last"):
            gd.predict(model, st, {"a": iota(3, 2), "b": iota(1, 3)}, backend=backend)


# -- dropouts ----------------------------------------------------------------------------------
DROPOUTS = {"spatial_dropout": gd.spatial_dropout, "alpha_dropout": gd.alpha_dropout,
            "feature_alpha_dropout": gd.feature_alpha_dropout}


def train_outputs(model: gd.Node, x: np.ndarray) -> dict[str, np.ndarray]:
    """Train-mode outputs: NumPy and torch (the layer's key) and the to_torch module
    (torch's RNG); the key advances on NumPy and torch."""
    st = gd.build(model)[0]()
    (layer,) = st.data
    outs = {}
    for backend in ("numpy", "torch"):
        run = gd.build(model, backend=backend, mode="train")[1]
        r1 = run(st, x)
        assert not np.array_equal(np.asarray(r1["state"].data[layer]["key"]),
                                  np.asarray(st.data[layer]["key"])), backend
        again = run(st, x)["prediction"]  # Axon's "same key results in same mask"
        y = np.asarray(r1["prediction"]) if backend == "numpy" else r1["prediction"].numpy()
        np.testing.assert_array_equal(y, np.asarray(again) if backend == "numpy"
                                      else again.numpy())
        outs[backend] = y
    torch.manual_seed(0)
    with torch.no_grad():
        outs["module"] = gd.to_torch(model, st).train()(torch.from_numpy(x)).numpy()
    return outs


@pytest.mark.parametrize("op", list(DROPOUTS))
def test_dropouts_are_the_identity_at_inference(op):
    shape = (2, 3, 4, 5)
    x = R.standard_normal(shape).astype(np.float32)
    model = DROPOUTS[op](gd.input("x", (None, *shape[1:])), 0.5)
    assert_all(model, {"x": x}, x, {"rtol": 0, "atol": 0})
    st = gd.build(model)[0]()
    assert [set(v) for v in st.data.values()] == [{"key"}]
    for backend in ("numpy", "torch"):  # rate 0: the identity in train mode too
        zero = DROPOUTS[op](gd.input("x", (None, *shape[1:])), 0.0)
        y = gd.build(zero, backend=backend, mode="train")[1](gd.build(zero)[0](), x)
        np.testing.assert_array_equal(np.asarray(y["prediction"]), x)


@pytest.mark.parametrize("channels", ["last", "first"])
def test_spatial_dropout_shares_one_draw_over_the_channels(channels):
    """Axon's noise shape: the channel axis is 1, so every channel at a (batch, position)
    is kept (scaled by 1/keep_prob) or dropped together (torch's Dropout2d shares over
    positions instead)."""
    rate, q = 0.3, 0.7
    x = (iota(4, 10, 9, 3) + 1) if channels == "last" else (iota(4, 3, 10, 9) + 1)
    model = gd.spatial_dropout(gd.input("x", (None, *x.shape[1:])), rate, channels=channels)
    c_axis = 3 if channels == "last" else 1
    for backend, y in train_outputs(model, x).items():
        kept = np.isclose(y, x / q, rtol=1e-6)
        assert np.all(kept | (y == 0)), backend
        assert np.all(kept.all(c_axis) | (~kept).all(c_axis)), backend  # per position
        frac = kept.all(c_axis).mean()
        assert abs(frac - q) < 0.08, (backend, frac)  # 360 draws
        assert 0 < frac < 1


@pytest.mark.parametrize("channels", ["last", "first"])
def test_feature_alpha_dropout_follows_axon(channels):
    """Axon's code: spatial_dropout's mask; kept x / keep_prob, dropped -selu(x)."""
    rate, q = 0.4, 0.6
    shape = (4, 8, 9, 3) if channels == "last" else (4, 3, 8, 9)
    x = R.standard_normal(shape).astype(np.float32) * 2
    selu = SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
    model = gd.feature_alpha_dropout(gd.input("x", (None, *shape[1:])), rate,
                                     channels=channels)
    c_axis = 3 if channels == "last" else 1
    for backend, y in train_outputs(model, x).items():
        kept = np.isclose(y, x / q, rtol=1e-5, atol=1e-6)
        dropped = np.isclose(y, -selu, rtol=1e-5, atol=1e-6)
        assert np.all(kept | dropped), backend
        k = kept.all(c_axis)
        assert np.all(k | dropped.all(c_axis)), backend  # one draw per position
        assert abs(k.mean() - q) < 0.09 and 0 < k.mean() < 1, backend


def test_alpha_dropout_keeps_mean_and_variance():
    """The paper's (torch's) constants: on a standard-normal input the output keeps mean
    0 and variance 1; every element is a*x + b (kept) or a*alpha' + b (dropped)."""
    rate = 0.3
    q = 1 - rate
    a = (q + ALPHA_P**2 * q * (1 - q)) ** -0.5
    b = -a * (1 - q) * ALPHA_P
    x = R.standard_normal((64, 4096)).astype(np.float32)
    model = gd.alpha_dropout(gd.input("x", (None, 4096)), rate)
    for backend, y in train_outputs(model, x).items():
        kept = np.isclose(y, a * x + b, rtol=1e-5, atol=1e-5)
        dropped = np.isclose(y, a * ALPHA_P + b, rtol=1e-6, atol=1e-6)
        assert np.all(kept | dropped), backend
        assert abs((~kept).mean() - rate) < 0.01, backend
        assert abs(y.mean()) < 0.02 and abs(y.var() - 1) < 0.02, (backend, y.mean(), y.var())
    # torch's F.alpha_dropout: its outputs take the same two forms (same a and b)
    t = F.alpha_dropout(torch.from_numpy(x), rate, True).numpy()
    assert np.all(np.isclose(t, a * x + b, rtol=1e-5, atol=1e-5)
                  | np.isclose(t, a * ALPHA_P + b, rtol=1e-6, atol=1e-6))
    # Axon's code, a = (q alpha'^2)^-1/2, b = -a alpha' rate, does not keep the variance
    a_axon = (q * ALPHA_P**2) ** -0.5
    assert abs(np.where(kept, a_axon * x - a_axon * ALPHA_P * rate,
                        a_axon * ALPHA_P - a_axon * ALPHA_P * rate).var() - 1) > 0.3


@pytest.mark.parametrize("op", ["spatial_dropout", "feature_alpha_dropout"])
def test_spatial_dropouts_refusals(op):
    """layers_test.exs: "expected input shape to have at least rank 3"; Axon's rate rule
    (>= 0 and < 1); channels last or first."""
    with pytest.raises(GraphDSLError, match="rank >= 3") as e:
        DROPOUTS[op](gd.input("x", (None, 4)))
    assert f"op {op}" in str(e.value)
    with pytest.raises(GraphDSLError, match="channels must be 'last' or 'first'"):
        DROPOUTS[op](gd.input("x", (None, 4, 3)), channels="middle")


@pytest.mark.parametrize("op", list(DROPOUTS))
@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan"), "0.5"])
def test_dropouts_refuse_bad_rates(op, rate):
    with pytest.raises(GraphDSLError, match=r"rate must be a number in \[0.0, 1.0\)"):
        DROPOUTS[op](gd.input("x", (None, 4, 3)), rate)
