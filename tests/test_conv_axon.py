"""Axon's conv variants: conv_transpose, depthwise_conv, separable_conv2d, separable_conv3d.

References: the expected numbers of Axon's test/axon/layers_test.exs (and the
Axon.Layers.conv_transpose doctest), the parameter shapes of compiler_test.exs and of the
Axon.Shape doctests, and torch: ``F.conv_transpose{1,2,3}d`` with the kernel flipped and
the output cropped to Axon's pads (written out here from Axon.Shape.conv_transpose_padding),
``F.conv{1,2,3}d`` with ``groups``. Each on the NumPy and torch backends, the to_torch
module and ONNX Runtime. Torch/ONNX/JSON/file/empty-batch parity of the op-case rows comes
from tests/op_cases.py.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import export_and_run

import graphdsl as gd
from graphdsl import GraphDSLError
from graphdsl.node import make_node

R = np.random.default_rng(22)
#: ONNX Runtime (the onnx extra) where installed: the export is checked against Axon too
BACKENDS = ["numpy", "torch"] + (["onnxruntime"] if all(
    importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")) else [])


def _predict(model: gd.Node, st: gd.ModelState, x: np.ndarray, backend: str) -> np.ndarray:
    if backend == "onnxruntime":
        return export_and_run(model, st, {next(iter(gd.get_inputs(model))): x})[0][0]
    return np.asarray(gd.predict(model, st, x, backend=backend))


def _iota(*shape: int) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _with(model: gd.Node, layer: str, **params: np.ndarray) -> gd.ModelState:
    return gd.build(model)[0](None, gd.ModelState({layer: params}))


def _outputs(model: gd.Node, st: gd.ModelState, x: np.ndarray) -> list[np.ndarray]:
    """The NumPy, torch and ONNX Runtime backends' outputs and the to_torch module's."""
    outs = [_predict(model, st, x, b) for b in BACKENDS]
    with torch.no_grad():
        outs.append(gd.to_torch(model, st).eval()(torch.from_numpy(x)).numpy())
    return outs


# -- conv_transpose: Axon's numbers ------------------------------------------------------------
# (input shape, kernel shape [out, in, *k], options, expected): layers_test.exs "conv_transpose"
# tests, all channels first with iota input and kernel and bias 0
AXON_TRANSPOSE = [
    ((1, 1, 4), (3, 1, 2), {"padding": "valid"},
     [[[0, 1, 2, 3, 0], [0, 3, 8, 13, 6], [0, 5, 14, 23, 12]]]),
    ((1, 1, 2, 2), (3, 1, 2, 2), {"padding": "valid", "strides": (2, 1)},
     [[[[0, 3, 2], [0, 1, 0], [6, 13, 6], [2, 3, 0]],
       [[0, 7, 6], [0, 5, 4], [14, 33, 18], [10, 23, 12]],
       [[0, 11, 10], [0, 9, 8], [22, 53, 30], [18, 43, 24]]]]),
    ((1, 1, 2, 2, 1), (3, 1, 2, 2, 1), {"padding": "valid", "strides": (1, 1, 2)},
     [[[[[0, 0], [3, 0], [2, 0]], [[6, 0], [14, 0], [6, 0]], [[2, 0], [3, 0], [0, 0]]],
       [[[0, 0], [7, 0], [6, 0]], [[14, 0], [38, 0], [22, 0]], [[10, 0], [23, 0], [12, 0]]],
       [[[0, 0], [11, 0], [10, 0]], [[22, 0], [62, 0], [38, 0]],
        [[18, 0], [43, 0], [24, 0]]]]]),
    ((3, 1, 2, 2), (1, 1, 2, 2), {"padding": "same"},
     [[[[0, 3], [6, 14]]], [[[12, 23], [22, 38]]], [[[24, 43], [38, 62]]]]),
    ((1, 3, 2, 2), (4, 3, 1, 2), {"padding": "same", "strides": (2, 1)},
     [[[[52, 101], [0, 0], [70, 131], [0, 0]], [[124, 263], [0, 0], [178, 365], [0, 0]],
       [[196, 425], [0, 0], [286, 599], [0, 0]], [[268, 587], [0, 0], [394, 833], [0, 0]]]]),
    ((1, 1, 2, 2), (1, 1, 2, 1), {"padding": [(0, 1), (1, 2)]},
     [[[[0, 2, 3, 0, 0], [0, 0, 0, 0, 0]]]]),
    ((1, 1, 2, 2), (1, 1, 2, 1), {"padding": [(0, 1), (1, 2)], "strides": (2, 1)},
     [[[[0, 0, 0, 0, 0], [0, 2, 3, 0, 0], [0, 0, 0, 0, 0]]]]),
    ((1, 1, 2, 4), (1, 1, 2, 3), {"padding": [(0, 1), (1, 2)], "strides": (2, 1),
                                  "kernel_dilation": (2, 1)},
     [[[[43, 67, 82, 49, 21], [0, 0, 0, 0, 0]]]]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xs,ks,opts,want", AXON_TRANSPOSE,
                         ids=[str(i) for i in range(len(AXON_TRANSPOSE))])
def test_conv_transpose_matches_axon(xs, ks, opts, want, backend):
    model = gd.conv_transpose(gd.input("x", (None, *xs[1:])), ks[0], ks[2:],
                              channels="first", use_bias=False, name="ct", **opts)
    st = _with(model, "ct", kernel=_iota(*ks))
    out = _predict(model, st, _iota(*xs), backend)
    np.testing.assert_array_equal(out, np.array(want, np.float32))
    assert model.shape[1:] == out.shape[1:]


def test_conv_transpose_doctest_with_bias():
    """Axon.Layers.conv_transpose's doctest: iota {1, 3, 3}, kernel iota {6, 3, 2}, bias 1."""
    model = gd.conv_transpose(gd.input("x", (None, 3, 3)), 6, 2, channels="first", name="ct")
    st = _with(model, "ct", kernel=_iota(6, 3, 2), bias=np.ones(6, np.float32))
    want = [[[40, 79, 94, 43], [94, 205, 256, 133], [148, 331, 418, 223],
             [202, 457, 580, 313], [256, 583, 742, 403], [310, 709, 904, 493]]]
    for out in _outputs(model, st, _iota(1, 3, 3)):
        np.testing.assert_array_equal(out, np.array(want, np.float32))


@pytest.mark.parametrize("strides", [1, (1, 2)])
def test_conv_transpose_channels_first_same_as_last(strides):
    """layers_test.exs: a kernel {3, 1, 4, 4} (first) transposed [2, 3, 1, 0] (last)."""
    x = R.normal(size=(1, 1, 28, 28)).astype(np.float32)
    k = R.normal(size=(3, 1, 4, 4)).astype(np.float32)
    first = gd.conv_transpose(gd.input("x", (None, 1, 28, 28)), 3, 4, strides=strides,
                              channels="first", use_bias=False, name="ct")
    last = gd.conv_transpose(gd.input("x", (None, 28, 28, 1)), 3, 4, strides=strides,
                             use_bias=False, name="ct")
    a = gd.predict(first, _with(first, "ct", kernel=k), x)
    b = gd.predict(last, _with(last, "ct", kernel=k.transpose(2, 3, 1, 0).copy()),
                   x.transpose(0, 2, 3, 1).copy())
    np.testing.assert_allclose(a, b.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_conv_transpose_params_as_axon():
    """compiler_test.exs "convolution transpose": shapes, dtypes, initializers, use_bias."""
    x = gd.input("input", (None, 2, 2, 3))
    st = gd.build(gd.conv_transpose(x, 32, name="conv"))[0]()
    assert {k: (v.shape, v.dtype) for k, v in st.data["conv"].items()} == {
        "kernel": ((1, 1, 3, 32), np.float32), "bias": ((32,), np.float32)}
    st = gd.build(gd.conv_transpose(x, 32, kernel_initializer="zeros", name="conv"))[0]()
    assert not st.data["conv"]["kernel"].any()
    st = gd.build(gd.conv_transpose(x, 1, use_bias=False, name="conv"))[0]()
    assert set(st.data["conv"]) == {"kernel"}
    first = gd.conv_transpose(gd.input("x", (None, 3, 28)), 64, 2, channels="first")
    assert [p.shape for p in first.params] == [(64, 3, 2), (64,)]


# -- conv_transpose against torch ---------------------------------------------------------------
def axon_transpose_pads(k: tuple, s: tuple, d: tuple, padding) -> list[tuple[int, int]]:
    """Axon.Shape.conv_transpose_padding, written out from the Elixir source."""
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    out = []
    for kk, ss, dd in zip(k, s, d):
        e = (kk - 1) * dd + 1
        if padding == "valid":
            total, lo = e + ss - 2 + max(e - ss, 0), e - 1
        else:
            total = e + ss - 2
            lo = e - 1 if ss > e - 1 else int(np.ceil(total / 2))
        out.append((lo, total - lo))
    return out


def torch_transpose(x: np.ndarray, K: np.ndarray, b: np.ndarray, s, pad, d) -> np.ndarray:
    """Axon's conv_transpose by torch: channels-last ``x``, HWIO ``K``. torch's output is
    Axon's with pads (k'-1, k'-1); F.pad crops (or zero-extends) it to Axon's pads."""
    n = x.ndim - 2
    k = K.shape[:n]
    W = torch.from_numpy(np.flip(K, tuple(range(n))).transpose(n, n + 1, *range(n)).copy())
    y = getattr(F, f"conv_transpose{n}d")(torch.from_numpy(np.moveaxis(x, -1, 1).copy()), W,
                                          stride=s, dilation=d)
    full = [(kk - 1) * dd for kk, dd in zip(k, d)]
    pads = axon_transpose_pads(k, s, d, pad)
    y = F.pad(y, [v for (lo, hi), f in reversed(list(zip(pads, full))) for v in (lo - f, hi - f)])
    return np.moveaxis(y.numpy(), 1, -1) + b


TRANSPOSE_CASES = [  # spatial, kernel, strides, padding, kernel_dilation
    ((5,), 3, 2, "valid", 1),
    ((5,), 3, 2, "same", 1),
    ((4,), 2, 3, "valid", 2),  # stride above the window: zeros between the windows
    ((4,), 1, 3, "same", 1),
    ((6, 5), (3, 2), (2, 1), "same", (1, 2)),
    ((7, 7), 3, 2, "same", 1),
    ((4, 4), 2, (1, 2), [(0, 1), (1, 2)], 2),
    ((4, 4), 3, 3, [(5, 0), (0, 6)], 1),  # pads wider than the window
    ((3, 4, 2), 2, (2, 1, 3), "valid", 1),
    ((3, 3, 3), (2, 3, 1), 2, "same", (2, 1, 1)),
]


@pytest.mark.parametrize("channels", ["last", "first"])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=[str(i) for i in range(len(TRANSPOSE_CASES))])
def test_conv_transpose_equals_torch_conv_transpose(case, channels):
    spatial, k, s, pad, d = case
    n, c, f = len(spatial), 3, 5
    each = lambda v: v if isinstance(v, tuple) else (v,) * n  # noqa: E731
    inp = gd.input("x", (None, *spatial, c) if channels == "last" else (None, c, *spatial))
    model = gd.conv_transpose(inp, f, k, strides=s, padding=pad, kernel_dilation=d,
                              channels=channels, name="ct")
    st = gd.build(model)[0]()
    b = R.normal(size=f).astype(np.float32)
    st.data["ct"]["bias"] = b
    K = st.data["ct"]["kernel"]
    hwio = K if channels == "last" else np.moveaxis(K, (0, 1), (-1, -2))
    xl = R.normal(size=(2, *spatial, c)).astype(np.float32)
    ref = torch_transpose(xl, hwio, b, each(s), pad, each(d))
    x = xl if channels == "last" else np.moveaxis(xl, -1, 1).copy()
    if channels == "first":
        ref = np.moveaxis(ref, -1, 1)
    assert model.shape[1:] == ref.shape[1:]
    for out in _outputs(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_output_sizes_are_axons():
    """"valid": n*s + max(k'-s, 0); "same": n*s, whatever the kernel and dilation."""
    x = gd.input("x", (None, 7, 32, 3))
    for k, s, d in [(3, 2, 1), (1, 3, 1), (4, 2, 2), (2, 5, 1)]:
        e = (k - 1) * d + 1
        valid = gd.conv_transpose(x, 2, k, strides=s, kernel_dilation=d)
        same = gd.conv_transpose(x, 2, k, strides=s, kernel_dilation=d, padding="same")
        assert valid.shape == (None, 7 * s + max(e - s, 0), 32 * s + max(e - s, 0), 2)
        assert same.shape == (None, 7 * s, 32 * s, 2)
    dyn = gd.conv_transpose(gd.input("x", (None, None, 4)), 2, 3, strides=2, padding="same")
    assert dyn.shape == (None, None, 2)
    assert gd.get_output_shape(dyn, (1, 9, 4)) == (1, 18, 2)


def test_conv_transpose_gradients_match_torch():
    """The to_torch module's gradients (input, kernel, bias) equal torch's own
    conv_transpose2d with the flipped kernel."""
    model = gd.conv_transpose(gd.input("x", (None, 5, 6, 3)), 4, 3, strides=2,
                              padding="same", name="ct")
    st = gd.build(model)[0]()
    st.data["ct"]["bias"] = R.normal(size=4).astype(np.float32)
    mod = gd.to_torch(model, st)
    x = torch.from_numpy(R.normal(size=(2, 5, 6, 3)).astype(np.float32)).requires_grad_()
    mod(x).square().sum().backward()
    K = np.asarray(st.data["ct"]["kernel"])  # [3, 3, C, F]
    W = torch.tensor(K[::-1, ::-1].transpose(2, 3, 0, 1).copy(), requires_grad=True)
    b = torch.tensor(np.asarray(st.data["ct"]["bias"]), requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = F.conv_transpose2d(x2.permute(0, 3, 1, 2), W, b, stride=2)[:, :, :10, :12]  # pads (2, 1)
    y.square().sum().backward()
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), **tol)
    np.testing.assert_allclose(mod.ct.kernel.grad.numpy(),
                               W.grad.numpy().transpose(2, 3, 0, 1)[::-1, ::-1], **tol)
    np.testing.assert_allclose(mod.ct.bias.grad.numpy(), b.grad.numpy(), **tol)


# -- depthwise_conv -----------------------------------------------------------------------------
def test_depthwise_conv_params_as_axon():
    """compiler_test.exs "depthwise convolution" and the Axon.Shape doctests."""
    x = gd.input("input", (None, 2, 2, 3))
    st = gd.build(gd.depthwise_conv(x, 3, name="conv"))[0]()
    assert {k: (v.shape, v.dtype) for k, v in st.data["conv"].items()} == {
        "kernel": ((1, 1, 1, 9), np.float32), "bias": ((9,), np.float32)}
    st = gd.build(gd.depthwise_conv(x, 3, kernel_initializer="zeros", name="conv"))[0]()
    assert not st.data["conv"]["kernel"].any()
    st = gd.build(gd.depthwise_conv(x, 1, use_bias=False, name="conv"))[0]()
    assert set(st.data["conv"]) == {"kernel"}
    for shape, m, k, ch, kernel in [((None, 3, 224, 224), 3, (3, 3), "first", (9, 1, 3, 3)),
                                    ((None, 3, 28), 2, (2,), "first", (6, 1, 2)),
                                    ((None, 1, 32, 32, 10), 1, (2, 1, 3), "first",
                                     (1, 1, 2, 1, 3)),
                                    ((None, 28, 28, 3), 2, (2, 2), "last", (2, 2, 1, 6))]:
        node = gd.depthwise_conv(gd.input("x", shape), m, k, channels=ch)
        assert [p.shape for p in node.params] == [kernel, (kernel[0 if ch == "first" else -1],)]


def torch_depthwise(x: np.ndarray, K: np.ndarray, b: np.ndarray, s, pads, d) -> np.ndarray:
    """F.conv{n}d with groups = channels on channels-last ``x``, HWIO ``K [*k, 1, C*m]``."""
    n = x.ndim - 2
    xt = F.pad(torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
               [v for lo, hi in reversed(pads) for v in (lo, hi)])
    W = torch.from_numpy(np.ascontiguousarray(np.moveaxis(K, (-1, -2), (0, 1))))
    y = getattr(F, f"conv{n}d")(xt, W, torch.from_numpy(b), stride=s, dilation=d,
                                groups=x.shape[-1])
    return np.moveaxis(y.numpy(), 1, -1)


DEPTHWISE_CASES = [  # spatial, multiplier, kernel, strides, padding (explicit), dilation
    ((9,), 2, 3, 2, [(1, 1)], 1),
    ((8, 7), 1, 3, 1, [(1, 1), (1, 1)], 1),
    ((8, 7), 3, (3, 2), (2, 1), [(2, 0), (1, 3)], (1, 2)),
    ((4, 5, 4), 2, 2, (1, 2, 1), [(0, 0)] * 3, 1),
]


@pytest.mark.parametrize("channels", ["last", "first"])
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[str(i) for i in range(len(DEPTHWISE_CASES))])
def test_depthwise_conv_equals_torch_grouped_conv(case, channels):
    spatial, m, k, s, pads, d = case
    n, c = len(spatial), 4
    each = lambda v: v if isinstance(v, tuple) else (v,) * n  # noqa: E731
    inp = gd.input("x", (None, *spatial, c) if channels == "last" else (None, c, *spatial))
    model = gd.depthwise_conv(inp, m, k, strides=s, padding=pads, kernel_dilation=d,
                              channels=channels, name="dw")
    st = gd.build(model)[0]()
    b = R.normal(size=c * m).astype(np.float32)
    st.data["dw"]["bias"] = b
    K = st.data["dw"]["kernel"]
    hwio = K if channels == "last" else np.moveaxis(K, (0, 1), (-1, -2))
    xl = R.normal(size=(2, *spatial, c)).astype(np.float32)
    ref = torch_depthwise(xl, hwio, b, each(s), pads, each(d))
    x = xl if channels == "last" else np.moveaxis(xl, -1, 1).copy()
    if channels == "first":
        ref = np.moveaxis(ref, -1, 1)
    for out in _outputs(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts,shape,m,k", [  # compiler_test.exs "custom options"
    ({"strides": 2, "padding": "same", "input_dilation": 2}, (8, 1), 1, 2),
    ({"strides": (1, 2), "padding": [(0, 1), (1, 2)], "kernel_dilation": 2}, (4, 4, 1), 8, 2),
    ({"strides": (2, 1, 1)}, (3, 2, 2, 1), 2, (2, 1, 1)),
])
def test_depthwise_conv_is_a_conv_grouped_by_channels(opts, shape, m, k):
    """Axon.Layers.depthwise_conv is conv with feature_group_size = the input channels."""
    x = gd.input("input", (None, *shape))
    model = gd.depthwise_conv(x, m, k, name="conv", **opts)
    conv = gd.conv(x, shape[-1] * m, k, feature_group_size=shape[-1], name="conv", **opts)
    st = gd.build(model)[0]()
    st.data["conv"]["bias"] = R.normal(size=shape[-1] * m).astype(np.float32)
    xs = R.normal(size=(2, *shape)).astype(np.float32)
    for out in _outputs(model, st, xs):
        np.testing.assert_allclose(out, gd.predict(conv, st, xs), rtol=1e-5, atol=1e-6)


def test_depthwise_conv_channels_last_same_as_first():
    """layers_test.exs: a kernel {6, 1, 4, 4} on {1, 3, 28, 28}."""
    x = R.normal(size=(1, 3, 28, 28)).astype(np.float32)
    k = R.normal(size=(6, 1, 4, 4)).astype(np.float32)
    first = gd.depthwise_conv(gd.input("x", (None, 3, 28, 28)), 2, 4, channels="first",
                              use_bias=False, name="dw")
    last = gd.depthwise_conv(gd.input("x", (None, 28, 28, 3)), 2, 4, use_bias=False,
                             name="dw")
    a = gd.predict(first, _with(first, "dw", kernel=k), x)
    b = gd.predict(last, _with(last, "dw", kernel=k.transpose(2, 3, 1, 0).copy()),
                   x.transpose(0, 2, 3, 1).copy())
    np.testing.assert_allclose(a, b.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


# -- separable_conv2d / separable_conv3d ---------------------------------------------------------
def test_separable_params_as_axon():
    """The Axon.Shape.separable_conv{2,3}d_kernel / _bias doctests."""
    two = gd.separable_conv2d(gd.input("x", (None, 3, 32, 32)), 3, (3, 3), channels="first")
    assert [(p.name, p.shape) for p in two.params] == [
        ("kernel_1", (9, 1, 3, 1)), ("bias_1", (9,)), ("kernel_2", (9, 1, 1, 3)),
        ("bias_2", (9,))]
    three = gd.separable_conv3d(gd.input("x", (None, 3, 32, 32, 3)), 4, (3, 3, 3),
                                channels="first", use_bias=False)
    assert [(p.name, p.shape) for p in three.params] == [
        ("kernel_1", (12, 1, 3, 1, 1)), ("kernel_2", (12, 1, 1, 3, 1)),
        ("kernel_3", (12, 1, 1, 1, 3))]
    last = gd.separable_conv3d(gd.input("x", (None, 8, 8, 8, 2)), 2, (2, 3, 4))
    assert [p.shape for p in last.params if p.name.startswith("kernel")] == [
        (2, 1, 1, 1, 4), (1, 3, 1, 1, 4), (1, 1, 4, 1, 4)]


@pytest.mark.parametrize("op,spatial,m,k,s,pads,di", [
    ("separable_conv2d", (9, 8), 2, (3, 2), 1, [(1, 1), (0, 1)], 1),
    ("separable_conv2d", (16, 16), 1, 3, 2, [(0, 0), (0, 0)], 1),  # strides on each conv
    ("separable_conv2d", (7, 6), 3, 2, (1, 2), [(1, 0), (0, 0)], (2, 1)),
    ("separable_conv3d", (6, 5, 7), 2, (3, 2, 2), (1, 1, 2), [(1, 1), (0, 0), (1, 0)], 1),
])
def test_separable_equals_chained_torch_depthwise_convs(op, spatial, m, k, s, pads, di):
    """Axon.Layers.separable_conv2d/3d: depthwise_conv with kernel_1, then kernel_2 (then
    kernel_3), each with the layer's strides, padding and input dilation."""
    c, n = 3, len(spatial)
    each = lambda v: v if isinstance(v, tuple) else (v,) * n  # noqa: E731
    model = getattr(gd, op)(gd.input("x", (None, *spatial, c)), m, k, strides=s,
                            padding=pads, input_dilation=di, name="sep")
    st = gd.build(model)[0]()
    for i in range(1, n + 1):
        st.data["sep"][f"bias_{i}"] = R.normal(size=c * m).astype(np.float32)
    x = R.normal(size=(2, *spatial, c)).astype(np.float32)
    ref = x
    for i in range(1, n + 1):
        din = each(di)
        sizes = [(v - 1) * dd + 1 for v, dd in zip(ref.shape[1:-1], din)]
        dil = np.zeros((2, *sizes, ref.shape[-1]), np.float32)
        dil[(slice(None), *(slice(None, None, dd) for dd in din))] = ref
        ref = torch_depthwise(dil, st.data["sep"][f"kernel_{i}"], st.data["sep"][f"bias_{i}"],
                              each(s), pads, (1,) * n)
    assert model.shape[1:] == ref.shape[1:]
    for out in _outputs(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,shape,perm", [
    ("separable_conv2d", (1, 3, 28, 28), (0, 2, 3, 1)),
    ("separable_conv3d", (1, 3, 8, 8, 8), (0, 2, 3, 4, 1)),
])
def test_separable_channels_last_same_as_first(op, shape, perm):
    """layers_test.exs: kernels {6, 1, 4, 1}, {6, 1, 1, 4} (and {6, 1, 1, 1, 4} in 3-d)."""
    x = R.normal(size=shape).astype(np.float32)
    first = getattr(gd, op)(gd.input("x", (None, *shape[1:])), 2, 4, channels="first",
                            name="sep")
    last = getattr(gd, op)(gd.input("x", (None, *np.array(shape)[list(perm)][1:])), 2, 4,
                           name="sep")
    st = gd.build(first)[0]()
    for name in list(st.data["sep"]):
        st.data["sep"][name] = R.normal(size=st.data["sep"][name].shape).astype(np.float32)
    kperm = (*range(2, len(shape)), 1, 0)
    st_last = gd.ModelState({"sep": {k: (v.transpose(kperm).copy() if k.startswith("kernel")
                                         else v) for k, v in st.data["sep"].items()}})
    a = gd.predict(first, st, x)
    b = gd.predict(last, st_last, x.transpose(perm).copy())
    np.testing.assert_allclose(a, b.transpose(0, len(shape) - 1, *range(1, len(shape) - 1)),
                               rtol=1e-5, atol=1e-5)


# -- activation= and the construction-time checks ------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda x: gd.conv_transpose(x, 4, 3, activation="relu", name="layer"),
    lambda x: gd.depthwise_conv(x, 2, 3, activation="relu", name="layer"),
    lambda x: gd.separable_conv2d(x, 2, 3, activation="relu", name="layer"),
])
def test_activation_is_a_node_after_the_layer(make):
    """Axon: ``activation:`` puts an activation layer after the conv (two nodes)."""
    y = make(gd.input("x", (None, 6, 6, 3)))
    assert y.op == "relu" and y.inputs[0].name == "layer"
    st = gd.build(y)[0]()
    st.data["layer"] = {k: R.normal(size=v.shape).astype(np.float32)
                        for k, v in st.data["layer"].items()}
    x = R.normal(size=(2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(y, st, x),
                                  np.maximum(gd.predict(y.inputs[0], st, x), 0))


@pytest.mark.parametrize("make,msg", [
    (lambda x: gd.conv_transpose(x, 4, 0, name="bad"), "kernel_size must be"),
    (lambda x: gd.conv_transpose(x, 4, (3, 3, 3), name="bad"), "3 entries for an input with 2"),
    (lambda x: gd.conv_transpose(x, 4, 3, strides=0, name="bad"), "strides must be"),
    (lambda x: gd.conv_transpose(x, 0, 3, name="bad"), "filters must be"),
    (lambda x: gd.conv_transpose(x, 4, 3, padding="full", name="bad"), "padding must be"),
    (lambda x: gd.conv_transpose(x, 4, 3, padding=[(1, 1)], name="bad"), "1 (lo, hi) pairs"),
    (lambda x: gd.conv_transpose(x, 4, 7, padding=[(0, 0), (0, 0)], name="bad"),
     "larger than the padded input"),
    (lambda x: gd.conv_transpose(x, 4, 3, channels="middle", name="bad"), "channels must be"),
    (lambda x: make_node("conv_transpose", [x], {"filters": 4, "input_dilation": 2}, "bad"),
     "has no option(s) ['input_dilation']"),
    (lambda x: gd.conv_transpose(x, 4, 3, activation="nope", name="bad"), "nope"),
    (lambda x: gd.conv_transpose(gd.input("v", (None, 6)), 4, 3, name="bad"), "spatial"),
    (lambda x: gd.conv_transpose(gd.input("v", (None, 6, 6, None)), 4, 3, name="bad"),
     "known channel axis"),
    (lambda x: gd.depthwise_conv(x, 0, 3, name="bad"), "channel_multiplier must be"),
    (lambda x: gd.depthwise_conv(x, 2, 3, input_dilation=0, name="bad"), "input_dilation"),
    (lambda x: gd.depthwise_conv(gd.input("v", (None, 2, 2, 2, 2, 3)), 2, 1, name="bad"),
     "1 to 3 spatial axes"),
    (lambda x: gd.separable_conv2d(gd.input("v", (None, 6, 3)), 2, 3, name="bad"),
     "2 spatial axes (rank 4)"),
    (lambda x: gd.separable_conv3d(x, 2, 3, name="bad"), "3 spatial axes (rank 5)"),
    (lambda x: gd.separable_conv2d(x, 2, 7, name="bad"), "(kernel_1) (span 7"),
])
def test_bad_configurations_are_errors_at_construction(make, msg):
    x = gd.input("x", (None, 6, 6, 3))
    with pytest.raises(GraphDSLError) as e:
        make(x)
    text = str(e.value)
    assert msg in text and "fix:" in text and "test_conv_axon.py" in text, text
