"""The adapter contract (graphdsl.adapters.contract) and the one zero-norm rule that
every DoRA path (NumPy inference and training, merge_adapters, torch backend, module)
applies."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora
from graphdsl.adapters import contract

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
