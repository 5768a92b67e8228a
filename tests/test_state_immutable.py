"""State values are immutable (issue 10, item 1): every way a user can change a weight
either takes effect at the next call or is refused with a GraphDSLError, and the merged
adapter kernel is cached on every way of obtaining a state."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, lora

IN, OUT, R = 12, 7, 4


def _adapted(kind):
    x = gd.input("x", (None, IN))
    orig = gd.dense(x, OUT, name="fc")
    return (dora if kind == "dora" else lora).wrap(x, orig, rank=R, alpha=8.0, name="ad")


def _ref(kind, x, st):
    d, a = st.data["fc"], st.data["ad"]
    K, b, A, B = d["kernel"], d["bias"], a["A"], a["B"]
    W = K + 2.0 * (A @ B)
    if kind == "dora":
        W = W * (a["magnitude"] / np.linalg.norm(W, axis=0))
    return x @ W + b


def _trained(kind, seed=0):
    rng = np.random.default_rng(seed)
    model = _adapted(kind)
    init_fn, predict_fn = gd.build(model)
    st = init_fn(np.zeros((1, IN), np.float32))
    st.data["ad"]["B"] = rng.standard_normal((R, OUT)).astype(np.float32)
    return model, predict_fn, st, rng.standard_normal((3, IN)).astype(np.float32)


@pytest.mark.parametrize("kind", ["dora", "lora"])
def test_a_view_made_before_the_first_predict_cannot_write(kind):
    model, predict_fn, st, x = _trained(kind)
    flat = st.data["ad"]["B"].reshape(-1)  # a view taken before the cache exists
    first = predict_fn(st, x)
    with pytest.raises(gd.GraphDSLError, match="immutable"):
        flat[:] = 0.5
    with pytest.raises(ValueError):  # numpy's own way of writing is refused too
        np.copyto(flat, 0.5)
    with pytest.raises(ValueError):
        flat.flags.writeable = True
    np.testing.assert_array_equal(predict_fn(st, x), first)
    np.testing.assert_allclose(first, _ref(kind, x, st), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dora", "lora"])
def test_every_supported_change_takes_effect_at_the_next_call(kind):
    model, predict_fn, st, x = _trained(kind)
    predict_fn(st, x)
    st.data["ad"]["B"] = st.data["ad"]["B"] * 0.5  # replace an entry
    np.testing.assert_allclose(predict_fn(st, x), _ref(kind, x, st), rtol=1e-5, atol=1e-5)
    st.data["ad"].update(A=st.data["ad"]["A"] + 0.1)  # dict methods seal too
    np.testing.assert_allclose(predict_fn(st, x), _ref(kind, x, st), rtol=1e-5, atol=1e-5)
    st.data["fc"] = {"kernel": st.data["fc"]["kernel"] * 2, "bias": st.data["fc"]["bias"] + 1}
    np.testing.assert_allclose(predict_fn(st, x), _ref(kind, x, st), rtol=1e-5, atol=1e-5)
    mine = np.ones((R, OUT), np.float32)
    st.data["ad"]["B"] = mine  # the state keeps a copy: later edits of mine change nothing
    before = predict_fn(st, x)
    mine[:] = 3.0
    np.testing.assert_array_equal(predict_fn(st, x), before)


def test_in_place_writes_name_the_fix_and_pretrained_arrays_stay_the_users():
    x = gd.input("x", (None, IN))
    model = dora.wrap(x, gd.dense(x, OUT, name="fc"), rank=R, name="ad")
    K = np.random.default_rng(1).standard_normal((IN, OUT)).astype(np.float32)
    st = gd.build(model)[0](None, gd.ModelState({"fc": {"kernel": K}}))
    K += 1  # the user's own array stays writable
    assert not np.array_equal(st.data["fc"]["kernel"], K)
    for write in (lambda a: a.__iadd__(1), lambda a: a.__setitem__(0, 1), lambda a: a.fill(0)):
        with pytest.raises(gd.GraphDSLError) as e:
            write(st.data["fc"]["kernel"])
        assert "state.data[layer][param] =" in str(e.value)
    with pytest.raises(gd.GraphDSLError, match="immutable"):
        st.data["fc"]["kernel"] += 1
    # arithmetic on state values gives ordinary writable arrays
    y = st.data["fc"]["kernel"] * 2
    assert type(y) is np.ndarray and y.flags.writeable
    assert type(st.data["fc"]["kernel"].sum()) is np.float32


@pytest.mark.parametrize("bad", [np.array([object()] * OUT, dtype=object),
                                 np.ones(OUT, np.complex64), np.array(["a"] * OUT)])
def test_non_numeric_values_are_refused_when_stored(bad):
    st = gd.build(gd.dense(gd.input("x", (None, IN)), OUT, name="fc"))[0]()
    with pytest.raises(gd.GraphDSLError, match=r"fc\.bias.*dtype"):
        st.data["fc"]["bias"] = bad
    with pytest.raises(gd.GraphDSLError, match="dtype"):
        gd.ModelState({"fc": {"bias": bad}})


def test_requires_grad_tensors_and_other_dtypes_are_converted_on_entry():
    torch = pytest.importorskip("torch")
    model = gd.dense(gd.input("x", (None, IN)), OUT, name="fc")
    st = gd.build(model)[0]()
    k = torch.randn(IN, OUT, requires_grad=True)
    st.data["fc"]["kernel"] = k
    st.data["fc"]["bias"] = np.arange(OUT, dtype=">f4")  # big-endian
    assert st.data["fc"]["kernel"].dtype == np.float32 and st.data["fc"]["bias"].dtype.isnative
    x = np.ones((2, IN), np.float32)
    np.testing.assert_allclose(gd.predict(model, st, x),
                               x @ k.detach().numpy() + np.arange(OUT), rtol=1e-5)
    assert "parameters=" in repr(st) and st == st.deepcopy()
    gd.to_torch(model, st)
    st.data["fc"]["kernel"] = torch.ones(IN, OUT, dtype=torch.bfloat16)
    assert st.data["fc"]["kernel"].dtype == np.float32


def _count_merges(monkeypatch):
    import graphdsl.backends.numpy_backend.adapters as na

    calls = {"n": 0}
    real = na.merged_kernel

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(na, "merged_kernel", counted)
    return calls


@pytest.mark.parametrize("kind", ["dora", "lora"])
@pytest.mark.parametrize("path", ["init_fn", "pretrained", "load", "load_adapters",
                                  "attach_adapters", "float64", "from_torch", "deepcopy"])
def test_the_merged_kernel_is_cached_on_every_way_of_getting_a_state(
        kind, path, tmp_path, monkeypatch):
    model = _adapted(kind)
    dtype = "float64" if path == "float64" else "float32"
    init_fn, predict_fn = gd.build(model, dtype=dtype)
    base = gd.ModelState({"fc": {"kernel": np.ones((IN, OUT), np.float32),
                                 "bias": np.zeros(OUT, np.float32)}})
    if path in ("init_fn", "float64"):
        st = init_fn(np.zeros((1, IN), dtype))
    elif path == "pretrained":
        st = init_fn(None, base)
    elif path == "load":
        gd.save(tmp_path / "m.gdsl", model, init_fn(None, base))
        st = gd.load(tmp_path / "m.gdsl")[1]
    elif path == "load_adapters":
        gd.save_adapters(tmp_path / "a.gdsl", model, init_fn(None, base))
        st = gd.load_adapters(tmp_path / "a.gdsl", model, base)
    elif path == "attach_adapters":
        st = gd.attach_adapters(model, base, gd.adapter_state(model, init_fn(None, base)))
    elif path == "from_torch":
        pytest.importorskip("torch")
        st = gd.from_torch(gd.to_torch(model, init_fn(None, base)))
    else:
        st = init_fn(None, base).deepcopy()
    calls = _count_merges(monkeypatch)
    x = np.ones((2, IN), dtype)
    outs = [predict_fn(st, x) for _ in range(3)]
    assert calls["n"] == 1
    np.testing.assert_allclose(outs[-1], _ref(kind, x, st), rtol=1e-5, atol=1e-5)


def test_float32_state_in_a_float64_model_is_converted_once(monkeypatch):
    model = _adapted("dora")
    st = gd.build(model)[0](np.zeros((1, IN), np.float32))
    predict64 = gd.build(model, dtype="float64")[1]
    calls = _count_merges(monkeypatch)
    for _ in range(3):
        y = predict64(st, np.ones((2, IN)))
    assert calls["n"] == 1 and y.dtype == np.float64


def test_torch_module_sees_writes_through_param_data():
    torch = pytest.importorskip("torch")
    model = _adapted("dora")
    st = gd.build(model)[0](np.zeros((1, IN), np.float32))
    st.data["ad"]["B"] = np.full((R, OUT), 0.1, np.float32)
    m = gd.to_torch(model, st)
    x = torch.randn(3, IN)
    m(x)  # a first call (a cache, if any, would be filled here)
    m.fc.kernel.data.mul_(2.0)  # bypasses torch's version counter
    fresh = gd.to_torch(model, gd.from_torch(m))
    torch.testing.assert_close(m(x), fresh(x), rtol=1e-5, atol=1e-5)
    m.fc.kernel.data.copy_(torch.ones(IN, OUT))
    np.testing.assert_allclose(m(x).detach().numpy(),
                               _ref("dora", x.numpy(), gd.from_torch(m)), rtol=1e-4,
                               atol=1e-5)
