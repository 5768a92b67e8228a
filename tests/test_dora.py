"""DoRA layers against an independent NumPy reference (materialized W' = m * V / ||V||)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphdsl as gd
from graphdsl import dora
from graphdsl.adapters._math import dora_column_norm
from graphdsl.errors import RuleError


def ref_dora(x, K, b, A, B, m, s, act=None):
    """The paper's form, written independently: V = K + s*A@B, W' = m * V / ||V||_col."""
    V = K + s * (A @ B)
    norms = np.sqrt((V ** 2).sum(axis=0))
    y = x @ (V * (m / norms)[None, :])
    if b is not None:
        y = y + b
    if act == "tanh":
        y = np.tanh(y)
    return y


def random_params(rng, n_in, n_out, r, dtype=np.float64):
    return {
        "K": rng.standard_normal((n_in, n_out)).astype(dtype) / np.sqrt(n_in),
        "b": rng.standard_normal(n_out).astype(dtype),
        "A": rng.standard_normal((n_in, r)).astype(dtype) * 0.3,
        "B": rng.standard_normal((r, n_out)).astype(dtype) * 0.3,
        "m": rng.uniform(0.5, 2.0, n_out).astype(dtype),
    }


def wrapped_model(n_in=12, n_out=7, rank=4, alpha=8.0, act=None, shape=None, **kw):
    x = gd.input("x", shape or (None, n_in))
    orig = gd.dense(x, n_out, activation=act, name="attn")
    return x, orig, dora.wrap(x, orig, rank=rank, alpha=alpha, **kw)


def state_for(P):
    return gd.ModelState({"attn": {"kernel": P["K"], "bias": P["b"]},
                          "attn_dora": {"A": P["A"], "B": P["B"], "magnitude": P["m"]}})


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.parametrize("act", [None, "tanh"])
def test_fp64_matches_reference_random_params(mode, act):
    rng = np.random.default_rng(0)
    P = random_params(rng, 12, 7, 4)
    _, _, y = wrapped_model(act=act)
    init_fn, predict_fn = gd.build(y, mode=mode, dtype="float64")
    state = init_fn(None, state_for(P))
    x = rng.standard_normal((5, 12))
    out = predict_fn(state, x)
    if mode == "train":
        out = out["prediction"]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref_dora(x, P["K"], P["b"], P["A"], P["B"], P["m"], 2.0,
                                             act), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_float32_matches_fp64_reference(mode):
    rng = np.random.default_rng(1)
    P = random_params(rng, 64, 32, 8)
    _, _, y = wrapped_model(64, 32, rank=8, alpha=16.0)
    init_fn, predict_fn = gd.build(y, mode=mode)
    P32 = {k: v.astype(np.float32) for k, v in P.items()}
    state = init_fn(None, state_for(P32))
    x = rng.standard_normal((16, 64)).astype(np.float32)
    out = predict_fn(state, x)
    out = out["prediction"] if mode == "train" else out
    assert out.dtype == np.float32
    ref = ref_dora(x.astype(np.float64), *(P32[k].astype(np.float64) for k in "KbABm"), 2.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_three_d_input_and_rslora():
    rng = np.random.default_rng(2)
    P = random_params(rng, 12, 7, 4)
    _, _, y = wrapped_model(shape=(None, 3, 12), rslora=True)
    assert gd.get_output_shape(y) == (None, 3, 7)
    _, predict_fn = gd.build(y, dtype="float64")
    x = rng.standard_normal((2, 3, 12))
    out = predict_fn(state_for(P), x)
    s = 8.0 / np.sqrt(4)
    np.testing.assert_allclose(out, ref_dora(x, P["K"], P["b"], P["A"], P["B"], P["m"], s),
                               rtol=1e-9, atol=1e-9)


def test_wrapped_equals_original_at_init_same_seed():
    _, orig, y = wrapped_model(act="tanh")
    x = np.random.default_rng(3).standard_normal((6, 12)).astype(np.float32)
    i0, p0 = gd.build(orig, seed=7)
    i1, p1 = gd.build(y, seed=7)
    s0, s1 = i0(x), i1(x)
    np.testing.assert_array_equal(s1.data["attn"]["kernel"], s0.data["attn"]["kernel"])
    np.testing.assert_array_equal(s1.data["attn_dora"]["B"], 0)
    np.testing.assert_allclose(p1(s1, x), p0(s0, x), rtol=1e-6, atol=1e-6)
    # the magnitude is the column norm of the kernel the layer has
    np.testing.assert_allclose(s1.data["attn_dora"]["magnitude"],
                               np.linalg.norm(s0.data["attn"]["kernel"], axis=0), rtol=1e-6)


def test_pretrained_kernel_in_initial_state_sets_magnitude():
    rng = np.random.default_rng(4)
    K = rng.standard_normal((12, 7)).astype(np.float32) * 3
    b = rng.standard_normal(7).astype(np.float32)
    _, orig, y = wrapped_model()
    init_fn, predict_fn = gd.build(y)
    state = init_fn(None, gd.ModelState({"attn": {"kernel": K, "bias": b}}))
    np.testing.assert_array_equal(state.data["attn"]["kernel"], K)
    np.testing.assert_allclose(state.data["attn_dora"]["magnitude"],
                               np.linalg.norm(K.astype(np.float64), axis=0), rtol=1e-6)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    np.testing.assert_allclose(predict_fn(state, x), x @ K + b, rtol=1e-5, atol=1e-5)
    assert state.frozen == {("attn", "kernel"), ("attn", "bias")}
    assert set(state.trainable_parameters()["attn_dora"]) == {"A", "B", "magnitude"}


def test_a_init_is_peft_uniform():
    _, _, y = wrapped_model(n_in=400, n_out=30, rank=16)
    st = gd.build(y)[0](np.zeros((1, 400), np.float32))
    A = st.data["attn_dora"]["A"]
    assert A.shape == (400, 16)
    assert np.abs(A).max() <= 1 / np.sqrt(400)
    assert np.abs(A).max() > 0.9 / np.sqrt(400)  # fills the range


def test_build_surface():
    m = dora.build(input_size=10, output_size=6, rank=2, alpha=4.0)
    assert gd.get_inputs(m) == {"input": (None, 10)}
    assert gd.get_output_shape(m) == (None, 6)
    specs = gd.get_parameters(m)["dora"]
    assert list(specs) == ["base_weight", "A", "B", "magnitude"]
    assert specs["base_weight"].shape == (10, 6) and specs["A"].shape == (10, 2)
    assert specs["B"].shape == (2, 6) and specs["magnitude"].shape == (6,)
    init_fn, predict_fn = gd.build(m, dtype="float64")
    st = init_fn((1, 10))
    assert st.frozen == {("dora", "base_weight")}
    x = np.random.default_rng(5).standard_normal((3, 10))
    np.testing.assert_allclose(predict_fn(st, x), x @ st.data["dora"]["base_weight"],
                               rtol=1e-12)
    assert dora.output_size(output_size=6, rank=2) == 6
    assert dora.recommended_defaults() == {"rank": 8, "alpha": 16.0}
    assert m.attrs["scale"] == 2.0


def test_dora_layer_inline_with_bias_and_activation():
    rng = np.random.default_rng(6)
    x = gd.input("x", (None, 5))
    y = dora.dora_layer(x, 5, 3, rank=2, alpha=2.0, name="d", use_bias=True, activation="tanh")
    init_fn, predict_fn = gd.build(y, dtype="float64")
    st = init_fn((1, 5))
    P = random_params(rng, 5, 3, 2)
    st.data["d"].update(base_weight=P["K"], bias=P["b"], A=P["A"], B=P["B"], magnitude=P["m"])
    xv = rng.standard_normal((4, 5))
    np.testing.assert_allclose(predict_fn(st, xv),
                               ref_dora(xv, P["K"], P["b"], P["A"], P["B"], P["m"], 1.0, "tanh"),
                               rtol=1e-9, atol=1e-9)


def test_cache_picks_up_replaced_values_and_locks_sources():
    rng = np.random.default_rng(7)
    P = random_params(rng, 12, 7, 4, np.float32)
    _, _, y = wrapped_model()
    init_fn, predict_fn = gd.build(y)
    st = init_fn(None, state_for(P))
    x = rng.standard_normal((3, 12)).astype(np.float32)
    first = predict_fn(st, x)
    assert not st.data["attn_dora"]["A"].flags.writeable  # in-place edits are impossible
    with pytest.raises(gd.GraphDSLError, match="immutable"):
        st.data["attn_dora"]["A"][0, 0] = 1.0
    newB = rng.standard_normal((4, 7)).astype(np.float32)
    st.data["attn_dora"]["B"] = newB
    second = predict_fn(st, x)
    ref = ref_dora(x, P["K"], P["b"], P["A"], newB, P["m"], 2.0)
    np.testing.assert_allclose(second, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, second)
    # a second state with its own arrays is served from its own values
    st2 = st.deepcopy()
    st2.data["attn_dora"]["magnitude"] = st2.data["attn_dora"]["magnitude"] * 2
    np.testing.assert_allclose(predict_fn(st2, x) - P["b"], 2 * (second - P["b"]), rtol=1e-5,
                               atol=1e-5)


def test_state_owns_a_copy_of_a_writable_view():
    rng = np.random.default_rng(8)
    P = random_params(rng, 12, 7, 4, np.float32)
    big = np.zeros((4, 14), np.float32)
    big[:, :7] = P["B"]
    P["B"] = big[:, :7]  # a view of a writable array
    _, _, y = wrapped_model()
    init_fn, predict_fn = gd.build(y)
    st = init_fn(None, state_for(P))
    x = rng.standard_normal((3, 12)).astype(np.float32)
    predict_fn(st, x)
    first = predict_fn(st, x)
    big[:, :7] *= -1  # the user's array, not the state's: the state keeps what it was given
    np.testing.assert_array_equal(predict_fn(st, x), first)
    st.data["attn_dora"]["B"] = big[:, :7]  # storing it again takes effect
    ref = ref_dora(x, P["K"], P["b"], P["A"], big[:, :7], P["m"], 2.0)
    np.testing.assert_allclose(predict_fn(st, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xshape", [(50, 12), (5, 10, 12)])
def test_dropout_train_formula_with_same_mask(xshape):
    rng = np.random.default_rng(9)
    P = random_params(rng, 12, 7, 4)
    _, _, y = wrapped_model(dropout=0.3, shape=(None,) * (len(xshape) - 1) + (12,))
    init_fn, predict_fn = gd.build(y, mode="train", dtype="float64")
    st = init_fn(None, state_for(P))
    assert st.entries == {"attn_dora": ["key"]}
    key = st.data["attn_dora"]["key"]
    x = rng.standard_normal(xshape)
    out = predict_fn(st, x)
    # reference: the mask rule of the dropout op, PEFT's formula
    g = np.random.default_rng(int(key))
    keep = g.random(x.shape, dtype=np.float32) >= 0.3
    xd = np.where(keep, x / 0.7, 0.0)
    V = P["K"] + 2.0 * P["A"] @ P["B"]
    r = P["m"] / np.linalg.norm(V, axis=0)
    ref = x @ P["K"] + P["b"] + (r - 1) * (xd @ P["K"]) + r * 2.0 * ((xd @ P["A"]) @ P["B"])
    np.testing.assert_allclose(out["prediction"], ref, rtol=1e-9, atol=1e-9)
    assert out["state"].data["attn_dora"]["key"] != key
    # inference ignores dropout
    _, pred = gd.build(y, dtype="float64")
    np.testing.assert_allclose(pred(st, x), ref_dora(x, P["K"], P["b"], P["A"], P["B"],
                                                     P["m"], 2.0), rtol=1e-9, atol=1e-9)


def test_no_key_without_dropout():
    _, _, y = wrapped_model()
    assert "key" not in gd.get_parameters(y)["attn_dora"]


# -- zero-norm columns ------------------------------------------------------------------
def test_zero_norm_column_at_init_is_an_error():
    _, _, y = wrapped_model()
    init_fn, _ = gd.build(y)
    K = np.ones((12, 7), np.float32)
    K[:, [2, 5]] = 0
    with pytest.raises(gd.GraphDSLError) as e:
        init_fn(None, gd.ModelState({"attn": {"kernel": K}}))
    msg = str(e.value)
    assert "[2, 5]" in msg and "eps=" in msg and "attn_dora" in msg and "dora" in msg


def test_zero_norm_column_at_predict_is_an_error_not_nan():
    rng = np.random.default_rng(10)
    P = random_params(rng, 12, 7, 4, np.float32)
    P["K"][:, 3] = 0
    P["B"][:, 3] = 0
    _, _, y = wrapped_model()
    for mode in ("inference", "train"):
        init_fn, predict_fn = gd.build(y, mode=mode)
        st = init_fn(None, state_for(P))
        with pytest.raises(gd.GraphDSLError) as e:
            predict_fn(st, np.ones((2, 12), np.float32))
        assert "[3]" in str(e.value) and "eps=" in str(e.value)
        assert e.value.layer == "attn_dora" and e.value.op == "dora"


def test_eps_clamps_the_norm():
    rng = np.random.default_rng(11)
    P = random_params(rng, 12, 7, 4)
    P["K"][:, 3] = 0
    P["B"][:, 3] = 0
    _, _, y = wrapped_model(eps=1e-3)
    for mode in ("inference", "train"):
        init_fn, predict_fn = gd.build(y, mode=mode, dtype="float64")
        out = predict_fn(init_fn(None, state_for(P)), rng.standard_normal((2, 12)))
        out = out["prediction"] if mode == "train" else out
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out[:, 3], P["b"][3])  # zero direction: only the bias


# -- user errors ---------------------------------------------------------------------------
def test_wrap_errors():
    x = gd.input("x", (None, 12))
    orig = gd.dense(x, 7, name="attn")
    with pytest.raises(gd.GraphDSLError, match="name it"):
        dora.wrap(x, gd.dense(x, 7))
    with pytest.raises(gd.GraphDSLError,
                       match="needs a dense, conv or embedding layer, got a dropout") as e:
        dora.wrap(x, gd.dropout(orig, name="r"))
    assert "gd.dense" in e.value.fix
    with pytest.raises(gd.GraphDSLError, match="already an adapter"):
        dora.wrap(x, dora.wrap(x, orig))
    with pytest.raises(gd.GraphDSLError, match="output_size=8") as e:
        dora.wrap(x, orig, output_size=8)
    assert "output_size=7" in e.value.fix and "test_dora.py" in e.value.where
    with pytest.raises(gd.GraphDSLError, match="kernel of shape"):
        dora.wrap(gd.input("z", (None, 5)), orig)
    with pytest.raises(gd.GraphDSLError, match="original must be the layer to wrap"):
        dora.wrap(x, "attn")
    assert dora.wrap(x, orig, output_size=7).shape == (None, 7)


@pytest.mark.parametrize("kw,match", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"alpha": -1.0}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"eps": 0.0}, "eps must be > 0"),
    ({"rslora": "yes"}, "rslora must be True or False"),
])
def test_option_errors(kw, match):
    x = gd.input("x", (None, 12))
    with pytest.raises(gd.GraphDSLError, match=match) as e:
        dora.dora_layer(x, 12, 4, name="d", **kw)
    assert e.value.layer == "d" and e.value.op == "dora" and e.value.fix


def test_layer_and_build_errors():
    x = gd.input("x", (None, 12))
    with pytest.raises(gd.GraphDSLError, match="input_size=10 but the input's last axis"):
        dora.dora_layer(x, 10, 4)
    with pytest.raises(gd.GraphDSLError, match="output_size must be a positive integer"):
        dora.build(input_size=4, output_size=0)
    with pytest.raises(gd.GraphDSLError, match="input must be a graph node"):
        dora.dora_layer(np.zeros(3), 3, 4)
    with pytest.raises(gd.GraphDSLError, match="needs output_size"):
        dora.output_size()
    with pytest.raises(gd.GraphDSLError, match="known last"):
        dora.dora_layer(gd.input("u", (None, None)), 3, 4)


def test_train_mode_picks_up_a_replaced_kernel():
    rng = np.random.default_rng(12)
    P = random_params(rng, 12, 7, 4)
    _, _, y = wrapped_model()
    init_fn, train_fn = gd.build(y, mode="train", dtype="float64")
    st = init_fn(None, state_for(P))
    x = rng.standard_normal((3, 12))
    train_fn(st, x)
    K2 = P["K"] * 2 + 0.1
    st.data["attn"]["kernel"] = K2
    np.testing.assert_allclose(train_fn(st, x)["prediction"],
                               ref_dora(x, K2, P["b"], P["A"], P["B"], P["m"], 2.0),
                               rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(n_in=st.integers(1, 20), n_out=st.integers(1, 20), r=st.integers(1, 6),
       s=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_factored_norm_equals_direct_norm(n_in, n_out, r, s, seed):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((n_in, n_out))
    A = rng.standard_normal((n_in, r))
    B = rng.standard_normal((r, n_out))
    direct = np.linalg.norm(K + s * A @ B, axis=0)
    try:
        c = dora_column_norm(K, A, B, s)
    except RuleError:  # only when a column cancels to round-off level
        assert direct.min() < 1e-6 * (np.linalg.norm(K) + s * np.linalg.norm(A @ B))
        return
    np.testing.assert_allclose(c, direct, rtol=1e-7, atol=1e-10)


def test_merged_kernel_cache_follows_each_input_alone():
    """The cached merged kernel (inference) is keyed on every input it comes from: replace
    the kernel, bias, A, B or magnitude alone (same predict function, so same cache) and
    the prediction follows the reference each time; alpha is the layer's own option."""
    rng = np.random.default_rng(21)
    P = random_params(rng, 12, 7, 4)
    x = rng.standard_normal((3, 12))
    where = {"K": ("attn", "kernel"), "b": ("attn", "bias"), "A": ("attn_dora", "A"),
             "B": ("attn_dora", "B"), "m": ("attn_dora", "magnitude")}
    for alpha in (8.0, 3.0):
        _, _, y = wrapped_model(alpha=alpha)
        init_fn, predict_fn = gd.build(y, dtype="float64")
        st = init_fn(None, state_for(P))
        Q = dict(P)
        for name, (layer, param) in [(None, (None, None))] + list(where.items()):
            if name is not None:
                Q[name] = Q[name] * rng.uniform(0.5, 1.5, Q[name].shape) + 0.05
                st.data[layer][param] = Q[name]
            want = ref_dora(x, Q["K"], Q["b"], Q["A"], Q["B"], Q["m"], alpha / 4)
            np.testing.assert_allclose(predict_fn(st, x), want, rtol=1e-9, atol=1e-9,
                                       err_msg=f"after replacing {name} (alpha {alpha})")


def test_an_option_the_adapter_does_not_keep_is_refused():
    """Unknown options, and another kind's options (a conv window on a dense adapter),
    are refused by name; the fix lists what this adapter takes."""
    from graphdsl.node import make_node

    x = gd.input("x", (None, 8))
    for extra in ({"foo": 1}, {"kernel_size": 3}):
        with pytest.raises(gd.GraphDSLError, match=rf"dora has no option\(s\) "
                           rf"\['{next(iter(extra))}'\]") as e:
            make_node("dora", [x], {"units": 3, **extra}, "bad")
        assert "detach_norm" in e.value.fix and "kernel_size" not in e.value.fix
