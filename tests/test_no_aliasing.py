"""Returned values never alias the model's own memory (issue 10, item 4), and NumPy's
float64 gelu matches torch to 1e-12 (item 6)."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd

BACKENDS = ["numpy", "torch"]


def _models():
    x = gd.input("x", (None, 3))
    c = gd.constant(np.arange(6, dtype=np.float32).reshape(2, 3), name="c")
    p = gd.param("p", (2, 3), initializer="ones")
    return {
        "constant": (c, None),
        "reshape of a constant": (gd.reshape(c, (3, 2)), None),
        "transpose of a param": (gd.transpose(p, (1, 0)), None),
        "container": (gd.container({"c": c, "y": gd.dense(x, 2, name="fc")}), x),
    }


def _out(y):
    return y["c"] if isinstance(y, dict) else y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_models()))
def test_editing_a_returned_array_changes_no_later_prediction(backend, case):
    if backend == "torch":
        pytest.importorskip("torch")
    model, x = _models()[case]
    init_fn, predict_fn = gd.build(model, backend=backend)
    st = init_fn(np.zeros((1, 3), np.float32) if x is not None else None)
    batch = np.ones((4, 3), np.float32) if x is not None else {}
    first = _out(predict_fn(st, batch))
    want = np.array(first, copy=True) if backend == "numpy" else first.detach().clone()
    first[...] = 42  # the caller owns what it got back
    again = _out(predict_fn(st, batch))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(want))


@pytest.mark.parametrize("case", list(_models()))
def test_module_outputs_do_not_alias_its_buffers(case):
    torch = pytest.importorskip("torch")
    model, x = _models()[case]
    st = gd.build(model)[0](np.zeros((1, 3), np.float32) if x is not None else None)
    m = gd.to_torch(model, st).eval()
    xb = (torch.ones(4, 3),) if x is not None else ()
    with torch.no_grad():
        first = _out(m(*xb))
        want = first.clone()
        first.fill_(42)
        torch.testing.assert_close(_out(m(*xb)), want)


def test_gelu_float64_matches_torch_to_1e12():
    torch = pytest.importorskip("torch")
    x = np.linspace(-12, 12, 100_001)
    model = gd.gelu(gd.input("x", (None,)))
    ours = gd.predict(model, gd.ModelState(), x, dtype="float64")
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    # and in float32 it stays within float32 round-off of torch
    ours32 = gd.predict(model, gd.ModelState(), x.astype(np.float32))
    np.testing.assert_allclose(ours32, ref, rtol=0, atol=1e-6)
