"""Every user mistake gives a GraphDSLError naming the layer, op, shapes, location, fix."""
import re

import numpy as np
import pytest

import graphdsl as gd
from graphdsl.errors import (
    BackendError,
    InputError,
    LayerNameError,
    OptionError,
    ShapeError,
    StateError,
)

HERE = __file__


def check(exc, cls=gd.GraphDSLError, layer=None, op=None, shapes=True, where=True):
    e = exc.value
    assert isinstance(e, cls), type(e)
    msg = str(e)
    if layer:
        assert f"'{layer}'" in msg, msg
    if op:
        assert f"(op {op})" in msg, msg
    if where:
        assert f"{HERE}:" in msg, msg  # file:line of the user's code
    if shapes:
        assert "shapes:" in msg, msg
    assert "fix:" in msg, msg
    return msg


@pytest.fixture
def mlp():
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dense(x, 8, activation="relu", name="fc1"), 2, name="out")
    init, pred = gd.build(y)
    return y, init(), pred


# -- predict inputs ------------------------------------------------------------------
def test_wrong_input_name(mlp):
    _, st, pred = mlp
    with pytest.raises(InputError) as e:
        pred(st, {"y": np.zeros((1, 4))})
    msg = check(e, InputError, where=False)
    assert "missing ['x']" in msg and "unexpected ['y']" in msg


def test_extra_input(mlp):
    _, st, pred = mlp
    with pytest.raises(InputError) as e:
        pred(st, {"x": np.zeros((1, 4)), "z": np.zeros(1)})
    assert "unexpected ['z']" in check(e, InputError, where=False)


@pytest.mark.parametrize("arr", [np.zeros((2, 4, 1)), np.zeros(4), np.zeros((2, 5))])
def test_wrong_rank_or_feature_size(mlp, arr):
    _, st, pred = mlp
    with pytest.raises(InputError) as e:
        pred(st, arr)
    msg = check(e, InputError, layer="x", op="input")
    assert "(None, 4)" in msg and f"got {arr.shape}" in msg


@pytest.mark.parametrize("arr", [None, "text", np.array(["a", "b"]), [[1, 2, 3, 4]],
                                 np.array([{}], dtype=object)])
def test_non_numeric_or_none(mlp, arr):
    _, st, pred = mlp
    with pytest.raises(InputError) as e:
        pred(st, arr)
    check(e, InputError, layer="x", op="input")


def test_bare_array_for_multi_input():
    a, b = gd.input("a", (None, 2)), gd.input("b", (None, 2))
    init, pred = gd.build(a + b)
    with pytest.raises(InputError) as e:
        pred(init(), np.zeros((1, 2)))
    assert "dict" in check(e, InputError, where=False)


def test_batch_mismatch_between_inputs_at_predict():
    a, b = gd.input("a", (None, 2)), gd.input("b", (None, 2))
    model = gd.add(a, b, name="sum")
    init, pred = gd.build(model)
    with pytest.raises(ShapeError) as e:
        pred(init(), {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    check(e, ShapeError, layer="sum", op="add")


def test_token_ids_out_of_range_and_float_ids():
    model = gd.embedding(gd.input("ids", (None, 3), dtype="int64"), 5, 2, name="emb")
    init, pred = gd.build(model)
    st = init()
    with pytest.raises(InputError) as e:
        pred(st, np.array([[0, 1, 5]]))
    check(e, InputError, layer="emb", op="embedding", shapes=False)
    with pytest.raises(InputError) as e:
        pred(st, np.array([[0, -1, 2]]))
    with pytest.raises(InputError) as e:  # whole-number floats read as ids (a float mask)
        pred(st, np.full((1, 3), 0.5, np.float32))
    check(e, InputError, layer="ids", op="input", shapes=False)
    np.testing.assert_array_equal(pred(st, np.ones((1, 3), np.float32)),
                                  pred(st, np.ones((1, 3), np.int64)))


# -- construction-time shape checks --------------------------------------------------
def test_add_shape_mismatch():
    with pytest.raises(ShapeError) as e:
        gd.add(gd.input("a", (None, 3)), gd.input("b", (None, 4)), name="s")
    msg = check(e, ShapeError, layer="s", op="add")
    assert "(None, 3)" in msg and "(None, 4)" in msg


def test_concatenate_mismatch():
    with pytest.raises(ShapeError) as e:
        gd.concatenate([gd.input("a", (None, 3, 2)), gd.input("b", (None, 4, 2))], axis=-1,
                       name="cat")
    check(e, ShapeError, layer="cat", op="concatenate")
    with pytest.raises(ShapeError) as e:
        gd.concatenate([gd.input("a", (None, 3)), gd.input("b", (None, 3, 1))])
    check(e, ShapeError, op="concatenate")


def test_matmul_mismatch():
    with pytest.raises(ShapeError) as e:
        gd.matmul(gd.input("a", (None, 3, 4)), gd.input("b", (None, 5, 2)), name="mm")
    msg = check(e, ShapeError, layer="mm", op="matmul")
    assert "4" in msg and "5" in msg


def test_dense_unknown_features():
    with pytest.raises(ShapeError) as e:
        gd.dense(gd.input("a", (None, None)), 3, name="fc")
    check(e, ShapeError, layer="fc", op="dense")


@pytest.mark.parametrize("units", [0, -1, 2.5, "8", None, True])
def test_bad_units(units):
    with pytest.raises(OptionError) as e:
        gd.dense(gd.input("a", (None, 3)), units, name="fc")
    check(e, OptionError, layer="fc", op="dense")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2, "0.5", float("nan")])
def test_bad_dropout_rate(rate):
    with pytest.raises(OptionError) as e:
        gd.dropout(gd.input("a", (None, 3)), rate, name="d")
    check(e, OptionError, layer="d", op="dropout")


@pytest.mark.parametrize("build", [
    lambda x: gd.softmax(x, axis=2),
    lambda x: gd.concatenate([x, x], axis=-3),
    lambda x: gd.transpose(x, (0, 0)),
    lambda x: gd.transpose(x, (0, 1, 2)),
    lambda x: gd.layer_norm(x, axis=5),
    lambda x: gd.softmax(x, axis=1.5),
])
def test_bad_axes(build):
    with pytest.raises(gd.GraphDSLError) as e:
        build(gd.input("a", (None, 3)))
    check(e, where=True, shapes=False)


def test_bad_activation_names():
    with pytest.raises(OptionError) as e:
        gd.dense(gd.input("a", (None, 3)), 2, activation="relu7", name="fc")
    assert "relu" in check(e, OptionError, layer="fc", op="dense", shapes=False)
    with pytest.raises(OptionError) as e:
        gd.activation(gd.input("a", (None, 3)), "swish")
    check(e, OptionError, op="activation", shapes=False)


def test_bad_reshape():
    with pytest.raises(ShapeError) as e:
        gd.reshape(gd.input("a", (None, 6)), (None, 4), name="r")
    check(e, ShapeError, layer="r", op="reshape")
    with pytest.raises(OptionError):
        gd.reshape(gd.input("a", (None, 6)), (None, -1, -1))


@pytest.mark.parametrize("name", ["fc.", "1fc", "", "a b", 3, "x-y", "a..b"])
def test_bad_names(name):
    with pytest.raises(LayerNameError) as e:
        gd.dense(gd.input("a", (None, 3)), 2, name=name)
    check(e, LayerNameError, op="dense", shapes=False)


def test_bad_input_name_and_shape():
    with pytest.raises(LayerNameError):
        gd.input("my.input", (None, 3))
    with pytest.raises(OptionError):
        gd.input("x", (None, 0))
    with pytest.raises(OptionError):
        gd.input("x", (None, 3), dtype="complex64")


def test_duplicate_names():
    x = gd.input("x", (None, 3))
    a = gd.dense(x, 2, name="fc")
    b = gd.dense(x, 2, name="fc")
    with pytest.raises(LayerNameError) as e:
        gd.build(a + b)
    msg = check(e, LayerNameError, layer="fc", op="dense", shapes=False)
    assert "used twice" in msg


def test_not_a_node():
    with pytest.raises(gd.GraphDSLError) as e:
        gd.dense(np.zeros((2, 3)), 2)
    check(e, op="dense", shapes=False)


# -- state -------------------------------------------------------------------------------
def test_missing_param_at_predict(mlp):
    _, st, pred = mlp
    del st.data["fc1"]["bias"]
    with pytest.raises(StateError) as e:
        pred(st, np.zeros((1, 4)))
    msg = check(e, StateError, layer="fc1", op="dense", shapes=False)
    assert "fc1.bias" in msg


def test_misshaped_param_at_predict(mlp):
    _, st, pred = mlp
    st.data["fc1"]["bias"] = np.zeros(1, np.float32)  # would broadcast silently
    with pytest.raises(StateError) as e:
        pred(st, np.zeros((1, 4)))
    msg = check(e, StateError, layer="fc1", op="dense")
    assert "(8,)" in msg and "(1,)" in msg


def test_init_rejects_unknown_and_misshaped(mlp):
    model, _, _ = mlp
    init, _ = gd.build(model)
    with pytest.raises(StateError) as e:
        init(None, gd.ModelState({"fc9": {"kernel": np.zeros((4, 8))}}))
    assert "fc9.kernel" in str(e.value) and "fix:" in str(e.value)
    with pytest.raises(StateError) as e:
        init(None, gd.ModelState({"fc1": {"kernel": np.zeros((4, 9))}}))
    check(e, StateError, layer="fc1", op="dense")
    with pytest.raises(StateError):
        init(None, gd.ModelState({"fc1": {"kernel": np.full((4, 8), np.nan)}}))
    with pytest.raises(StateError):
        init(None, {"fc1": {}})


def test_predict_needs_modelstate(mlp):
    _, st, pred = mlp
    with pytest.raises(StateError):
        pred(st.data, np.zeros((1, 4)))


def test_unknown_backend(mlp):
    model, _, _ = mlp
    with pytest.raises(BackendError) as e:
        gd.build(model, backend="jax")
    msg = str(e.value)
    assert "'jax'" in msg and "numpy" in msg and "fix:" in msg


def test_unknown_mode(mlp):
    with pytest.raises(gd.GraphDSLError):
        gd.build(mlp[0], mode="training")


def test_custom_layer_failure_is_explained():
    def broken(x, xp):
        return x @ xp.ones((7, 2))

    with pytest.raises(gd.GraphDSLError) as e:
        gd.layer(broken, gd.input("x", (None, 3)), name="custom")
    check(e, layer="custom", op="custom")


def test_kernel_failure_names_layer():
    def picky(x, xp):
        if x.shape[0] == 5:
            raise ValueError("batch of five")
        return x

    model = gd.layer(picky, gd.input("x", (None, 3)), name="picky")
    init, pred = gd.build(model)
    with pytest.raises(gd.GraphDSLError) as e:
        pred(init(), np.zeros((5, 3)))
    assert "'picky'" in str(e.value) and "batch of five" in str(e.value)


def test_unknown_or_unhashable_options():
    x = gd.input("a", (None, 3))
    with pytest.raises(OptionError) as e:
        gd.activation(x, "relu", alpha=0.1)
    check(e, OptionError, op="relu")
    with pytest.raises(OptionError) as e:
        gd.dense(x, 3, activation={}, name="fc")
    check(e, OptionError, layer="fc", op="dense")
    from graphdsl.node import make_node

    with pytest.raises(OptionError) as e:
        make_node("dense", [x], {"units": 3, "activatoin": "relu"}, "fc")
    assert "activatoin" in check(e, OptionError, layer="fc", op="dense", where=False)


def test_every_entry_point_refuses_a_non_state_with_one_rule(tmp_path):
    """Whatever takes a ModelState refuses a dict the same way (state.need_state): a
    StateError saying who needed it and what it got."""
    from graphdsl import lora
    from graphdsl.errors import StateError

    x = gd.input("x", (None, 3))
    model = gd.dense(x, 2, name="d")
    adapted = lora.adapt(model, ["d"], rank=1)
    st = gd.build(adapted)[0]()
    bad = {"d": {}}
    calls = {
        "predict needs": lambda: gd.predict(model, bad, np.zeros((1, 3), np.float32)),
        "initial_state must be": lambda: gd.build(model)[0](None, bad),
        "merge_adapters needs": lambda: gd.merge_adapters(adapted, bad),
        "untie needs": lambda: gd.untie(model, bad),
        "gd.save: the state must be": lambda: gd.save(tmp_path / "m.gdsl", model, bad),
        "state must be": lambda: gd.display.as_table(model, state=bad),
        "attach_adapters: adapter state must be": lambda: gd.attach_adapters(adapted, st, bad),
        "to_torch needs": lambda: gd.to_torch(model, bad),
    }
    for what, call in calls.items():
        with pytest.raises(StateError, match=rf"^{re.escape(what)} a ModelState, got dict"):
            call()
