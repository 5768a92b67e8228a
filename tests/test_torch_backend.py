"""The torch backend: every op case (tests/op_cases.py) agrees with the NumPy backend (1e-5),
both as ``build(backend="torch")`` and as the ``to_torch`` module; inputs as arrays or
tensors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import TOL  # noqa: E402
from op_cases import CASES, cases_for  # noqa: E402

import graphdsl as gd  # noqa: E402


def _x(shape=(None, 6), name="x"):
    return gd.input(name, shape)


def _np(y):
    if isinstance(y, dict):
        return {k: _np(v) for k, v in y.items()}
    if isinstance(y, tuple):
        return tuple(_np(v) for v in y)
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _close(a, b, tol=TOL):
    a, b = _np(a), _np(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], tol)
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v, tol)
    else:
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("case", cases_for("torch"))
def test_every_op_matches_numpy(case):
    model, inputs, st = case.setup()
    assert case.op in gd.get_op_counts(model)
    arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    ref = gd.predict(model, st, arg, backend="numpy")
    # functional backend, NumPy inputs and tensor inputs
    _close(gd.predict(model, st, arg, backend="torch"), ref, case.tol)
    targ = ({k: torch.from_numpy(v) for k, v in inputs.items()} if len(inputs) > 1
            else torch.from_numpy(next(iter(inputs.values()))))
    _close(gd.predict(model, st, targ, backend="torch"), ref, case.tol)
    # the lowered module, in eval mode, inputs positionally and by name
    m = gd.to_torch(model, st).eval()
    with torch.no_grad():
        ordered = [torch.from_numpy(inputs[k]) if k in inputs else None  # optional: left out
                   for k in gd.get_inputs(model)]
        _close(m(*ordered), ref, case.tol)
        _close(m(**{k: torch.from_numpy(v) for k, v in inputs.items()}), ref, case.tol)


@pytest.mark.parametrize("case", cases_for("torch", lambda c: c.train))
def test_train_mode_matches_numpy(case):
    """Train mode without dropout: same prediction and state as NumPy's train mode."""
    model, inputs, st = case.setup()
    arg = next(iter(inputs.values()))
    ref = gd.build(model, mode="train")[1](st, arg)
    got = gd.build(model, backend="torch", mode="train")[1](st, arg)
    _close(got["prediction"], ref["prediction"], case.tol)
    assert got["state"] == ref["state"]


def test_init_is_backend_independent():
    model = CASES["dora/values"].build()
    inputs = CASES["dora/values"].feed(model)
    a = gd.build(model, backend="numpy", seed=3)[0](inputs)
    b = gd.build(model, backend="torch", seed=3)[0](inputs)
    assert a == b


def test_dropout_train_mode_functional():
    x = _x((None, 400))
    y = gd.dropout(x, 0.25, name="drop")
    init, step = gd.build(y, backend="torch", mode="train")
    st = init({"x": np.zeros((1, 400), np.float32)})
    xb = np.ones((50, 400), np.float32)
    out = step(st, xb)
    v = _np(out["prediction"])
    assert set(np.unique(v)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.2 < (v == 0).mean() < 0.3
    key0, key1 = st.data["drop"]["key"], out["state"].data["drop"]["key"]
    assert key0.dtype == key1.dtype == np.uint64 and key0 != key1
    again = step(st, xb)  # same key, same mask: deterministic from the state
    np.testing.assert_array_equal(_np(again["prediction"]), v)
    assert st.data["drop"]["key"] == key0  # the input state is unchanged


def test_custom_layer_gets_torch_namespace():
    seen = []

    def fn(a, xp):
        seen.append(xp)
        return xp.exp(a)

    y = gd.layer(fn, _x())
    st = gd.build(y)[0]({"x": np.zeros((1, 6), np.float32)})
    out = gd.predict(y, st, np.zeros((2, 6), np.float32), backend="torch")
    assert isinstance(out, torch.Tensor) and torch is seen[-1]
    np.testing.assert_allclose(out.numpy(), 1.0)


def test_functional_errors():
    x = _x()
    y = gd.dense(x, 3, name="fc")
    init, pred = gd.build(y, backend="torch")
    st = init({"x": np.zeros((1, 6), np.float32)})
    with pytest.raises(gd.GraphDSLError, match="expects shape"):
        pred(st, np.zeros((2, 5), np.float32))
    bad = st.copy()
    bad.data["fc"]["kernel"] = np.zeros((5, 3), np.float32)
    with pytest.raises(gd.GraphDSLError, match="fc.kernel"):
        pred(bad, np.zeros((2, 6), np.float32))
    missing = gd.ModelState({"fc": {"bias": st.data["fc"]["bias"]}})
    with pytest.raises(gd.GraphDSLError, match="init_fn"):
        pred(missing, np.zeros((2, 6), np.float32))
    with pytest.raises(gd.GraphDSLError, match="device"):
        gd.build(y, backend="torch", device="nonsense")
    with pytest.raises(gd.GraphDSLError, match="device="):
        gd.build(y, backend="torch", colour="red")
    ids = gd.input("ids", (None,), dtype="int64")
    e = gd.embedding(ids, 5, 2, name="emb")
    st_e = gd.build(e)[0]({"ids": np.zeros((1,), np.int64)})
    with pytest.raises(gd.GraphDSLError, match=r"\[0, 5\)"):
        gd.predict(e, st_e, np.array([1, 7]), backend="torch")
    with pytest.raises(gd.GraphDSLError, match="integer"):  # whole-number floats are ids
        gd.predict(e, st_e, np.array([1.5, 2.0]), backend="torch")


# -- random graphs: torch (functional and module) == NumPy ------------------------------
from hypothesis import given, settings  # noqa: E402
from strategies import graphs  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(graphs())
def test_random_graphs_match_numpy(case):
    model, shapes, _ = case
    rng = np.random.default_rng(0)
    inputs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    st = gd.build(model)[0](inputs)
    ref = gd.predict(model, st, inputs)
    _close(gd.predict(model, st, inputs, backend="torch"), ref)
    m = gd.to_torch(model, st).eval()
    with torch.no_grad():
        _close(m(**{k: torch.from_numpy(v) for k, v in inputs.items()}), ref)
