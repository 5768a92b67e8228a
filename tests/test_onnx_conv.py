"""ONNX export of the convolutional ops, of DoRA/LoRA on conv and embedding layers, and of a
small CNN: run by ONNX Runtime (after a full ``onnx.checker`` pass) against the NumPy
backend to 1e-5, with static and dynamic (None) spatial sizes and a batch size other than
the one the model was initialized with."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import check_onnx  # noqa: E402

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora  # noqa: E402

R = np.random.default_rng(5)


def _f(*shape):
    return R.normal(size=shape).astype(np.float32)


def _randomize(st):
    """Nonzero biases, norm statistics and adapter B / magnitudes, as training leaves them."""
    for params in st.data.values():
        for k, v in params.items():
            if k in ("bias", "beta", "mean", "B"):
                params[k] = _f(*v.shape) * 0.5
            elif k in ("gamma", "magnitude"):
                params[k] = (v * R.uniform(0.5, 1.5, v.shape)).astype(np.float32)
            elif k == "var":
                params[k] = R.uniform(0.5, 2.0, v.shape).astype(np.float32)
    return st


def _layout(spatial, c, channels):
    return (None, *spatial, c) if channels == "last" else (None, c, *spatial)


def _run_shapes(make, spatial, c, channels, sizes, batch=3, **kw):
    """Export ``make(input)`` twice, spatial sizes static and all None (each fed every
    size of ``sizes``), initialized at batch 1 and run at ``batch``."""
    protos = []
    for dynamic in (False, True):
        shape = _layout((None,) * len(spatial) if dynamic else spatial, c, channels)
        model = make(gd.input("x", shape))
        st = _randomize(gd.build(model, seed=1)[0]({"x": np.zeros(
            _layout(spatial, c, channels)[1:], np.float32)[None]}))
        for size in sizes if dynamic else [spatial]:
            protos.append(check_onnx(model, st, {"x": _f(batch, *_layout(size, c, channels)[1:])},
                                 **kw))
    return protos


# spatial, kernel, strides, padding, input_dilation, kernel_dilation, groups, channels,
# activation; the second sizes feed the dynamic export
CONVS = [
    ((9,), 3, 1, "valid", 1, 1, 1, "last", None, (12,)),
    ((10,), 4, 2, "same", 1, 2, 2, "first", "relu", (11,)),
    ((7, 6), 3, 1, "same", 1, 1, 1, "last", "sigmoid", (8, 5)),
    ((8, 7), (3, 2), (2, 1), [(2, 0), (1, 3)], 1, (1, 2), 1, "first", None, (9, 6)),
    ((5, 5), 3, 2, "same", 2, 1, 1, "last", "tanh", (6, 4)),
    ((6, 5), 2, 1, [(3, 3), (0, 2)], (1, 2), 1, 1, "last", None, (7, 7)),  # pads > kernel
    ((9, 10), 1, (5, 3), "same", 1, 1, 1, "first", None, (7, 11)),  # stride > window
    ((6, 6), 3, 1, "valid", 1, 1, 4, "last", "softmax", (7, 8)),  # depthwise, softmax
    ((5, 6), 3, 2, "same", 1, 1, 2, "first", "softmax", (6, 7)),
    ((4, 5, 4), 2, (1, 2, 1), "same", 1, 1, 2, "first", None, (5, 6, 3)),
    ((3, 4, 3), (2, 1, 2), (2, 1, 1), "same", (2, 1, 3), (1, 1, 2), 1, "last", "relu",
     (4, 3, 2)),
]


@pytest.mark.parametrize("case", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_conv_options_match_numpy(case):
    spatial, k, s, pad, din, dk, groups, ch, act, other = case

    def make(x):
        return gd.conv(x, 8, k, strides=s, padding=pad, input_dilation=din,
                       kernel_dilation=dk, feature_group_size=groups, channels=ch,
                       activation=act, name="c")

    protos = _run_shapes(make, spatial, 4, ch, [spatial, other])
    ops = {n.op_type for n in protos[0].graph.node}
    assert "Conv" in ops and ("ConvTranspose" in ops) == (din != 1)
    assert ("Transpose" in ops) == (ch == "last")
    assert {"c.kernel", "c.bias"} <= {t.name for t in protos[0].graph.initializer}
    if pad == "same":  # Axon's "same" does not depend on the size: explicit Conv pads
        for proto in protos:
            assert "Pad" not in {n.op_type for n in proto.graph.node}


POOLS = [  # op, spatial, kernel, strides, padding, channels, dynamic sizes
    ("max_pool", (9,), 3, None, "valid", "last", (10,)),
    ("avg_pool", (9,), 2, 3, "same", "first", (8,)),  # stride > window
    ("max_pool", (7, 6), 3, 2, "same", "last", (8, 9)),
    ("avg_pool", (7, 6), 3, 2, "same", "first", (6, 5)),
    ("avg_pool", (7, 6), 2, 1, [(1, 0), (2, 2)], "last", (5, 5)),  # pad as wide as window
    ("max_pool", (6, 5), 2, (1, 2), [(0, 1), (1, 1)], "first", (4, 4)),
    ("max_pool", (4, 5, 4), 2, None, "same", "first", (5, 3, 3)),
    ("avg_pool", (4, 5, 4), (2, 3, 1), (1, 2, 1), "valid", "last", (3, 4, 2)),
]


@pytest.mark.parametrize("case", POOLS, ids=[f"{c[0]}{i}" for i, c in enumerate(POOLS)])
def test_pools_match_numpy(case):
    op, spatial, k, s, pad, ch, other = case
    _run_shapes(lambda x: getattr(gd, op)(x, k, strides=s, padding=pad, channels=ch),
                spatial, 3, ch, [spatial, other])


def test_same_pads_exported_explicitly():
    """Every export writes Axon's pads, as numbers, static or dynamic sizes alike."""
    for shape in ((None, 9, 8, 3), (None, None, None, 3)):
        model = gd.conv(gd.input("x", shape), 4, (4, 3), strides=2, padding="same",
                        kernel_dilation=(1, 2), name="c")
        proto = check_onnx(model, gd.build(model)[0]({"x": _f(1, 9, 8, 3)}), {"x": _f(2, 9, 8, 3)})
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        pads = next(a for a in conv.attribute if a.name == "pads")
        assert list(pads.ints) == [1, 2, 2, 2]


@pytest.mark.parametrize("opset", [None, 18])
@pytest.mark.parametrize("ch", ["last", "first"])
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("spatial", [(7,), (3, 4, 5)])
def test_global_pools_match_numpy(spatial, keep, ch, opset):
    for op in (gd.global_avg_pool, gd.global_max_pool):
        _run_shapes(lambda x, op=op: op(x, keep_axes=keep, channels=ch), spatial, 3, ch,
                    [tuple(n + 1 for n in spatial)], opset=opset)


@pytest.mark.parametrize("shape,axis", [((None, 5), -1), ((None, 6, 5), -1),
                                        ((None, 5, 4, 3), 1), ((None, 4, 5, 3), 2)])
def test_batch_norm_inference_matches_numpy(shape, axis):
    model = gd.batch_norm(gd.input("x", shape), axis=axis, epsilon=1e-3, name="bn")
    st = _randomize(gd.build(model)[0]())
    proto = check_onnx(model, st, {"x": _f(4, *shape[1:])})
    assert {f"bn.{p}" for p in ("gamma", "beta", "mean", "var")} <= {
        t.name for t in proto.graph.initializer}


@pytest.mark.parametrize("opset", [None, 18])
@pytest.mark.parametrize("shape,axis,groups", [
    ((None, 6), -1, 3), ((None, None, 6), -1, 2), ((None, 6, 4, None), 1, 3),
    ((None, 4, 6, 3), 2, 2), ((None, 3, 3, 2, 4), -1, 4)])
def test_group_norm_matches_numpy(shape, axis, groups, opset):
    model = gd.group_norm(gd.input("x", shape), groups, axis=axis, epsilon=1e-4)
    st = _randomize(gd.build(model)[0]())
    sizes = tuple(5 if d is None else d for d in shape[1:])
    check_onnx(model, st, {"x": _f(3, *sizes) * 3 + 1}, opset=opset)


def _merged(proto, adapter):
    names = {t.name for t in proto.graph.initializer}
    assert not any(n.startswith(adapter + ".") for n in names), names


@pytest.mark.parametrize("mod", [dora, lora])
@pytest.mark.parametrize("ch", ["last", "first"])
def test_conv_adapters_export_merged(mod, ch):
    def make(x):
        h = gd.conv(x, 6, 3, strides=2, padding="same", kernel_dilation=(1, 2),
                    channels=ch, activation="relu", name="c")
        return mod.adapt(h, ["c"], rank=2, alpha=4.0)

    protos = _run_shapes(make, (7, 8), 4, ch, [(9, 6)])
    adapter = f"c_{mod.__name__.rsplit('.', 1)[-1]}"
    for proto in protos:
        _merged(proto, adapter)
        assert "c.kernel" in {t.name for t in proto.graph.initializer}
        assert "Conv" in {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("mod", [dora, lora])
def test_embedding_adapters_export_merged(mod):
    ids = gd.input("ids", (None, None), dtype="int64")
    model = mod.adapt(gd.embedding(ids, 13, 6, name="e"), ["e"], rank=3, alpha=6.0)
    st = _randomize(gd.build(model)[0]())
    adapter = f"e_{mod.__name__.rsplit('.', 1)[-1]}"
    st.data[adapter]["A"] = _f(*st.data[adapter]["A"].shape)  # PEFT starts A at zero
    proto = check_onnx(model, st, {"ids": R.integers(0, 13, (4, 7))})
    _merged(proto, adapter)
    # negative ids moved below -vocab (Sub, Less, Where) so that Gather refuses them; the
    # Gather writes the graph output itself (no Identity copy)
    assert [n.op_type for n in proto.graph.node] == ["Sub", "Less", "Where", "Gather"]
    table = next(t for t in proto.graph.initializer if t.name == "e.kernel")
    assert not np.allclose(onnx.numpy_helper.to_array(table), st.data["e"]["kernel"])


def _cnn(x):
    h = gd.conv(x, 8, 3, padding="same", name="conv1")
    h = gd.relu(gd.batch_norm(h, name="bn1"))
    h = gd.max_pool(h, 2)
    h = gd.conv(h, 12, 3, strides=2, padding="same", activation="relu", name="conv2")
    return gd.dense(gd.global_avg_pool(h), 5, name="head")


@pytest.mark.parametrize("adapted", [False, True])
def test_small_cnn_matches_numpy(adapted):
    x = gd.input("image", (None, 12, 11, 3))
    model = _cnn(x)
    if adapted:
        model = dora.adapt(model, ["conv2"], rank=2, alpha=4.0)
    st = _randomize(gd.build(model, seed=3)[0]({"image": np.zeros((1, 12, 11, 3),
                                                                  np.float32)}))
    proto = check_onnx(model, st, {"image": _f(6, 12, 11, 3)})
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 2 and "MaxPool" in ops
    if adapted:
        _merged(proto, "conv2_dora")
    # the same CNN with free spatial sizes
    dyn = _cnn(gd.input("image", (None, None, None, 3)))
    if adapted:
        dyn = dora.adapt(dyn, ["conv2"], rank=2, alpha=4.0)
    check_onnx(dyn, st, {"image": _f(2, 9, 14, 3)})
