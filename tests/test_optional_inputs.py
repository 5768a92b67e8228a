"""Optional inputs (Axon.optional) with a default subgraph: a model runs without them."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd


def _model():
    ids = gd.input("input_ids", (None, None), dtype="int64")
    mask = gd.optional(gd.input("attention_mask", (None, None), dtype="int64"),
                       gd.full_like(ids, 1), name="mask")
    emb = gd.embedding(ids, 10, 4, name="emb")
    return gd.multiply(emb, gd.reshape(mask, (None, None, 1)))


IDS = np.array([[1, 2, 3], [4, 5, 6]])
MASK = np.array([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_default_runs_when_the_input_is_left_out(backend):
    model = _model()
    init_fn, predict_fn = gd.build(model, backend=backend)
    st = init_fn({"input_ids": IDS})
    K = st.data["emb"]["kernel"]
    full = np.asarray(predict_fn(st, {"input_ids": IDS}))
    np.testing.assert_allclose(full, K[IDS], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(predict_fn(st, IDS)), full)  # 1 required input
    masked = np.asarray(predict_fn(st, {"input_ids": IDS, "attention_mask": MASK}))
    np.testing.assert_allclose(masked, K[IDS] * MASK[..., None], rtol=1e-6)
    assert gd.get_output_shape(model, {"input_ids": (2, 3)}) == (2, 3, 4)


def test_a_module_takes_the_optional_input_by_name_position_or_not_at_all():
    torch = pytest.importorskip("torch")
    model = _model()
    st = gd.build(model)[0]({"input_ids": IDS})
    m = gd.to_torch(model, st)
    ids, mask = torch.from_numpy(IDS), torch.from_numpy(MASK)
    ref = gd.predict(model, st, {"input_ids": IDS, "attention_mask": MASK})
    for out in (m(ids, mask), m(input_ids=ids, attention_mask=mask)):
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-6)
    torch.testing.assert_close(m(ids, None), m(ids))
    np.testing.assert_allclose(m(ids).detach().numpy(), gd.predict(model, st, IDS), rtol=1e-6)
    compiled = torch.compile(m, fullgraph=True)
    np.testing.assert_allclose(compiled(ids, mask).detach().numpy(), ref, rtol=1e-6)


def test_errors_name_the_required_and_the_optional_inputs():
    model = _model()
    assert gd.get_inputs(model) == {"input_ids": (None, None), "attention_mask": (None, None)}
    init_fn, predict_fn = gd.build(model)
    st = init_fn({"input_ids": IDS})
    with pytest.raises(gd.GraphDSLError, match=r"(?s)missing \[.input_ids.\].*optional"):
        predict_fn(st, {"attention_mask": MASK})
    with pytest.raises(gd.GraphDSLError, match="attention_mask"):
        predict_fn(st, {"input_ids": IDS, "attention_mask": MASK[:, :2]})
    x = gd.input("x", (None, 3))
    with pytest.raises(gd.GraphDSLError, match="optional wraps a model input"):
        gd.optional(gd.relu(x), x)
    with pytest.raises(gd.GraphDSLError, match="does not fit"):
        gd.optional(gd.input("y", (None, 4)), x)
    with pytest.raises(gd.GraphDSLError, match="dtype"):
        gd.optional(gd.input("y", (None, 3), dtype="int64"), x)


def test_an_input_used_elsewhere_too_is_required():
    x = gd.input("x", (None, 3))
    b = gd.input("b", (None, 3))
    model = gd.add(gd.optional(b, gd.full_like(x, 0.0)), b)
    with pytest.raises(gd.GraphDSLError, match="missing"):
        gd.predict(model, gd.ModelState(), {"x": np.ones((2, 3), np.float32)})
