"""The torch backend: every registered op agrees with the NumPy backend (1e-5), both as
``build(backend="torch")`` and as the ``to_torch`` module; inputs as arrays or tensors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
R = np.random.default_rng(7)


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _x(shape=(None, 6), name="x"):
    return gd.input(name, shape)


def _case_adapter(mod, **kw):
    def make():
        x = _x((None, 3, 6))
        base = gd.dense(x, 5, activation="tanh", name="base")
        y = mod.wrap(x, base, rank=2, alpha=4.0, name="ad", **kw)
        def tweak(st):  # nonzero B and a moved magnitude, so the adapter does something
            st.data["ad"]["B"] = _f(2, 5)
            if "magnitude" in st.data["ad"]:
                st.data["ad"]["magnitude"] = st.data["ad"]["magnitude"] * 1.5
        return y, {"x": _f(4, 3, 6)}, tweak
    return make


def _simple(build_model, inputs):
    return lambda: (build_model(), inputs(), None)


def _custom_fn(a, b, xp, k=1.0):
    return xp.tanh(a) * k + b * b


# op -> () -> (model, inputs, state tweak or None)
CASES = {
    "input": _simple(lambda: gd.container([_x()]), lambda: {"x": _f(3, 6)}),
    "constant": _simple(lambda: gd.add(_x(), gd.constant(np.linspace(-1, 1, 6))),
                        lambda: {"x": _f(3, 6)}),
    "param": _simple(lambda: gd.multiply(_x(), gd.param("p", (6,), "normal")),
                     lambda: {"x": _f(3, 6)}),
    "custom": _simple(lambda: gd.layer(_custom_fn, [_x(), _x(name="z")], k=2.0),
                     lambda: {"x": _f(3, 6), "z": _f(3, 6)}),
    # the optional input left out (its default runs) and given
    "optional": _simple(lambda: (lambda x: gd.container([
        gd.add(x, gd.optional(_x(name="bias"), gd.full_like(x, 0.5))),
        gd.optional(_x(name="scale"), gd.full_like(x, 2.0))]))(_x()),
        lambda: {"x": _f(3, 6), "scale": _f(3, 6)}),
    "full_like": _simple(lambda: (lambda ids: gd.container([
        gd.full_like(ids, 1), gd.full_like(ids, -1.5, dtype="float32")]))(
            gd.input("ids", (None, 5), dtype="int64")),
        lambda: {"ids": R.integers(0, 11, (3, 5))}),
    "container": _simple(lambda: (lambda x: gd.container({
        "a": gd.relu(x), "b": gd.container([gd.tanh(x), x])}))(_x()),
                         lambda: {"x": _f(3, 6)}),
    "dense": _simple(lambda: gd.dense(_x((None, 2, 6)), 4, activation="silu"),
                     lambda: {"x": _f(3, 2, 6)}),
    "dropout": _simple(lambda: gd.dense(gd.dropout(_x(), 0.4), 3),
                       lambda: {"x": _f(3, 6)}),
    "layer_norm": _simple(lambda: (lambda x: gd.add(gd.layer_norm(x), gd.layer_norm(
        x, axis=1, name="ln1")))(_x((None, 4, 6))), lambda: {"x": _f(3, 4, 6) * 3 + 1}),
    "embedding": _simple(lambda: gd.embedding(gd.input("ids", (None, 5), dtype="int64"), 11, 4,
                                              kernel_initializer="normal"),
                         lambda: {"ids": R.integers(0, 11, (3, 5))}),
    "add": _simple(lambda: gd.add([_x(), _x((1, 6), name="z"), gd.constant(np.ones(6))]),
                   lambda: {"x": _f(3, 6), "z": _f(1, 6)}),
    "subtract": _simple(lambda: gd.subtract([_x(), _x(name="z"), _x((None, 1), name="w")]),
                        lambda: {"x": _f(3, 6), "z": _f(3, 6), "w": _f(3, 1)}),
    "multiply": _simple(lambda: gd.multiply(_x(), _x(name="z")),
                        lambda: {"x": _f(3, 6), "z": _f(3, 6)}),
    "concatenate": _simple(lambda: gd.concatenate([_x((None, 2, 6)), _x((None, 3, 6), "z")],
                                                  axis=1),
                           lambda: {"x": _f(4, 2, 6), "z": _f(4, 3, 6)}),
    "reshape": _simple(lambda: gd.reshape(_x((None, 4, 6)), (None, -1, 2)),
                       lambda: {"x": _f(3, 4, 6)}),
    "flatten": _simple(lambda: gd.flatten(_x((None, 4, 6))), lambda: {"x": _f(3, 4, 6)}),
    "transpose": _simple(lambda: gd.transpose(_x((None, 4, 6)), (0, -1, 1)),
                         lambda: {"x": _f(3, 4, 6)}),
    "matmul": _simple(lambda: gd.matmul(_x((None, 4, 6)), _x((None, 6, 2), "z")),
                      lambda: {"x": _f(3, 4, 6), "z": _f(3, 6, 2)}),
    "dora": _case_adapter(dora),
    "lora": _case_adapter(lora),
}
for _act, _opts in [("relu", {}), ("gelu", {}), ("sigmoid", {}), ("tanh", {}),
                    ("softmax", {"axis": 1}), ("log_softmax", {}), ("silu", {}),
                    ("elu", {"alpha": 0.7}), ("leaky_relu", {"alpha": 0.2}),
                    ("softplus", {})]:
    CASES[_act] = (lambda a=_act, o=_opts: (
        gd.activation(_x((None, 4, 6)), a, **o), {"x": _f(3, 4, 6) * 4}, None))
CASES["gelu_tanh"] = lambda: (gd.gelu(_x(), approximate=True), {"x": _f(3, 6) * 3}, None)


# the transformer ops (graphdsl/ops/transformer.py)
def _attention_case():
    q, k, v = _x((None, 4, 5, 8), "q"), _x((None, 2, 7, 8), "k"), _x((None, 2, 7, 8), "v")
    am = gd.input("am", (None, 7), dtype="int64")
    mask = gd.reshape(am, (None, 1, 1, -1))
    return gd.container([gd.attention(q, k, v, mask=mask, causal=True, window=3),
                         gd.attention(q, k, v, scale=0.2)])


def _tied_case():
    emb = gd.embedding(gd.input("ids", (None, 5), dtype="int64"), 11, 6, name="emb",
                       kernel_initializer="normal")
    y = gd.tied_dense(gd.tanh(emb), emb, use_bias=True, name="head")

    def tweak(st):
        st.data["head"]["bias"] = _f(11)
    return y, {"ids": R.integers(0, 11, (3, 5))}, tweak


def _rms_tweak(st):
    st.data["rms"]["gamma"] = _f(6)


CASES.update({
    "attention": _simple(_attention_case, lambda: {
        "q": _f(3, 4, 5, 8), "k": _f(3, 2, 7, 8), "v": _f(3, 2, 7, 8),
        "am": np.array([[1] * 7, [0, 0] + [1] * 5, [1] * 4 + [0] * 3])}),
    "rms_norm": lambda: (gd.rms_norm(_x((None, 4, 6)), epsilon=1e-5, name="rms"),
                         {"x": _f(3, 4, 6) * 2 + 1}, _rms_tweak),
    "rotary_embedding": _simple(lambda: gd.rotary_embedding(
        _x((None, 2, 5, 8)), gd.input("pos", (None, 5), dtype="int64"), theta=500.0),
        lambda: {"x": _f(3, 2, 5, 8), "pos": R.integers(0, 100, (3, 5))}),
    "slice": _simple(lambda: (lambda x: gd.container([
        *gd.split(x, [2, 4], name="sp"), gd.slice(x, -3, None, axis=1)]))(_x((None, 4, 6))),
        lambda: {"x": _f(3, 4, 6)}),
    "positions": _simple(lambda: gd.positions(gd.input("ids", (None, 5), dtype="int64"),
                                              offset=2),
                         lambda: {"ids": R.integers(0, 11, (3, 5))}),
    "tied_dense": _tied_case,
})


def _bn_tweak(st):
    st.data["bn"].update(mean=_f(4), var=np.abs(_f(4)) + 0.5, gamma=_f(4), beta=_f(4))


_IMG = (None, 7, 6, 4)
CASES.update({  # the convolutional ops (their reference tests: tests/test_conv.py)
    "conv": _simple(lambda: gd.conv(_x(_IMG), 6, 3, strides=(2, 1), padding="same",
                                    feature_group_size=2, activation="relu"),
                    lambda: {"x": _f(3, 7, 6, 4)}),
    "max_pool": _simple(lambda: gd.max_pool(_x(_IMG), 3, strides=2, padding="same"),
                        lambda: {"x": _f(3, 7, 6, 4)}),
    "avg_pool": _simple(lambda: gd.avg_pool(_x(_IMG), 2, padding=[(1, 0), (0, 1)]),
                        lambda: {"x": _f(3, 7, 6, 4)}),
    "global_avg_pool": _simple(lambda: gd.global_avg_pool(_x(_IMG)),
                               lambda: {"x": _f(3, 7, 6, 4)}),
    "global_max_pool": _simple(lambda: gd.global_max_pool(_x(_IMG), keep_axes=True),
                               lambda: {"x": _f(3, 7, 6, 4)}),
    "batch_norm": lambda: (gd.batch_norm(_x(_IMG), name="bn"), {"x": _f(3, 7, 6, 4)},
                           _bn_tweak),
    "group_norm": _simple(lambda: gd.group_norm(_x(_IMG), 2), lambda: {"x": _f(3, 7, 6, 4)}),
})


def _np(y):
    if isinstance(y, dict):
        return {k: _np(v) for k, v in y.items()}
    if isinstance(y, tuple):
        return tuple(_np(v) for v in y)
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _close(a, b):
    a, b = _np(a), _np(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v)
    else:
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **TOL)


def _setup(op):
    model, inputs, tweak = CASES[op]()
    init, _ = gd.build(model)
    st = init({k: v for k, v in inputs.items()})
    if tweak:
        tweak(st)
    return model, inputs, st


@pytest.mark.parametrize("op", sorted(gd.OPS))
def test_every_op_matches_numpy(op):
    if op not in CASES:
        pytest.fail(f"op {op!r} has no torch parity case: add one to CASES")
    model, inputs, st = _setup(op)
    assert op in gd.get_op_counts(model)
    arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    ref = gd.predict(model, st, arg, backend="numpy")
    # functional backend, NumPy inputs and tensor inputs
    _close(gd.predict(model, st, arg, backend="torch"), ref)
    targ = ({k: torch.from_numpy(v) for k, v in inputs.items()} if len(inputs) > 1
            else torch.from_numpy(next(iter(inputs.values()))))
    _close(gd.predict(model, st, targ, backend="torch"), ref)
    # the lowered module, in eval mode, inputs positionally and by name
    m = gd.to_torch(model, st).eval()
    with torch.no_grad():
        ordered = [torch.from_numpy(inputs[k]) if k in inputs else None  # optional: left out
                   for k in gd.get_inputs(model)]
        _close(m(*ordered), ref)
        _close(m(**{k: torch.from_numpy(v) for k, v in inputs.items()}), ref)


@pytest.mark.parametrize("op", ["dora", "lora", "dense", "layer_norm"])
def test_train_mode_matches_numpy(op):
    """Train mode without dropout: same prediction and state as NumPy's train mode."""
    model, inputs, st = _setup(op)
    arg = next(iter(inputs.values()))
    ref = gd.build(model, mode="train")[1](st, arg)
    got = gd.build(model, backend="torch", mode="train")[1](st, arg)
    _close(got["prediction"], ref["prediction"])
    assert got["state"] == ref["state"]


def test_init_is_backend_independent():
    model, inputs, _ = CASES["dora"]()
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
