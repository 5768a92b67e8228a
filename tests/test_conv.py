"""Convolutional ops against independent references: a loop-per-pixel NumPy conv written
from the XLA definition, torch.nn.functional, and torch.nn.BatchNorm / GroupNorm; on the
NumPy backend, the torch backend and the to_torch module."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphdsl as gd


def naive_conv(x, K, strides, pads, din, dk, groups):
    """XLA's conv_general_dilated, one output pixel at a time: x [N, *S, C] channels last,
    K [*k, C/groups, F]."""
    n = x.ndim - 2
    dil = [(s - 1) * d + 1 for s, d in zip(x.shape[1:-1], din)]
    xd = np.zeros((x.shape[0], *dil, x.shape[-1]))
    xd[(slice(None), *(slice(None, None, d) for d in din), slice(None))] = x
    xp = np.pad(xd, [(0, 0), *pads, (0, 0)])
    k = K.shape[:n]
    cg, f = K.shape[-2], K.shape[-1]
    fg = f // groups
    out = [(xp.shape[1 + i] - ((k[i] - 1) * dk[i] + 1)) // strides[i] + 1 for i in range(n)]
    y = np.zeros((x.shape[0], *out, f))
    for pos in itertools.product(*(range(o) for o in out)):
        for tap in itertools.product(*(range(kk) for kk in k)):
            idx = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dk))
            v = xp[(slice(None), *idx, slice(None))]  # [N, C]
            for g in range(groups):
                y[(slice(None), *pos, slice(g * fg, (g + 1) * fg))] += (
                    v[:, g * cg:(g + 1) * cg] @ K[tap][:, g * fg:(g + 1) * fg])
    return y


def nx_pads(spatial, k, dk, pad):
    """The (lo, hi) pairs of Nx's ``to_padding_config`` (Axon's "same"), written out here:
    the dilated window ``k' = (k-1)*d + 1`` is padded ``((k'-1)//2, (k'-1) - (k'-1)//2)``
    whatever the stride."""
    n = len(spatial)
    if pad == "valid":
        return [(0, 0)] * n
    if pad != "same":
        return [tuple(p) for p in pad]
    ks = k if isinstance(k, tuple) else (k,) * n
    ds = dk if isinstance(dk, tuple) else (dk,) * n
    spans = [(a - 1) * d + 1 for a, d in zip(ks, ds)]
    return [((w - 1) // 2, w - 1 - (w - 1) // 2) for w in spans]


def torch_flat(pads):
    """``F.pad``'s order: the last axis first, (lo, hi) each."""
    return [v for lo, hi in reversed(pads) for v in (lo, hi)]


def run_all(model, st, x):
    """Outputs of the NumPy backend, the torch backend and the to_torch module."""
    outs = [gd.predict(model, st, x)]
    outs.append(gd.predict(model, st, x, backend="torch").numpy())
    mod = gd.to_torch(model, st).eval()
    with torch.no_grad():
        outs.append(mod(torch.from_numpy(x)).numpy())
    return outs


CASES = [  # spatial, kernel, strides, padding, input_dilation, kernel_dilation, groups
    ((9,), 3, 1, "valid", 1, 1, 1),
    ((10,), 4, 2, "same", 1, 2, 2),
    ((7, 6), 3, 1, "same", 1, 1, 1),
    ((8, 7), (3, 2), (2, 1), [(2, 0), (1, 3)], 1, (1, 2), 1),
    ((5, 5), 3, 2, "same", 2, 1, 1),
    ((8, 7), (3, 4), 2, "same", 1, 1, 1),  # TensorFlow's "same" pads (0, 1), (1, 1) here
    ((9, 6), 2, (3, 2), "same", 1, (2, 1), 1),
    ((6, 6), 3, 1, "valid", 1, 1, 4),  # depthwise: groups = channels
    ((4, 5, 4), 2, (1, 2, 1), "same", 1, 1, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("channels", ["last", "first"])
def test_conv_matches_reference(case, channels, rng):
    spatial, k, s, pad, din, dk, g = case
    n = len(spatial)
    c, f = 4, 8
    xl = rng.normal(size=(2, *spatial, c)).astype(np.float32)
    inp = gd.input("x", (None, *spatial, c) if channels == "last" else (None, c, *spatial))
    model = gd.conv(inp, f, kernel_size=k, strides=s, padding=pad, input_dilation=din,
                    kernel_dilation=dk, feature_group_size=g, channels=channels,
                    activation="relu", name="c")
    st = gd.build(model)[0]()
    K = np.asarray(st.data["c"]["kernel"])
    b = rng.normal(size=f).astype(np.float32)
    st.data["c"]["bias"] = b
    hwio = K if channels == "last" else np.moveaxis(K, (0, 1), (-1, -2))
    each = lambda v: v if isinstance(v, tuple) else (v,) * n  # noqa: E731
    ref = np.maximum(naive_conv(xl, hwio, each(s), nx_pads(spatial, k, dk, pad), each(din),
                                each(dk), g) + b, 0)
    x = xl if channels == "last" else np.moveaxis(xl, -1, 1).copy()
    if channels == "first":
        ref = np.moveaxis(ref, -1, 1)
    assert model.shape[1:] == ref.shape[1:]
    for out in run_all(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_conv2d_equals_torch_conv2d_and_dynamic_sizes(rng):
    x = rng.normal(size=(3, 11, 9, 5)).astype(np.float32)
    model = gd.conv(gd.input("x", (None, None, None, 5)), 6, 3, strides=2, padding=[(1, 1),
                    (1, 1)], name="c")
    assert model.shape == (None, None, None, 6)
    assert gd.get_output_shape(model, (3, 11, 9, 5)) == (3, 6, 5, 6)
    st = gd.build(model)[0]()
    K, b = st.data["c"]["kernel"], st.data["c"]["bias"]
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                   torch.from_numpy(np.ascontiguousarray(K.transpose(3, 2, 0, 1))),
                   torch.tensor(np.asarray(b)), stride=2, padding=1).permute(0, 2, 3, 1)
    for out in run_all(model, st, x):
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("spatial,k,s,pad", [((9,), 3, None, "valid"), ((7, 6), 2, 1, "same"),
                                             ((6, 7), 3, 2, [(1, 1), (0, 1)]),
                                             ((4, 4, 5), 2, None, "valid"),
                                             ((7, 6), 3, 2, "same"), ((8, 9), 2, None, "same"),
                                             ((6, 5), (4, 3), 2, "same")])
def test_pools_match_torch(op, spatial, k, s, pad, rng):
    n = len(spatial)
    x = rng.normal(size=(2, *spatial, 3)).astype(np.float32)
    fn = getattr(gd, op)
    model = fn(gd.input("x", (None, *spatial, 3)), kernel_size=k, strides=s, padding=pad)
    flat = torch_flat(nx_pads(spatial, k, 1, pad))
    s = k if s is None else s  # Axon's pooling default
    xt = torch.from_numpy(x).movedim(-1, 1)
    if op == "max_pool":
        ref = getattr(F, f"max_pool{n}d")(F.pad(xt, flat, value=-np.inf), k, s)
    else:  # Axon's window_mean: padding counts as zeros
        ref = getattr(F, f"avg_pool{n}d")(F.pad(xt, flat), k, s)
    ref = ref.movedim(1, -1).numpy()
    for out in run_all(model, gd.ModelState.empty(), x):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_pool_defaults_and_global_pools(rng):
    x = rng.normal(size=(2, 6, 4, 3)).astype(np.float32)
    inp = gd.input("x", (None, 6, 4, 3))
    assert gd.max_pool(inp, 2).shape == (None, 3, 2, 3)  # strides default to kernel_size
    for op, red in (("global_avg_pool", np.mean), ("global_max_pool", np.max)):
        for keep in (False, True):
            model = getattr(gd, op)(inp, keep_axes=keep)
            ref = red(x, axis=(1, 2), keepdims=keep)
            assert model.shape == ((None, 1, 1, 3) if keep else (None, 3))
            for out in run_all(model, gd.ModelState.empty(), x):
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    first = gd.global_avg_pool(gd.input("x", (None, 3, 6, 4)), channels="first")
    xf = np.moveaxis(x, -1, 1).copy()
    np.testing.assert_allclose(gd.predict(first, gd.ModelState.empty(), xf), x.mean((1, 2)),
                               rtol=1e-5)


def _bn_model(axis=-1):
    return gd.batch_norm(gd.input("x", (None, 5, 4) if axis == -1 else (None, 4, 5)),
                         axis=axis, momentum=0.3, epsilon=1e-3, name="bn")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_batch_norm_train_and_inference_match_torch(backend, rng):
    model = _bn_model()
    x = rng.normal(size=(6, 5, 4)).astype(np.float32) * 2 + 1
    init, train = gd.build(model, backend=backend, mode="train")
    st = init()
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    st.data["bn"].update(gamma=gamma, beta=beta)
    ref = torch.nn.BatchNorm1d(4, eps=1e-3, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).permute(0, 2, 1)
    for _ in range(2):  # two steps: the running values move as torch moves them
        out = train(st, x)
        y_ref = ref.train()(xt).permute(0, 2, 1).detach().numpy()
        np.testing.assert_allclose(np.asarray(out["prediction"]), y_ref, rtol=1e-4,
                                   atol=1e-5)
        st = out["state"]
        np.testing.assert_allclose(st.data["bn"]["mean"], ref.running_mean, rtol=1e-5)
        np.testing.assert_allclose(st.data["bn"]["var"], ref.running_var, rtol=1e-5)
    assert ("bn", "mean") not in {(k, p) for k, v in st.trainable_parameters().items()
                                  for p in v}
    y = gd.predict(model, st, x, backend=backend)
    with torch.no_grad():
        y_ref = ref.eval()(xt).permute(0, 2, 1).numpy()
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-5)


def test_batch_norm_buffers_in_to_torch(rng):
    model = _bn_model(axis=1)
    st = gd.build(model)[0]()
    mod = gd.to_torch(model, st)
    assert not any("mean" in n or "var" in n for n, _ in mod.named_parameters())
    assert {"bn.mean", "bn.var"} <= set(dict(mod.named_buffers()))
    x = rng.normal(size=(6, 4, 5)).astype(np.float32) + 3
    ref = torch.nn.BatchNorm1d(4, eps=1e-3, momentum=0.3)
    mod.train()
    y = mod(torch.from_numpy(x))
    np.testing.assert_allclose(y.detach().numpy(), ref(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    back = gd.from_torch(mod)
    np.testing.assert_allclose(back.data["bn"]["mean"], ref.running_mean, rtol=1e-6)
    np.testing.assert_allclose(back.data["bn"]["var"], ref.running_var, rtol=1e-6)
    assert np.all(st.data["bn"]["mean"] == 0)  # the source state is untouched
    # the functional train step agrees with the module's step
    got = gd.build(model, mode="train")[1](st, x)["state"]
    np.testing.assert_allclose(got.data["bn"]["var"], back.data["bn"]["var"], rtol=1e-5)
    mod64 = gd.to_torch(model, st, dtype="float64")
    assert mod64.bn.mean.dtype == torch.float64


@pytest.mark.parametrize("axis,shape", [(-1, (3, 5, 4, 6)), (1, (3, 6, 7))])
def test_group_norm_matches_torch(axis, shape, rng):
    x = rng.normal(size=shape).astype(np.float32)
    model = gd.group_norm(gd.input("x", (None, *shape[1:])), 3, axis=axis, name="gn")
    st = gd.build(model)[0]()
    c = shape[axis]
    gamma, beta = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    st.data["gn"].update(gamma=gamma, beta=beta)
    ref = F.group_norm(torch.from_numpy(x).movedim(axis, 1), 3, torch.from_numpy(gamma),
                       torch.from_numpy(beta), 1e-5).movedim(1, axis).numpy()
    for out in run_all(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_conv_gradients_match_torch(rng):
    """The to_torch module's conv gradients equal torch's own conv2d."""
    model = gd.conv(gd.input("x", (None, 6, 6, 3)), 4, 3, padding="same", name="c")
    st = gd.build(model)[0]()
    mod = gd.to_torch(model, st)
    x = torch.from_numpy(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    mod(x).square().sum().backward()
    W = torch.tensor(np.asarray(st.data["c"]["kernel"]).transpose(3, 2, 0, 1).copy(),
                     requires_grad=True)
    F.conv2d(x.permute(0, 3, 1, 2), W, torch.tensor(np.asarray(st.data["c"]["bias"])),
             padding=1).square().sum().backward()
    np.testing.assert_allclose(mod.c.kernel.grad.numpy(),
                               W.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make,msg", [
    (lambda x: gd.conv(x, 6, 3, feature_group_size=4, name="bad"), "feature_group_size=4"),
    (lambda x: gd.conv(x, 4, 9, name="bad"), "larger than the padded input"),
    (lambda x: gd.max_pool(x, 9, name="bad"), "larger than the padded input"),
    (lambda x: gd.conv(gd.input("v", (None, 6)), 4, 3, name="bad"), "spatial"),
    (lambda x: gd.conv(x, 4, (3, 3, 3), name="bad"), "spatial axes"),
    (lambda x: gd.conv(x, 4, 3, padding=[(1, 1)], name="bad"), "pairs"),
    (lambda x: gd.conv(x, 4, 3, padding="full", name="bad"), "padding"),
    (lambda x: gd.group_norm(x, 4, name="bad"), "num_groups=4"),
    (lambda x: gd.batch_norm(x, axis=0, name="bad"), "batch axis"),
])
def test_bad_configurations_are_errors_naming_the_layer(make, msg):
    x = gd.input("x", (None, 6, 6, 6))
    with pytest.raises(gd.GraphDSLError) as e:
        make(x)
    assert msg in str(e.value) and "bad" in str(e.value)


def test_batch_norm_single_value_in_training_is_an_error():
    model = gd.batch_norm(gd.input("x", (None, 3)), name="bn")
    for backend in ("numpy", "torch"):
        init, train = gd.build(model, backend=backend, mode="train")
        with pytest.raises(gd.GraphDSLError, match="bn"):
            train(init(), np.ones((1, 3), np.float32))


def test_cnn_json_roundtrip_and_table(rng):
    x = gd.input("x", (None, 8, 8, 1))
    h = gd.conv(x, 4, 3, padding=[(1, 1), (1, 1)], activation="relu", name="c1")
    h = gd.batch_norm(h, name="bn")
    h = gd.avg_pool(h, 2)
    y = gd.dense(gd.global_max_pool(h), 3, name="out")
    back = gd.from_json(gd.to_json(y))
    st = gd.build(y)[0]()
    xs = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(back, st, xs), gd.predict(y, st, xs))
    table = gd.display.as_table(y, {"x": (1, 8, 8, 1)})
    assert "conv" in table and "batch_norm" in table and "(1, 8, 8, 4)" in table


@pytest.mark.parametrize("channels", ["last", "first"])
@pytest.mark.parametrize("adapter", [None, "dora"])
def test_conv_activation_acts_on_the_output_in_its_own_layout(channels, adapter):
    """Axon applies a conv's activation to the output as laid out: softmax on its last
    axis (channels when channels="last", the last spatial axis when "first"). Every
    backend, the module, merged adapters and ONNX agree with torch's conv + softmax."""
    import torch.nn.functional as F

    from graphdsl import dora

    shape = (None, 6, 5, 3) if channels == "last" else (None, 3, 6, 5)
    x = gd.input("x", shape)
    model = gd.conv(x, 4, kernel_size=3, padding="same", channels=channels,
                    activation="softmax", name="c")
    if adapter:
        model = dora.adapt(model, ["c"], rank=2)
    xs = np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)
    st = gd.build(model, seed=1)[0]({"x": xs})
    if adapter:
        st.data["c_dora"]["B"] = np.full(st.data["c_dora"]["B"].shape, 0.1, np.float32)
    _, merged_st = gd.merge_adapters(model, st) if adapter else (model, st)
    K = torch.tensor(merged_st.data["c"]["kernel"])
    w = K if channels == "first" else K.permute(3, 2, 0, 1)
    xt = torch.tensor(xs if channels == "first" else xs.transpose(0, 3, 1, 2))
    pre = F.conv2d(xt, w, torch.tensor(merged_st.data["c"]["bias"]), padding=1)
    if channels == "last":
        pre = pre.permute(0, 2, 3, 1)
    want = torch.softmax(pre, -1).numpy()
    got = {"numpy": gd.predict(model, st, xs),
           "numpy train": gd.predict(model, st, xs, mode="train")["prediction"],
           "torch": gd.predict(model, st, xs, backend="torch"),
           "module": gd.to_torch(model, st)(torch.tensor(xs)).detach().numpy()}
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    proto = gd.to_onnx(model, st)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got["onnx"] = sess.run(None, {"x": xs})[0]
    for k, v in got.items():
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-5, err_msg=k)


def _onnx_run(model, st, x):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(gd.to_onnx(model, st).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("spatial", [(4, 4), (None, None)])
def test_same_padding_with_strides_is_axons_on_every_backend(spatial):
    """Nx's documented example (Nx.window_max, Axon's max_pool): 3x3 windows, stride 2,
    "same" on arange(16) as 4x4 give [[5, 7], [13, 15]] (TensorFlow's rule: [[10, 11],
    [14, 15]]); torch's max_pool2d(padding=1) is the same window. The mean and a conv with
    an even (asymmetric) window follow the same pads, and a dynamic size exports them."""
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    inp = gd.input("x", (None, *spatial, 1))
    xt = torch.from_numpy(x).movedim(-1, 1)
    st = gd.ModelState.empty()
    want = F.max_pool2d(xt, 3, 2, padding=1).movedim(1, -1).numpy()
    np.testing.assert_array_equal(want[0, ..., 0], [[5, 7], [13, 15]])
    mean = F.avg_pool2d(xt, 3, 2, padding=1, count_include_pad=True).movedim(1, -1).numpy()
    conv = gd.conv(inp, 2, (2, 3), strides=2, padding="same", name="c")
    cst = gd.build(conv)[0]({"x": x})
    K = torch.tensor(cst.data["c"]["kernel"]).permute(3, 2, 0, 1)
    cwant = F.conv2d(F.pad(xt, [1, 1, 0, 1]), K, torch.tensor(cst.data["c"]["bias"]),
                     stride=2).movedim(1, -1).numpy()
    for model, s, ref in ((gd.max_pool(inp, 3, strides=2, padding="same"), st, want),
                          (gd.avg_pool(inp, 3, strides=2, padding="same"), st, mean),
                          (conv, cst, cwant)):
        for name, out in zip(("numpy", "torch", "module"), run_all(model, s, x)):
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(_onnx_run(model, s, x), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("pads", [[(0, 2), (1, 0)], [(1, 1), (0, 2)], [(2, 0), (1, 1)]])
def test_torch_conv_asymmetric_padding(pads, rng):
    """Both pads of every axis reach the conv: torch backend and module against
    F.conv2d on an input padded by hand."""
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    model = gd.conv(gd.input("x", (None, 6, 5, 3)), 4, 3, strides=(1, 2), padding=pads,
                    name="c")
    st = gd.build(model)[0]()
    K = torch.tensor(st.data["c"]["kernel"]).permute(3, 2, 0, 1)
    xp = F.pad(torch.from_numpy(x).movedim(-1, 1), [pads[1][0], pads[1][1], pads[0][0],
                                                   pads[0][1]])
    ref = F.conv2d(xp, K, torch.tensor(st.data["c"]["bias"]), stride=(1, 2))
    ref = ref.movedim(1, -1).numpy()
    for out in run_all(model, st, x)[1:]:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,pad", [(3, [(2, 0), (0, 0)]), (2, [(0, 0), (0, 2)]),
                                   (4, [(1, 3), (0, 0)])])
def test_max_pool_padding_wider_than_half_the_window_is_an_error(k, pad):
    """torch refuses pads above kernel/2 (a window of padding only: -inf, NaN after)."""
    with pytest.raises(RuntimeError, match="pad should be"):
        F.max_pool2d(torch.zeros(1, 1, 6, 6), k, 1, padding=max(max(p) for p in pad))
    with pytest.raises(gd.GraphDSLError) as e:
        gd.max_pool(gd.input("x", (None, 6, 6, 1)), k, strides=1, padding=pad, name="mp")
    assert "'mp'" in str(e.value) and f"kernel_size {k}" in str(e.value)
    ok = [(min(lo, k // 2), min(hi, k // 2)) for lo, hi in pad]  # torch's limit is fine
    model = gd.max_pool(gd.input("x", (None, 6, 6, 1)), k, strides=1, padding=ok)
    out = gd.predict(model, gd.ModelState.empty(), np.ones((1, 6, 6, 1), np.float32))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("make,what", [
    (lambda x: gd.conv(x, 4, kernel_size=2**40, name="big"), "1099511627776"),
    (lambda x: gd.conv(x, 4, kernel_size=2**16, padding="same", name="big"), "4,294,967,296"),
    (lambda x: gd.conv(x, 2**20, kernel_size=(64, 64), name="big"), "12,884,901,888"),
    (lambda x: gd.max_pool(x, (2**16, 2**16), padding="same", name="big"), "4,294,967,296"),
    (lambda x: gd.conv(x, 4, 3, strides=2**40, name="big"), "1099511627776"),
    (lambda x: gd.avg_pool(x, 3, padding=[(2**40, 0), (0, 0)], name="big"), "1099511627776"),
])
def test_absurd_window_sizes_are_errors_at_construction(make, what):
    with pytest.raises(gd.GraphDSLError) as e:
        make(gd.input("x", (None, None, None, 3)))
    assert "'big'" in str(e.value) and what in str(e.value)


def test_numpy_values_as_options_act_as_python_values(rng):
    """NumPy integers and arrays for filters, kernel_size, strides, padding and channels
    build the layer Python values build, matching torch."""
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    inp = gd.input("x", (None, 3, 7, 6))
    model = gd.conv(inp, np.int64(4), kernel_size=np.array([3, 2]), strides=np.int32(2),
                    padding=np.array([[1, 0], [0, 2]]), channels=np.str_("first"), name="c")
    plain = gd.conv(inp, 4, kernel_size=(3, 2), strides=2, padding=[(1, 0), (0, 2)],
                    channels="first", name="c")
    assert model.attrs == plain.attrs and gd.to_json(model) == gd.to_json(plain)
    st = gd.build(model)[0]()
    ref = F.conv2d(F.pad(torch.from_numpy(x), [0, 2, 1, 0]),
                   torch.tensor(st.data["c"]["kernel"]),
                   torch.tensor(st.data["c"]["bias"]), stride=2).numpy()
    for out in run_all(model, st, x):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    pool = gd.max_pool(inp, np.array(2), strides=np.array([1, 2]), padding=np.array("same"),
                       channels=np.array("first"))
    assert pool.attrs == gd.max_pool(inp, 2, strides=(1, 2), padding="same",
                                     channels="first").attrs
    for bad in (np.array([[1.5, 0], [0, 0]]), np.zeros((2, 3), int), np.array(["same", "x"])):
        with pytest.raises(gd.GraphDSLError, match="padding"):
            gd.conv(inp, 4, 3, padding=bad, channels="first")
    with pytest.raises(gd.GraphDSLError, match="channels"):
        gd.conv(inp, 4, 3, channels=np.array(["first", "last"]))


GOLDEN = Path(__file__).parent / "golden"


def _tf_pads(size, k, s, dk=1):
    """TensorFlow's "same" (what format_version 1 meant), written out here."""
    span = (k - 1) * dk + 1
    total = max((-(-size // s) - 1) * s + span - size, 0)
    return total // 2, total - total // 2


def test_files_of_format_version_1_keep_their_same_padding():
    """same_stride_v1.gdsl was saved by graphdsl before "same" followed Axon (format_version
    1: a DoRA conv, max_pool and avg_pool with "same" and strides 2, a channels-first
    dilated conv), with the outputs it gave then. Loaded now it gives them exactly, on
    NumPy, torch and ONNX Runtime; the plain conv also matches torch with TensorFlow's pads
    written out here, and the same model built today (Axon's "same") differs."""
    z = np.load(GOLDEN / "same_stride_v1_outputs.npz")
    inputs = {"x": z["x"], "xf": z["xf"]}
    model, st = gd.load(GOLDEN / "same_stride_v1.gdsl")
    for backend in ("numpy", "torch"):
        out = gd.predict(model, st, inputs, backend=backend)
        for key in ("p", "a", "c2"):
            np.testing.assert_allclose(np.asarray(out[key]), z["out_" + key], rtol=1e-6,
                                       atol=2e-6 if backend == "torch" else 0, err_msg=key)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(gd.to_onnx(model, st).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    for name, got in zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)):
        key = next(k for k in ("p", "a", "c2") if name.endswith(k))
        np.testing.assert_allclose(got, z["out_" + key], rtol=1e-5, atol=1e-5)
    pads = [*_tf_pads(8, 3, 3, dk=2), *_tf_pads(9, 2, 2)]  # c2: (1, 2), (0, 1)
    assert pads == [1, 2, 0, 1]
    xp = F.pad(torch.from_numpy(z["xf"]), pads[2:] + pads[:2])
    c2 = {k: torch.tensor(v) for k, v in st.data["c2"].items()}
    ref = F.conv2d(xp, c2["kernel"], c2["bias"], stride=(3, 2), dilation=(2, 1)).numpy()
    np.testing.assert_allclose(z["out_c2"], ref, rtol=1e-5, atol=1e-5)
    today = gd.conv(gd.input("xf", (None, 2, 8, 9)), 2, (3, 2), strides=(3, 2),
                    kernel_dilation=(2, 1), padding="same", channels="first", name="c2")
    now = gd.predict(today, gd.ModelState({"c2": st.data["c2"]}), z["xf"])
    assert np.abs(now - z["out_c2"]).max() > 0.1
    # saved again, the file is of today's version with the pads written out
    doc = json.loads(gd.to_json(model))
    assert doc["format_version"] == 2
    assert {n["name"]: n["attrs"]["padding"] for n in doc["nodes"] if n["name"] in
            ("p1", "c2")} == {"p1": [[0, 1], [1, 1]], "c2": [[1, 2], [0, 1]]}


def test_adapter_files_of_format_version_1_keep_their_same_padding():
    """same_stride_v1_adapters.gdsl (saved with the model above by the old code) loads into
    that model as loaded today; a model adapted today with padding="same" (Axon's pads)
    is refused, naming the pads the adapters were trained with, and one whose sizes give
    both rules the same pads is accepted."""
    model, st = gd.load(GOLDEN / "same_stride_v1.gdsl")
    base = gd.ModelState({k: v for k, v in st.data.items() if k != "c1_dora"})
    got = gd.load_adapters(GOLDEN / "same_stride_v1_adapters.gdsl", model, base)
    for k, v in st.data["c1_dora"].items():
        np.testing.assert_array_equal(got.data["c1_dora"][k], v)
    for size, ok in ((10, False), (9, True)):  # TensorFlow's pads (0, 1) / (1, 1) on width
        conv = gd.conv(gd.input("x", (None, 11, size, 2)), 3, 3, strides=2, padding="same",
                       name="c1")
        today = gd.dora.adapt(conv, ["c1"], rank=2)
        base = gd.ModelState({"c1": {k: np.zeros_like(v) for k, v in
                                     gd.build(conv)[0]().data["c1"].items()}})
        if ok:
            gd.load_adapters(GOLDEN / "same_stride_v1_adapters.gdsl", today, base)
            continue
        with pytest.raises(gd.GraphDSLError) as e:
            gd.load_adapters(GOLDEN / "same_stride_v1_adapters.gdsl", today, base)
        assert "c1_dora" in str(e.value) and "[[1, 1], [0, 1]]" in str(e.value)


def _v1_doc(shape, strides):
    return {"format_version": 1, "inputs": [{"name": "x", "shape": shape}],
            "nodes": [{"op": "max_pool", "name": "mp", "inputs": ["x"],
                       "attrs": {"kernel_size": 3, "strides": strides, "padding": "same"}}],
            "outputs": "mp"}


def test_format_version_1_same_padding_over_unknown_sizes():
    """Where the old rule needs a size the file leaves unknown, loading says so; where it
    does not (stride 1), the layer keeps "same"."""
    with pytest.raises(gd.GraphDSLError) as e:
        gd.from_json(_v1_doc([None, None, 6, 1], 2))
    assert "'mp'" in str(e.value) and "format_version 1" in str(e.value)
    assert gd.from_json(_v1_doc([None, None, None, 1], 1)).attrs["padding"] == "same"
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    old = gd.from_json(_v1_doc([None, 4, 4, 1], 2))  # TensorFlow's pads: (0, 1) each
    np.testing.assert_array_equal(gd.predict(old, gd.ModelState.empty(), x)[0, ..., 0],
                                  F.max_pool2d(F.pad(torch.from_numpy(x[..., 0])[None],
                                                     [0, 1, 0, 1], value=-np.inf), 3, 2)[0, 0])
    with pytest.raises(gd.GraphDSLError, match="format_version 3"):
        gd.from_json({**_v1_doc([None, 4, 4, 1], 2), "format_version": 3})


def test_batch_norm_state_updates_reach_the_buffers_under_torch_compile(rng):
    """The module writes a kernel's state updates to its buffers (one place): two train
    steps under torch.compile(fullgraph=True) move the running statistics as
    nn.BatchNorm's do, and an eval step leaves them alone."""
    model = _bn_model(axis=1)
    mod = gd.to_torch(model, gd.build(model)[0]())
    ref = torch.nn.BatchNorm1d(4, eps=1e-3, momentum=0.3)
    compiled = torch.compile(mod, fullgraph=True, backend="eager")
    mod.train()
    for _ in range(2):
        x = torch.from_numpy(rng.normal(size=(6, 4, 5)).astype(np.float32) + 3)
        np.testing.assert_allclose(compiled(x).detach().numpy(), ref(x).detach().numpy(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mod.bn.mean.numpy(), ref.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(mod.bn.var.numpy(), ref.running_var.numpy(), rtol=1e-6)
    mod.eval()
    before = mod.bn.var.clone()
    compiled(torch.ones(2, 4, 5))
    assert torch.equal(mod.bn.var, before)
