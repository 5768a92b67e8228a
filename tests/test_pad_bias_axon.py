"""Axon.pad and Axon.bias: Axon's compiler tests (test/axon/compiler_test.exs: pad's
default and custom value on 1 to 3 spatial axes, no params; bias's ``bias [features]``
float32 zeros), numpy.pad and torch.nn.functional.pad, channels "first", and the option and
shape rules. Torch/ONNX/JSON/file/empty-batch parity comes from their rows in op_cases.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphdsl as gd
from graphdsl import GraphDSLError

R = np.random.default_rng(0)


def _predict(model: gd.Node, x: np.ndarray, backend: str = "numpy") -> np.ndarray:
    init, pred = gd.build(model)
    return np.asarray(gd.predict(model, init(), x, backend=backend))


# Axon's "computes forward pass" tests: (input shape, config, value, Nx.pad's full config)
AXON_PAD = [
    ((1, 3, 3), [(1, 0)], 0.0, [(0, 0), (1, 0), (0, 0)]),
    ((1, 3, 3, 3), [(0, 1), (0, 1)], 0.0, [(0, 0), (0, 1), (0, 1), (0, 0)]),
    ((1, 3, 3, 3, 3), [(0, 1), (0, 1), (1, 0)], 0.0,
     [(0, 0), (0, 1), (0, 1), (1, 0), (0, 0)]),
    ((1, 3, 3), [(1, 0)], 2, [(0, 0), (1, 0), (0, 0)]),
]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("shape,config,value,full", AXON_PAD)
def test_pad_matches_axon(shape, config, value, full, backend):
    x = R.normal(size=shape).astype(np.float32)
    model = gd.pad(gd.input("input", (None, *shape[1:])), config, value)
    assert gd.build(model)[0]().data == {}  # "initializes with no params"
    out = _predict(model, x, backend)
    np.testing.assert_array_equal(out, np.pad(x, full, constant_values=value))
    assert (None, *out.shape[1:]) == model.shape


def test_pad_matches_torch_and_channels_first():
    x = R.normal(size=(2, 3, 4, 5)).astype(np.float32)
    first = gd.pad(gd.input("x", (None, 3, 4, 5)), [(1, 2), (0, 3)], -1.5, channels="first")
    want = F.pad(torch.from_numpy(x), (0, 3, 1, 2), value=-1.5).numpy()
    assert first.shape == (None, 3, 7, 8)
    np.testing.assert_array_equal(_predict(first, x), want)
    np.testing.assert_array_equal(_predict(first, x, "torch"), want)


def test_pad_int_input_keeps_dtype():
    ids = gd.input("ids", (None, 3, 2), dtype="int64")
    model = gd.pad(ids, [(1, 1)], 7)
    x = np.arange(12, dtype=np.int64).reshape(2, 3, 2)
    for backend in ("numpy", "torch"):
        out = _predict(model, x, backend)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, np.pad(x, [(0, 0), (1, 1), (0, 0)],
                                                  constant_values=7))


@pytest.mark.parametrize("config,value,channels,match", [
    ([(1, 0)], 0.0, "last", "padding_config for 1 spatial axes, but the input"),
    ([(1, -1), (0, 0)], 0.0, "last", "pairs of ints >= 0"),
    ([(1, 2, 3), (0, 0)], 0.0, "last", "pairs of ints >= 0"),
    ((1, 1), 0.0, "last", "pairs of ints >= 0"),
    ([(1, 1), (0, 0)], "zero", "last", "value must be a number"),
    ([(1, 1), (0, 0)], 0.0, "middle", "channels must be 'last' or 'first'"),
])
def test_pad_rules(config, value, channels, match):
    with pytest.raises(GraphDSLError, match=match) as e:
        gd.pad(gd.input("x", (None, 4, 4, 3)), config, value, channels=channels, name="p")
    assert "test_pad_bias_axon.py" in str(e.value) and "fix:" in str(e.value)


def test_bias_param_as_axon():
    model = gd.bias(gd.input("input_0", (None, 1)), name="bias")
    st = gd.build(model)[0]()
    b = st.data["bias"]["bias"]
    assert b.shape == (1,) and b.dtype == np.float32 and not b.any()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_bias_adds_on_last_axis(backend):
    model = gd.bias(gd.input("x", (None, 2, 3)), bias_initializer="ones", name="b")
    init, _ = gd.build(model)
    st = init(None, gd.ModelState({"b": {"bias": np.array([1.0, -2.0, 0.5], np.float32)}}))
    x = R.normal(size=(4, 2, 3)).astype(np.float32)
    out = np.asarray(gd.predict(model, st, x, backend=backend))
    np.testing.assert_allclose(out, x + np.array([1.0, -2.0, 0.5]), rtol=1e-6)


def test_bias_rules():
    with pytest.raises(GraphDSLError, match="needs a known last"):
        gd.bias(gd.input("x", (None, None)))
    with pytest.raises(GraphDSLError, match="bias_initializer"):
        gd.bias(gd.input("x", (None, 3)), bias_initializer="nope")
