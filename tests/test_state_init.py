"""Initialization determinism, initial_state semantics and ModelState views."""
import numpy as np
import pytest

import graphdsl as gd
from graphdsl.initializers import INITIALIZERS


def mlp(extra=False):
    x = gd.input("x", (None, 6))
    h = gd.dense(x, 5, activation="relu", name="fc1")
    if extra:
        h = gd.layer_norm(h, name="ln")
    return gd.dense(h, 3, name="out")


def test_same_seed_same_arrays_different_seed_differs():
    a = gd.build(mlp(), seed=7)[0]()
    b = gd.build(mlp(), seed=7)[0]()
    c = gd.build(mlp(), seed=8)[0]()
    assert a == b
    assert not np.array_equal(a.data["fc1"]["kernel"], c.data["fc1"]["kernel"])


def test_unrelated_layer_changes_no_other_weights():
    a = gd.build(mlp(), seed=1)[0]()
    b = gd.build(mlp(extra=True), seed=1)[0]()
    for layer in ("fc1", "out"):
        for p in a.data[layer]:
            np.testing.assert_array_equal(a.data[layer][p], b.data[layer][p])
    assert set(b.data) == {"fc1", "ln", "out"}


def test_init_keeps_given_values_creates_missing():
    init = gd.build(mlp())[0]
    K = np.arange(30, dtype=np.float32).reshape(6, 5)
    st = init(None, gd.ModelState({"fc1": {"kernel": K}}))
    np.testing.assert_array_equal(st.data["fc1"]["kernel"], K)
    assert st.data["fc1"]["bias"].shape == (5,)
    assert st.data["out"]["kernel"].shape == (5, 3)


def test_init_template_is_checked():
    init = gd.build(mlp())[0]
    init({"x": np.zeros((2, 6), np.float32)})
    with pytest.raises(gd.GraphDSLError):
        init({"x": np.zeros((2, 7), np.float32)})


def test_float32_everywhere():
    st = gd.build(mlp())[0]()
    assert all(a.dtype == np.float32 for v in st.data.values() for a in v.values())


@pytest.mark.parametrize("name", sorted(k for k in INITIALIZERS if k != "rng_key"))
def test_initializer_statistics(name):
    shape = (400, 300)
    model = gd.dense(gd.input("x", (None, 400)), 300, kernel_initializer=name, name="fc")
    K = gd.build(model, seed=0)[0]().data["fc"]["kernel"]
    fan_in, fan_out = 400, 300
    want_std = {
        "zeros": 0.0, "ones": 0.0, "uniform": 0.01 / np.sqrt(3), "normal": 0.01,
        "glorot_uniform": np.sqrt(2 / (fan_in + fan_out)),
        "glorot_normal": np.sqrt(2 / (fan_in + fan_out)),
        "he_uniform": np.sqrt(2 / fan_in), "he_normal": np.sqrt(2 / fan_in),
        "lecun_uniform": np.sqrt(1 / fan_in), "lecun_normal": np.sqrt(1 / fan_in),
    }[name]
    assert K.shape == shape and K.dtype == np.float32
    np.testing.assert_allclose(K.std(), want_std, rtol=0.03, atol=1e-9)
    if name == "ones":
        assert np.all(K == 1)
    if name.endswith("uniform"):
        assert np.abs(K).max() <= np.sqrt(3) * want_std + 1e-6


def test_callable_initializer():
    def eye(shape, dtype, rng):
        return np.eye(*shape, dtype=dtype)

    model = gd.dense(gd.input("x", (None, 3)), 3, kernel_initializer=eye, name="fc")
    st = gd.build(model)[0]()
    np.testing.assert_array_equal(st.data["fc"]["kernel"], np.eye(3))


def test_freeze_unfreeze_views_and_counts():
    st = gd.build(mlp())[0]()
    assert st.parameter_count() == 6 * 5 + 5 + 5 * 3 + 3
    f = st.freeze(lambda layer, p: layer == "fc1")
    assert st.frozen == set()  # freeze returns a new state
    assert set(f.frozen_parameters()) == {"fc1"}
    assert set(f.trainable_parameters()) == {"out"}
    assert f.frozen_parameter_count() == 35 and f.trainable_parameter_count() == 18
    assert f.data["fc1"]["kernel"] is st.data["fc1"]["kernel"]
    g = f.unfreeze(["fc1"])
    assert g.frozen == set()
    assert st.freeze().frozen_parameter_count() == st.parameter_count()
    assert st.freeze("out").frozen == {("out", "kernel"), ("out", "bias")}


def test_graph_freeze_marks_params_frozen_at_init():
    model = gd.freeze(mlp(), lambda n: n.name == "fc1")
    st = gd.build(model)[0]()
    assert st.frozen == {("fc1", "kernel"), ("fc1", "bias")}


def test_state_entries_kept_apart_from_parameters():
    model = gd.dropout(gd.dense(gd.input("x", (None, 2)), 2, name="fc"), 0.5, name="drop")
    st = gd.build(model)[0]()
    assert st.entries == {"drop": ["key"]}
    assert st.data["drop"]["key"].dtype == np.uint64
    assert "drop" not in st.trainable_parameters() and "drop" not in st.frozen_parameters()
    assert st.parameter_count() == 6


def test_shared_param_node_is_one_parameter():
    x = gd.input("x", (None, 3))
    w = gd.param("w", (3, 3))
    model = gd.add(gd.matmul(x, w), gd.matmul(gd.relu(x), w))
    st = gd.build(model)[0]()
    assert st.parameter_count() == 9


def test_deepcopy_and_equality():
    st = gd.build(mlp())[0]()
    c = st.deepcopy()
    assert c == st and c.data["fc1"]["kernel"] is not st.data["fc1"]["kernel"]
    c.data["fc1"]["kernel"] = c.data["fc1"]["kernel"] + np.eye(*c.data["fc1"]["kernel"].shape,
                                                                dtype=np.float32)
    assert c != st
