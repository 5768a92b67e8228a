"""Graph queries, naming, transforms, and very large graphs."""
import numpy as np
import pytest
from graphdsl.backends import available_backends, get_backend, known_backends

import graphdsl as gd


def test_design_example():
    x = gd.input("x", shape=(None, 16))
    h = gd.dense(x, 32, activation="relu", name="fc1")
    y = gd.dense(h, 4, name="out")
    assert gd.get_inputs(y) == {"x": (None, 16)}
    assert gd.get_output_shape(y, {"x": (8, 16)}) == (8, 4)
    assert gd.get_output_shape(y, (8, 16)) == (8, 4)
    assert gd.get_output_shape(y) == (None, 4)
    init_fn, predict_fn = gd.build(y, backend="numpy", mode="inference", seed=0)
    state = init_fn({"x": np.zeros((1, 16), np.float32)}, gd.ModelState.empty())
    assert state.data["fc1"]["kernel"].shape == (16, 32)
    out = predict_fn(state, np.ones((8, 16), np.float32))
    assert out.shape == (8, 4) and out.dtype == np.float32
    assert "inputs: {x: (None, 16)}" in repr(y) and "nodes: 4" in repr(y)  # fc1, relu_0


def test_default_names_are_deterministic_per_model():
    def build():
        x = gd.input("x", (None, 2))
        return gd.dense(gd.relu(gd.dense(x, 3)), 2)

    for _ in range(2):  # independent of what was built before in the process
        params = gd.get_parameters(build())
        assert set(params) == {"dense_0", "dense_1"}


def test_default_names_skip_explicit_ones():
    x = gd.input("x", (None, 2))
    y = gd.dense(gd.dense(x, 3, name="dense_0"), 2)
    assert set(gd.get_parameters(y)) == {"dense_0", "dense_1"}


def test_get_parameters_and_op_counts():
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dropout(gd.dense(x, 3, name="a"), 0.1), 2, name="b", use_bias=False)
    params = gd.get_parameters(y)
    assert {k: {p: s.shape for p, s in v.items()} for k, v in params.items()} == {
        "a": {"kernel": (4, 3), "bias": (3,)}, "dropout_0": {"key": ()},
        "b": {"kernel": (3, 2)}}
    assert gd.get_op_counts(y) == {"input": 1, "dense": 2, "dropout": 1}


def test_multiple_inputs_in_order():
    a, b = gd.input("a", (None, 2)), gd.input("b", (None, 3))
    y = gd.concatenate([gd.dense(b, 2), a])
    assert list(gd.get_inputs(y)) == ["a", "b"]  # declaration order
    assert gd.get_output_shape(y, {"a": (5, 2), "b": (5, 3)}) == (5, 4)


def test_symbolic_shapes_keep_none():
    x = gd.input("x", (None, None, 8))
    y = gd.reshape(gd.dense(x, 4), (None, None, 2, 2))
    assert y.shape == (None, None, 2, 2)
    assert gd.get_output_shape(y, (3, 5, 8)) == (3, 5, 2, 2)
    assert gd.flatten(gd.input("z", (None, 3, 4))).shape == (None, 12)
    assert gd.flatten(gd.input("z", (None, None, 4))).shape == (None, None)


def test_matmul_shape_rules():
    def mm(a, b):
        return gd.matmul(gd.input("a", a), gd.input("b", b)).shape

    assert mm((None, 3, 4), (4, 5)) == (None, 3, 5)
    assert mm((2, 1, 3, 4), (5, 4, 6)) == (2, 5, 3, 6)
    assert mm((4,), (4, 5)) == (5,)
    assert mm((None, 3, 4), (4,)) == (None, 3)
    for a, b in [((2, 1, 3, 4), (5, 4, 6)), ((3, 4), (4,)), ((4,), (2, 4, 3))]:
        assert mm(a, b) == np.matmul(np.zeros(a), np.zeros(b)).shape


def test_map_nodes_and_rewrite_nodes():
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dense(x, 3, activation="relu", name="a"), 2, name="b")
    with_dropout = gd.rewrite_nodes(
        y, lambda n: (lambda ins, out: gd.dropout(out, 0.5)) if n.op == "dense" else None)
    assert gd.get_op_counts(with_dropout) == {"input": 1, "dense": 2, "dropout": 2,
                                              "relu": 1}
    swapped = gd.rewrite_nodes(
        y, lambda n: (lambda ins, out: gd.tanh(ins[0])) if n.name == "a" else None)
    assert gd.get_op_counts(swapped) == {"input": 1, "tanh": 1, "relu": 1, "dense": 1}
    assert set(gd.get_parameters(swapped)) == {"b"}
    # rewrite keeps untouched subgraphs shared
    same = gd.rewrite_nodes(y, lambda n: None)
    assert same is y
    frozen = gd.map_nodes(y, lambda n: n)
    assert frozen is y
    # the values of a rewritten graph match the hand computation
    init, pred = gd.build(swapped)
    st = init()
    xv = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(pred(st, xv), np.tanh(xv) @ st.data["b"]["kernel"]
                               + st.data["b"]["bias"], rtol=1e-6)


def test_map_nodes_must_return_node():
    y = gd.relu(gd.input("x", (None, 2)))
    with pytest.raises(gd.GraphDSLError):
        gd.map_nodes(y, lambda n: None)


def test_rewrite_engine_keep_names_pins_state_keys():
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dense(x, 3), 2)  # dense_0, dense_1: names by position
    first = lambda n: (lambda ins, out: gd.tanh(ins[0])) if n is y.inputs[0] else None
    assert set(gd.get_parameters(gd.rewrite_nodes(y, first))) == {"dense_0"}
    pinned = gd.rewrite_nodes(y, first, keep_names=True)
    assert set(gd.get_parameters(pinned)) == {"dense_1"}
    assert pinned.name == "dense_1"
    # a new unnamed layer takes the next free default name, not the pinned one's
    swap = lambda n: (lambda ins, out: gd.dense(ins[0], 5)) if n is y.inputs[0] else None
    assert set(gd.get_parameters(gd.rewrite_nodes(y, swap, keep_names=True))) == {
        "dense_0", "dense_1"}
    seen = []
    gd.rewrite_nodes(y, lambda n: lambda ins, out: seen.append(out.name) or out,
                     keep_names=True)
    assert seen == ["x", "dense_0", "dense_1"]
    named = gd.dense(gd.dense(x, 3, name="a"), 2, name="b")
    assert gd.rewrite_nodes(named, lambda n: None, keep_names=True) is named


def test_rewrite_engine_keeps_frozen_flags_and_checks_rewriters():
    x = gd.input("x", (None, 4))
    y = gd.freeze(gd.dense(gd.dense(x, 3, name="a"), 2, name="b"), lambda n: n.name == "a")
    out = gd.rewrite_nodes(y, lambda n: (lambda ins, o: gd.dropout(o, 0.5))
                           if n.name == "a" else None)
    assert gd.get_op_counts(out) == {"input": 1, "dense": 2, "dropout": 1}
    assert [n.frozen for n in gd.topo_order(out) if n.op == "dense"] == [True, False]
    with pytest.raises(gd.GraphDSLError, match=r"rewriter returned int for layer b"):
        gd.rewrite_nodes(y, lambda n: (lambda ins, o: 3) if n.name == "b" else None)
    with pytest.raises(gd.GraphDSLError,
                       match=r"map_nodes function returned NoneType for layer <unnamed relu>"):
        gd.map_nodes(gd.relu(x), lambda n: None if n.op == "relu" else n)


def test_huge_chain_no_recursion():
    x = gd.input("x", (None, 4))
    y = x
    for _ in range(100_000):
        y = gd.relu(y)
    assert gd.get_output_shape(y, (2, 4)) == (2, 4)
    init, pred = gd.build(y)
    out = pred(init(), -np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(out, 0)
    assert "nodes: 100001" in repr(y)


def test_backend_registry():
    assert "numpy" in known_backends() and "numpy" in available_backends()
    be = get_backend("numpy")
    assert get_backend("numpy") is be


def test_every_op_has_a_numpy_kernel():
    be = get_backend("numpy")
    # inputs are bound by the compiler, block calls inlined by it (graphdsl.block)
    missing = [op for op in gd.OPS if op not in ("input", "block", "block_output")
               and op not in be.kernels]
    assert missing == []


def test_intermediates_released_after_last_use():
    import weakref

    seen, alive_later = [], []

    def spy(x, xp):
        out = x + 1
        seen.append(weakref.ref(out))
        return out

    def check(x, xp):
        alive_later.append(seen[-1]() is not None)
        return x

    x = gd.input("x", (None, 1000))
    y = gd.layer(spy, x, output_shape=(None, 1000))
    z = gd.layer(check, gd.relu(gd.relu(y)), output_shape=(None, 1000))
    init, pred = gd.build(z)
    pred(init(), np.zeros((10, 1000), np.float32))
    assert alive_later == [False]  # spy's output was dropped before the last layer ran


def test_custom_layer_concrete_shape_is_probed():
    def repeat(x, xp):
        return xp.concatenate([x, x], axis=0)  # the batch size doubles

    y = gd.layer(repeat, gd.input("x", (None, 3)))
    assert y.shape == (None, 3)
    assert gd.get_output_shape(y, (4, 3)) == (8, 3)
    init, pred = gd.build(y)
    assert pred(init(), np.zeros((4, 3), np.float32)).shape == (8, 3)


def test_freeze_takes_layer_names_as_state_freeze_does():
    """gd.freeze(model, "fc1") / ["fc1"] freezes those layers (as ModelState.freeze
    takes names); an unknown name or a non-predicate is a GraphDSLError, not a raw
    TypeError from calling a list."""
    x = gd.input("x", (None, 3))
    y = gd.dense(gd.dense(x, 4, name="fc1"), 2, name="fc2")
    init = lambda m: gd.build(m)[0](np.zeros((1, 3), np.float32))  # noqa: E731
    assert init(gd.freeze(y, ["fc1"])).frozen == {("fc1", "kernel"), ("fc1", "bias")}
    assert init(gd.freeze(y, "fc2")).frozen == {("fc2", "kernel"), ("fc2", "bias")}
    assert init(gd.freeze(y, lambda n: n.name == "fc2")).frozen == \
        init(gd.freeze(y, "fc2")).frozen
    with pytest.raises(gd.GraphDSLError, match=r"no layer named 'nope'"):
        gd.freeze(y, ["nope"])
    with pytest.raises(gd.GraphDSLError, match="expected a predicate"):
        gd.freeze(y, 3)
