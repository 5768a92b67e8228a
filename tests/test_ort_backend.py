"""The ONNX Runtime backend (``backend="onnxruntime"``): every op's ONNX row, an MLP and a
tiny LLaMA give the NumPy backend's outputs (values, dtypes, containers); the export is
made once per set of state values and again after a value is replaced; errors match."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from graphdsl.backends import onnxruntime_backend  # noqa: E402
from helpers import TOL  # noqa: E402
from op_cases import cases_for  # noqa: E402

import graphdsl as gd  # noqa: E402
from graphdsl import models  # noqa: E402

R = np.random.default_rng(23)


def assert_like_numpy(got, ref, tol=TOL):
    """Same structure (tuple/dict, keys), shapes and dtypes; values within ``tol``."""
    assert type(got) is type(ref)
    if isinstance(ref, dict):
        assert list(got) == list(ref)
        for k in ref:
            assert_like_numpy(got[k], ref[k], tol)
    elif isinstance(ref, tuple):
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert_like_numpy(g, r, tol)
    else:
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, **tol)


def both(model, st, arg, **kw):
    return (gd.predict(model, st, arg, backend="onnxruntime", **kw),
            gd.predict(model, st, arg))


@pytest.mark.parametrize("case", cases_for("onnx"))
def test_every_onnx_row_matches_numpy(case):
    model, inputs, st = case.setup()
    arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    assert_like_numpy(*both(model, st, arg), case.tol)


def _mlp():
    x = gd.input("x", (None, 12))
    h = gd.dense(x, 16, activation="relu", name="fc1")
    return gd.dense(gd.dropout(h, 0.5, name="drop"), 3, name="out")


def test_mlp_matches_numpy_for_several_batch_sizes():
    model = _mlp()
    st = gd.build(model)[0]({"x": np.zeros((1, 12), np.float32)})
    _, predict = gd.build(model, backend="onnxruntime", threads=1)
    for batch in (1, 5, 0):
        x = R.normal(size=(batch, 12)).astype(np.float32)
        assert_like_numpy(predict(st, x), gd.predict(model, st, x))
    # float64 and int inputs are converted as the NumPy backend converts them
    x64 = R.normal(size=(2, 12))
    assert_like_numpy(predict(st, x64), gd.predict(model, st, x64))


def test_tiny_llama_matches_numpy_with_and_without_optional_inputs():
    model = models.llama(dict(vocab_size=11, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2))
    st = gd.build(model)[0]()
    for layer, params in st.data.items():  # non-trivial norms
        for k, v in params.items():
            st.data[layer][k] = (R.normal(size=v.shape) * 0.2 + (v.ndim == 1)).astype(
                np.float32)
    ids = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
    assert_like_numpy(*both(model, st, ids), {"rtol": 1e-4, "atol": 1e-4})
    feed = {"input_ids": ids, "attention_mask": np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])}
    assert_like_numpy(*both(model, st, feed), {"rtol": 1e-4, "atol": 1e-4})


def test_containers_and_int_outputs():
    ids = gd.input("ids", (None, 5), dtype="int64")
    x = gd.input("x", (None, 3))
    e = gd.embedding(ids, 11, 3, name="emb")
    model = gd.container({"mixed": gd.add(e, gd.reshape(x, (None, 1, 3))),
                          "pair": gd.container([gd.positions(ids), gd.relu(x)]), "x": x})
    st = gd.build(model)[0]()
    feed = {"ids": R.integers(0, 11, (4, 5)), "x": R.normal(size=(4, 3)).astype(np.float32)}
    got, ref = both(model, st, feed)
    assert_like_numpy(got, ref)
    assert got["pair"][0].dtype == np.int64


def test_export_once_per_state_value_and_a_new_value_is_used(monkeypatch):
    exports = []
    real = onnxruntime_backend.export_plan

    def counting(*args):
        exports.append(1)
        return real(*args)

    monkeypatch.setattr(onnxruntime_backend, "export_plan", counting)
    model = _mlp()
    init, predict = gd.build(model, backend="onnxruntime")
    st = init({"x": np.zeros((1, 12), np.float32)})
    x = R.normal(size=(3, 12)).astype(np.float32)
    first = predict(st, x)
    predict(st, x)
    predict(st.copy(), x)  # a copy holds the same (immutable) values
    assert len(exports) == 1
    st.data["out"]["bias"] = st.data["out"]["bias"] + 1.0
    np.testing.assert_allclose(predict(st, x), first + 1.0, **TOL)
    assert len(exports) == 2
    np.testing.assert_allclose(predict(st, x), gd.predict(model, st, x), **TOL)
    assert len(exports) == 2


def test_wrong_input_shape_is_the_numpy_error():
    model = _mlp()
    st = gd.build(model)[0]({"x": np.zeros((1, 12), np.float32)})
    errors = []
    for backend in ("numpy", "onnxruntime"):
        with pytest.raises(gd.GraphDSLError) as e:
            gd.predict(model, st, np.zeros((2, 7), np.float32), backend=backend)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1] and "(None, 12)" in errors[0][1]


def test_refusals_name_the_fix():
    model = _mlp()
    with pytest.raises(gd.GraphDSLError, match="inference only") as e:
        gd.build(model, backend="onnxruntime", mode="train")
    assert "mode='inference'" in str(e.value)
    with pytest.raises(gd.GraphDSLError, match="float32"):
        gd.build(model, backend="onnxruntime", dtype="float64")
    with pytest.raises(gd.GraphDSLError, match="threads"):
        gd.build(model, backend="onnxruntime", threads=0)
    with pytest.raises(gd.GraphDSLError, match="device"):
        gd.build(model, backend="onnxruntime", device="cuda")
    st = gd.build(model)[0]({"x": np.zeros((1, 12), np.float32)})
    del st.data["fc1"]["kernel"]
    with pytest.raises(gd.GraphDSLError, match="fc1"):  # the export's StateError
        gd.predict(model, st, np.zeros((1, 12), np.float32), backend="onnxruntime")


def test_what_the_exporter_refuses_is_its_error():
    seq, _ = gd.lstm(gd.input("x", (None, 4, 3)), 2, name="l")
    st = gd.build(seq)[0]()
    with pytest.raises(gd.GraphDSLError, match="recurrent_initializer='zeros'"):
        gd.predict(seq, st, np.zeros((1, 4, 3), np.float32), backend="onnxruntime")


def test_token_id_out_of_range_is_a_graphdsl_error():
    model = gd.embedding(gd.input("ids", (None, 3), dtype="int64"), 5, 2, name="emb")
    st = gd.build(model)[0]()
    with pytest.raises(gd.GraphDSLError, match="ONNX Runtime refused"):
        gd.predict(model, st, np.array([[1, 2, 9]]), backend="onnxruntime")
