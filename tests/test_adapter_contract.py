"""The adapter contract (graphdsl.adapters.contract) and the one zero-norm rule that
every DoRA path (NumPy inference and training, merge_adapters, torch backend, module)
applies."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, lora
from graphdsl.adapters import contract
from graphdsl.adapters.kinds import KINDS

torch = pytest.importorskip("torch")

IN, OUT, R = 10, 5, 2


def test_every_adapter_op_declares_a_merge_and_the_contract_knows_it():
    assert contract.adapter_ops() == ["dora", "lora"]
    for op in contract.adapter_ops():
        assert callable(gd.OPS[op].extra["merge"])
    assert not contract.is_adapter("dense") and contract.is_adapter("dora")
    x = gd.input("x", (None, IN))
    node = dora.wrap(x, gd.dense(x, OUT, name="fc"), rank=R, name="ad")
    owned = sorted(s.name for s in node.params if contract.owns(node, s))
    assert owned == ["A", "B", "magnitude"]
    op, attrs = contract.base_options(node)
    assert op == "dense" and attrs["units"] == OUT


def _cancelling_state(model, gap):
    """Column 3 of K + s*A@B equals ``gap`` times a unit-norm vector; ``gap`` = 0 up to
    float32 round-off cancels K against s*A@B."""
    rng = np.random.default_rng(0)
    st = gd.build(model)[0](np.zeros((1, IN), np.float32))
    A = rng.standard_normal((IN, R)).astype(np.float32)
    B = rng.standard_normal((R, OUT)).astype(np.float32)
    s = model.attrs["scale"]
    K = rng.standard_normal((IN, OUT)).astype(np.float32)
    AB = (A.astype(np.float64) @ B.astype(np.float64)) * s
    unit = np.ones(IN) / np.sqrt(IN)
    K[:, 3] = (-AB[:, 3] + gap * unit).astype(np.float32)
    st.data["fc"]["kernel"], st.data["ad"]["A"], st.data["ad"]["B"] = K, A, B
    return st


def _all_paths(model, st):
    x = np.ones((2, IN), np.float32)
    yield "numpy inference", lambda: gd.predict(model, st, x)
    yield "numpy train", lambda: gd.predict(model, st, x, mode="train")
    yield "merge_adapters", lambda: gd.merge_adapters(model, st)
    yield "torch backend", lambda: gd.predict(model, st, x, backend="torch", mode="train")
    yield "module", lambda: gd.to_torch(model, st).train()(torch.from_numpy(x))


def test_a_column_that_cancels_to_round_off_is_an_error_on_every_path():
    x = gd.input("x", (None, IN))
    model = dora.wrap(x, gd.dense(x, OUT, name="fc"), rank=R, name="ad")
    st = _cancelling_state(model, 0.0)
    for what, run in _all_paths(model, st):
        with pytest.raises(gd.GraphDSLError, match="zero-norm column") as e:
            run()
        assert "[3]" in str(e.value), what


def test_a_small_but_genuine_column_is_fine_on_every_path():
    x = gd.input("x", (None, IN))
    model = dora.wrap(x, gd.dense(x, OUT, name="fc"), rank=R, name="ad")
    st = _cancelling_state(model, 0.1)  # c^2 = 1e-2: far above float32 round-off
    for _, run in _all_paths(model, st):
        run()


#: one example layer per adaptable kind (a kind without one fails the test below):
#: ``(input node, base layer, a batch)``
_KIND_EXAMPLES = {
    "dense": lambda rng: _example(gd.input("x", (None, 3, 6)), rng.standard_normal((2, 3, 6)),
                                  lambda x: gd.dense(x, 5, name="base")),
    "conv last": lambda rng: _example(
        gd.input("x", (None, 5, 6, 3)), rng.standard_normal((2, 5, 6, 3)),
        lambda x: gd.conv(x, 4, (3, 2), strides=(2, 1), padding="same", name="base")),
    "conv first": lambda rng: _example(
        gd.input("x", (None, 3, 5, 6)), rng.standard_normal((2, 3, 5, 6)),
        lambda x: gd.conv(x, 4, (2, 3), kernel_dilation=(1, 2), channels="first",
                          name="base")),
    "embedding": lambda rng: _example(
        gd.input("ids", (None, 4), dtype="int64"), rng.integers(0, 7, (2, 4)),
        lambda x: gd.embedding(x, 7, 5, name="base")),
}


def _example(x, batch, make):
    return x, make(x), batch.astype(np.float32) if batch.dtype.kind == "f" else batch


def test_every_adaptable_kind_has_an_example():
    assert {case.split()[0] for case in _KIND_EXAMPLES} == set(contract.ADAPTABLE)


@pytest.mark.parametrize("case", sorted(_KIND_EXAMPLES))
@pytest.mark.parametrize("mod", [dora, lora], ids=["dora", "lora"])
def test_every_adaptable_kind_record_is_consistent(case, mod):
    """The record of each kind agrees with its base op and with the backends: its shape
    rules give the base layer's kernel and output, flat/unflat are inverses (on arrays
    and tensors), A's leading axes are the flat fan-in, and the unmerged forward (NumPy
    training, torch) equals the merged one (the base op's kernel) and merge_adapters."""
    rng = np.random.default_rng(1)
    x, base, batch = _KIND_EXAMPLES[case](rng)
    kind = KINDS[base.op]
    assert kind.name == base.op and kind.name in gd.OPS
    node = mod.wrap(x, base, rank=R, name="ad")
    a, shapes = node.attrs, {s.name: s.shape for s in node.params}
    assert contract.layer_of(node) == kind.name
    op, attrs = contract.base_options(node)
    assert op == base.op and attrs == {k: base.attrs[k] for k in attrs}
    assert all(a[k] == v for k, v in kind.fixed.items())
    kshape = kind.kernel_shape([x.shape], a)
    assert kshape == base.params[0].shape == shapes["kernel"]
    assert kind.out_shape([x.shape], a) == base.shape == node.shape
    units = a["units"]
    K = rng.standard_normal(kshape)
    flat = kind.flat(K, a)
    assert flat.shape == (int(np.prod(shapes["A"][:-1])), units)
    assert shapes["A"] == kind.a_shape(kshape, R, a) and shapes["A"][-1] == R
    assert shapes["B"] == (R, units)
    assert np.array_equal(kind.unflat(flat, kshape, a), K)
    assert np.array_equal(kind.flat(torch.from_numpy(K), a).numpy(), flat)
    assert kind.ids == x.dtype.startswith("int")
    if kind.peft_keys is not None:
        assert {"A", "B"} <= set(kind.peft_keys) <= {"A", "B", "magnitude"}

    st = gd.build(node)[0](batch)
    st.data["ad"]["A"] = rng.standard_normal(shapes["A"]).astype(np.float32)
    st.data["ad"]["B"] = rng.standard_normal(shapes["B"]).astype(np.float32)
    if "magnitude" in shapes:
        st.data["ad"]["magnitude"] = rng.uniform(0.5, 2.0, units).astype(np.float32)
    merged = gd.predict(node, st, batch)  # inference: the base op's kernel, merged W
    train = gd.predict(node, st, batch, mode="train")
    np.testing.assert_allclose(train["prediction"], merged, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gd.predict(node, st, batch, backend="torch"), merged,
                               rtol=1e-4, atol=1e-4)
    plain, pst = gd.merge_adapters(node, st)
    assert plain.op == base.op and dict(plain.attrs) == dict(base.attrs)
    np.testing.assert_allclose(gd.predict(plain, pst, batch), merged, rtol=1e-5, atol=1e-5)
