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


def _golden_model():
    ids = gd.input("ids", (None, 5), dtype="int64")
    h = gd.reshape(gd.embedding(ids, 50, 8, name="emb"), (5, 8, 1))
    h = gd.conv(h, 3, kernel_size=2, kernel_initializer="he_normal",
                bias_initializer="normal", name="conv")
    h = gd.dropout(gd.flatten(gd.batch_norm(h, name="bn")), 0.1, name="drop")
    h = gd.layer_norm(h, name="ln")
    return gd.dense(h, 4, bias_initializer="uniform", name="enc.fc")


# (layer, param): (shape, first three values, last value) at seed 0. Pinned: a change
# of the per-parameter seed rule (the "seed:layer.param" key) changes every saved init.
GOLDEN = {
    ("emb", "kernel"): ((50, 8), [0.003365390934050083, -0.009442154318094254,
                                  0.0020641805604100227], -0.0011605785693973303),
    ("conv", "kernel"): ((2, 1, 3), [-0.31737348437309265, -0.0052934736013412476,
                                     -2.1053853034973145], 1.434119462966919),
    ("conv", "bias"): ((3,), [-0.004858987871557474, 0.0045922682620584965,
                              0.012164311483502388], 0.012164311483502388),
    ("bn", "gamma"): ((3,), [1.0, 1.0, 1.0], 1.0),
    ("bn", "beta"): ((3,), [0.0, 0.0, 0.0], 0.0),
    ("bn", "mean"): ((3,), [0.0, 0.0, 0.0], 0.0),
    ("bn", "var"): ((3,), [1.0, 1.0, 1.0], 1.0),
    ("ln", "gamma"): ((21,), [1.0, 1.0, 1.0], 1.0),
    ("ln", "beta"): ((21,), [0.0, 0.0, 0.0], 0.0),
    ("enc.fc", "kernel"): ((21, 4), [0.346120685338974, 0.3967127501964569,
                                     0.4772295653820038], 0.102000392973423),
    ("enc.fc", "bias"): ((4,), [0.0045815566554665565, 0.005870106164366007,
                                -0.0018515284173190594], -0.00039976570405997336),
}


def test_initial_values_are_pinned():
    st = gd.build(_golden_model(), seed=0)[0]()
    assert {(k, p) for k, v in st.data.items() for p in v} == set(GOLDEN) | {("drop", "key")}
    for (layer, p), (shape, head, last) in GOLDEN.items():
        a = st.data[layer][p]
        assert a.shape == shape and a.dtype == np.float32
        assert a.reshape(-1)[:3].tolist() == head and a.reshape(-1)[-1] == last
    assert int(st.data["drop"]["key"]) == 3789577003116589265


@pytest.mark.parametrize("init", ["normal", "glorot_uniform", "rng_key"])
def test_layer_param_boundary_is_part_of_the_seed(init):
    from graphdsl.initializers import initialize
    shape = () if init == "rng_key" else (4, 3)
    dt = np.uint64 if init == "rng_key" else np.float32
    ab_c = initialize(init, shape, dt, 0, "ab", "c")
    a_bc = initialize(init, shape, dt, 0, "a", "bc")
    assert not np.array_equal(ab_c, a_bc)
    np.testing.assert_array_equal(ab_c, initialize(init, shape, dt, 0, "ab", "c"))


def test_a_value_that_does_not_fit_is_one_error_everywhere():
    """predict, the ONNX export and graph.state_value refuse a mis-shaped or missing value
    with the same StateError (graph.check_value / graph.missing_value); init_fn says that
    it came from initial_state."""
    pytest.importorskip("onnx")
    from graphdsl import graph

    model = mlp()
    init, predict = gd.build(model)
    g = graph.analyze(model)
    node = next(n for n in g.order if n.name == "fc1")
    spec = next(s for s in node.params if s.name == "kernel")
    for bad, what in ((np.zeros((6, 4), np.float32), "state value fc1.kernel has shape "
                       "(6, 4), the layer needs (6, 5)"), (None, "the state has no fc1.kernel")):
        st = init()
        if bad is None:
            del st.data["fc1"]["kernel"]
        else:
            st.data["fc1"]["kernel"] = bad
        msgs = []
        for run in (lambda s: predict(s, np.zeros((1, 6), np.float32)),
                    lambda s: gd.to_onnx(model, s),
                    lambda s: graph.state_value(g, node, spec, s.data)):
            with pytest.raises(gd.errors.StateError) as e:
                run(st)
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1] == msgs[2] and what in msgs[0] and "layer 'fc1'" in msgs[0]
    with pytest.raises(gd.errors.StateError, match=r"initial_state value fc1.kernel has shape "
                       r"\(6, 4\), the layer needs \(6, 5\)[\s\S]*leave it out"):
        init(None, gd.ModelState({"fc1": {"kernel": np.zeros((6, 4), np.float32)}}))
