"""LoRA layers against an independent NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import lora
from graphdsl.node import make_node


def ref_lora(x, K, b, A, B, s, act=None):
    y = x @ (K + s * (A @ B))
    if b is not None:
        y = y + b
    return np.maximum(y, 0) if act == "relu" else y


def params(rng, n_in, n_out, r, dtype=np.float64):
    return {"K": rng.standard_normal((n_in, n_out)).astype(dtype),
            "b": rng.standard_normal(n_out).astype(dtype),
            "A": rng.standard_normal((n_in, r)).astype(dtype),
            "B": rng.standard_normal((r, n_out)).astype(dtype)}


def model(act=None, shape=(None, 10), **kw):
    x = gd.input("x", shape)
    orig = gd.dense(x, 6, activation=act, name="fc")
    return orig, lora.wrap(x, orig, rank=3, alpha=6.0, **kw)


def state(P):
    return gd.ModelState({"fc": {"kernel": P["K"], "bias": P["b"]},
                          "fc_lora": {"A": P["A"], "B": P["B"]}})


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.parametrize("act", [None, "relu"])
def test_fp64_reference(mode, act):
    rng = np.random.default_rng(0)
    P = params(rng, 10, 6, 3)
    _, y = model(act)
    init_fn, predict_fn = gd.build(y, mode=mode, dtype="float64")
    x = rng.standard_normal((4, 10))
    out = predict_fn(init_fn(None, state(P)), x)
    out = out["prediction"] if mode == "train" else out
    np.testing.assert_allclose(out, ref_lora(x, P["K"], P["b"], P["A"], P["B"], 2.0, act),
                               rtol=1e-9, atol=1e-9)


def test_float32_three_d_rslora():
    rng = np.random.default_rng(1)
    P = params(rng, 10, 6, 3, np.float32)
    _, y = model(shape=(None, 4, 10), rslora=True)
    _, predict_fn = gd.build(y)
    x = rng.standard_normal((2, 4, 10)).astype(np.float32)
    ref = ref_lora(x.astype(np.float64), *(P[k].astype(np.float64) for k in "KbAB"),
                   6.0 / np.sqrt(3))
    np.testing.assert_allclose(predict_fn(state(P), x), ref, rtol=1e-5, atol=1e-5)


def test_equals_original_at_init():
    orig, y = model("relu")
    x = np.random.default_rng(2).standard_normal((3, 10)).astype(np.float32)
    i0, p0 = gd.build(orig, seed=3)
    i1, p1 = gd.build(y, seed=3)
    np.testing.assert_array_equal(p1(i1(x), x), p0(i0(x), x))


def test_dropout_train_formula():
    rng = np.random.default_rng(3)
    P = params(rng, 10, 6, 3)
    _, y = model(dropout=0.25)
    init_fn, predict_fn = gd.build(y, mode="train", dtype="float64")
    st = init_fn(None, state(P))
    key = st.data["fc_lora"]["key"]
    x = rng.standard_normal((20, 10))
    out = predict_fn(st, x)
    keep = np.random.default_rng(int(key)).random(x.shape, dtype=np.float32) >= 0.25
    xd = np.where(keep, x / 0.75, 0.0)
    ref = x @ P["K"] + P["b"] + 2.0 * ((xd @ P["A"]) @ P["B"])
    np.testing.assert_allclose(out["prediction"], ref, rtol=1e-9, atol=1e-9)
    assert out["state"].data["fc_lora"]["key"] != key


def test_surface_and_errors():
    m = lora.build(input_size=8, output_size=4, rank=2)
    assert gd.get_inputs(m) == {"input": (None, 8)}
    assert list(gd.get_parameters(m)["lora"]) == ["base_weight", "A", "B"]
    assert lora.output_size(output_size=4) == 4
    assert lora.recommended_defaults() == {"rank": 8, "alpha": 16.0}
    x = gd.input("x", (None, 8))
    y = lora.lora_layer(x, 8, 5, rank=2, name="l")
    assert gd.get_output_shape(y, (3, 8)) == (3, 5)
    with pytest.raises(gd.GraphDSLError, match="has no option"):
        make_node("lora", [x], {"units": 3, "eps": 1e-3}, "bad")  # eps is DoRA-only
    with pytest.raises(gd.GraphDSLError, match="needs a dense, conv or embedding layer"):
        lora.wrap(x, gd.tanh(x))
    with pytest.raises(gd.GraphDSLError, match="no explicit name"):
        lora.wrap(x, gd.dense(x, 3))
