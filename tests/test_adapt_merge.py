"""Graph-wide adapt, merge_adapters, adapter_state / attach_adapters."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, lora


def transformer_block():
    """3-D tokens (batch, seq, 16): q/k/v projections, attention-ish mixing, an MLP."""
    x = gd.input("x", (None, 5, 16))
    h = gd.layer_norm(x, name="ln")
    q = gd.dense(h, 16, name="attn_q")
    k = gd.dense(h, 16, name="attn_k")
    v = gd.dense(h, 16, name="attn_v")
    scores = gd.softmax(gd.matmul(q, gd.transpose(k, (0, 2, 1))), axis=-1)
    att = gd.dense(gd.matmul(scores, v), 16, name="attn_out")
    h2 = gd.add(x, att)
    m = gd.dense(h2, 32, activation="gelu", name="mlp_up")
    m = gd.dense(m, 16, name="mlp_down")
    y = gd.add(h2, m)
    return gd.dense(gd.flatten(y), 3, name="head")


X = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)


def perturb(state, rng, names):
    """Random A, B and magnitude (not the trivial init) in a new state."""
    st = state.copy()
    for n in names:
        for p, arr in list(st.data[n].items()):
            if p == "key":
                continue
            noise = rng.standard_normal(arr.shape).astype(arr.dtype) * 0.2
            st.data[n][p] = (arr * (1 + noise) if p == "magnitude" else noise)
    return st


ATTN = ["attn_k", "attn_out", "attn_q", "attn_v"]


@pytest.mark.parametrize("mod,targets,expected", [
    (dora, r"attn_.*", ATTN),
    (lora, re.compile(r"attn_.*"), ATTN),
    (dora, ["attn_q", "attn_v", "mlp_up"], ["attn_q", "attn_v", "mlp_up"]),
    (lora, lambda n: n.name.startswith("mlp") or n.name == "attn_k",
     ["attn_k", "mlp_down", "mlp_up"]),
])
def test_adapt_targets_names_and_freezing(mod, targets, expected):
    base = transformer_block()
    adapted = mod.adapt(base, targets=targets, rank=4, alpha=8.0)
    op = mod.__name__.split(".")[-1]
    g = gd.graph.analyze(adapted)
    adapters = sorted(g.name(n) for n in g.order if n.op == op)
    assert adapters == [f"{t}_{op}" for t in expected]
    i0, p0 = gd.build(base, seed=1)
    s0 = i0(X)
    i1, p1 = gd.build(adapted, seed=1)
    s1 = i1(X, s0)  # the pretrained state of the un-adapted model
    # only adapter parameters are trainable
    assert set(s1.trainable_parameters()) == {f"{t}_{op}" for t in expected}
    assert ("ln", "gamma") in s1.frozen and ("head", "kernel") in s1.frozen
    # at init, the adapted model equals the original
    np.testing.assert_allclose(p1(s1, X), p0(s0, X), rtol=1e-5, atol=1e-5)


def test_modules_to_save_stay_trainable():
    adapted = dora.adapt(transformer_block(), r"attn_q|attn_v", modules_to_save=["head", "ln"])
    st = gd.build(adapted)[0](X)
    trainable = st.trainable_parameters()
    assert set(trainable) == {"attn_q_dora", "attn_v_dora", "head", "ln"}
    assert set(trainable["head"]) == {"kernel", "bias"}
    assert ("attn_q", "kernel") in st.frozen and ("mlp_up", "kernel") in st.frozen


def test_unnamed_layers_keep_their_state_names():
    x = gd.input("x", (None, 8))
    y = gd.dense(gd.relu(gd.dense(x, 8)), 4)  # dense_0, dense_1
    adapted = lora.adapt(y, ["dense_0"])
    g = gd.graph.analyze(adapted)
    assert sorted(g.names.values()) == ["dense_0_lora", "dense_1", "relu_0", "x"]
    s0 = gd.build(y)[0](np.zeros((1, 8), np.float32))
    s1 = gd.build(adapted)[0](np.zeros((1, 8), np.float32), s0)
    assert s1.data["dense_0"]["kernel"] is s0.data["dense_0"]["kernel"]
    assert s1.data["dense_1"]["kernel"] is s0.data["dense_1"]["kernel"]


@pytest.mark.parametrize("mod", [dora, lora])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_merged_equals_unmerged(mod, dtype, tol):
    base = transformer_block()
    adapted = mod.adapt(base, r"attn_.*|mlp_up", rank=4, alpha=8.0)
    init_fn, predict_fn = gd.build(adapted, seed=2, dtype=dtype)
    st = init_fn(X)
    op = mod.__name__.split(".")[-1]
    names = [n for n in st.data if n.endswith("_" + op)]
    st = perturb(st, np.random.default_rng(3), names)
    before = {k: dict(v) for k, v in st.data.items()}
    merged, mstate = gd.merge_adapters(adapted, st)
    assert st.data == before  # the input state is untouched
    assert gd.get_op_counts(merged).get(op, 0) == 0
    assert gd.get_op_counts(merged)["dense"] == gd.get_op_counts(base)["dense"]
    assert set(mstate.data) == {"ln", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_up",
                                "mlp_down", "head"}
    g = gd.graph.analyze(merged)
    up = next(n for n in g.order if g.name(n) == "mlp_up")
    assert up.op == "dense" and "activation" not in up.attrs
    assert [n.op for n in g.order if n.inputs and n.inputs[0] is up] == ["gelu"]  # kept
    np.testing.assert_array_equal(mstate.data["attn_q"]["bias"], st.data["attn_q"]["bias"])
    xv = X.astype(dtype)
    out_adapted = predict_fn(st, xv)
    out_merged = gd.build(merged, dtype=dtype)[1](mstate, xv)
    np.testing.assert_allclose(out_merged, out_adapted, rtol=tol, atol=tol)


def test_merge_kernel_formula_and_standalone_layer():
    rng = np.random.default_rng(4)
    m = dora.build(input_size=6, output_size=4, rank=2, alpha=4.0, name="d")
    init_fn, predict_fn = gd.build(m, dtype="float64")
    st = perturb(init_fn((1, 6)), rng, ["d"])
    merged, ms = gd.merge_adapters(m, st)
    d = st.data["d"]
    V = d["base_weight"] + 2.0 * d["A"] @ d["B"]
    np.testing.assert_allclose(ms.data["d"]["kernel"],
                               V * (d["magnitude"] / np.linalg.norm(V, axis=0)), rtol=1e-12)
    assert set(ms.data["d"]) == {"kernel"} and ("d", "kernel") in ms.frozen
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(gd.build(merged, dtype="float64")[1](ms, x), predict_fn(st, x),
                               rtol=1e-12)


def test_adapter_state_roundtrip():
    base = transformer_block()
    s0 = gd.build(base, seed=5)[0](X)
    adapted = dora.adapt(base, r"attn_(q|v)", modules_to_save=["head"], dropout=0.1)
    init_fn, predict_fn = gd.build(adapted)
    trained = perturb(init_fn(X, s0), np.random.default_rng(6), ["attn_q_dora", "attn_v_dora"])
    trained.data["head"] = {k: v + 1 for k, v in trained.data["head"].items()}
    small = gd.adapter_state(adapted, trained, modules_to_save=["head"])
    assert set(small.data) == {"attn_q_dora", "attn_v_dora", "head"}
    assert set(small.data["attn_q_dora"]) == {"A", "B", "magnitude", "key"}
    assert small.entries == {"attn_q_dora": ["key"], "attn_v_dora": ["key"]}
    assert small.parameter_count() == trained.trainable_parameter_count()
    back = gd.attach_adapters(adapted, s0, small)
    assert back == trained
    np.testing.assert_array_equal(predict_fn(back, X), predict_fn(trained, X))
    assert gd.adapter_state(adapted, trained) == small  # modules_to_save: never left out


@pytest.mark.parametrize("mod", [dora, lora])
def test_adapter_file_holds_the_trained_modules_to_save(mod, tmp_path):
    """Issue 20 point 9: save_adapters keeps every layer adapt made trainable, so the
    file loaded onto the base predicts as the trained model does."""
    base = transformer_block()
    s0 = gd.build(base, seed=5)[0](X)
    adapted = mod.adapt(base, ["attn_q"], modules_to_save=["head", "ln"])
    init_fn, predict_fn = gd.build(adapted)
    trained = perturb(init_fn(X, s0), np.random.default_rng(6), ["attn_q_" + mod.OP])
    for lay in ("head", "ln"):
        trained.data[lay] = {k: v * 1.5 + 0.5 for k, v in trained.data[lay].items()}
    path = gd.save_adapters(str(tmp_path / "a.gdz"), adapted, trained)
    back = gd.load_adapters(path, adapted, s0)
    assert back == trained
    np.testing.assert_array_equal(predict_fn(back, X), predict_fn(trained, X))
    assert not np.allclose(predict_fn(back, X), predict_fn(init_fn(X, s0), X), atol=1e-2)


def test_attach_adapters_validates():
    base = transformer_block()
    s0 = gd.build(base)[0](X)
    adapted = lora.adapt(base, ["attn_q"])
    small = gd.adapter_state(adapted, gd.build(adapted)[0](X, s0))
    bad = small.copy()
    bad.data["attn_q_lora"]["A"] = np.zeros((16, 3), np.float32)
    with pytest.raises(gd.GraphDSLError, match=r"attn_q_lora.A in the adapter state has shape"):
        gd.attach_adapters(adapted, s0, bad)
    extra = small.copy()
    extra.data["nope"] = {"w": np.zeros(2)}
    with pytest.raises(gd.GraphDSLError, match="nope.w, which this model does not use"):
        gd.attach_adapters(adapted, s0, extra)
    with pytest.raises(gd.GraphDSLError, match=r"no value for \['attn_q_lora.B'\]"):
        part = small.copy()
        del part.data["attn_q_lora"]["B"]
        gd.attach_adapters(adapted, s0, part)
    with pytest.raises(gd.GraphDSLError, match="must be a ModelState"):
        gd.attach_adapters(adapted, s0, {"attn_q_lora": {}})


def test_adapt_errors():
    base = transformer_block()
    with pytest.raises(gd.GraphDSLError, match="match no adaptable layer") as e:
        dora.adapt(base, r"encoder_.*")
    assert "attn_q" in e.value.fix and "mlp_down" in e.value.fix
    assert "test_adapt_merge.py" in e.value.where
    with pytest.raises(gd.GraphDSLError, match="match no adaptable layer"):
        dora.adapt(base, lambda n: False)
    with pytest.raises(gd.GraphDSLError, match="'ln' is a layer_norm layer, not dense"):
        dora.adapt(base, ["attn_q", "ln"])
    with pytest.raises(gd.GraphDSLError, match="'attn_z' matches no adaptable layer") as e:
        dora.adapt(base, ["attn_z"])
    assert "attn_q" in e.value.fix
    with pytest.raises(gd.GraphDSLError, match="not a valid regex"):
        dora.adapt(base, "attn_(")
    with pytest.raises(gd.GraphDSLError, match="targets must be a regex"):
        dora.adapt(base, 3)
    with pytest.raises(gd.GraphDSLError, match="modules_to_save names 'nope'"):
        dora.adapt(base, "attn_q", modules_to_save=["nope"])
    with pytest.raises(gd.GraphDSLError, match="both a target and in modules_to_save"):
        dora.adapt(base, "attn_q", modules_to_save="attn_q")
    with pytest.raises(gd.GraphDSLError, match="predicate failed"):
        dora.adapt(base, lambda n: n.nonexistent)
    with pytest.raises(gd.GraphDSLError, match="rank must be"):
        dora.adapt(base, "attn_q", rank=-1)
    with pytest.raises(gd.GraphDSLError, match="no dora or lora layer"):
        gd.merge_adapters(base, gd.build(base)[0](X))
    with pytest.raises(gd.GraphDSLError, match="no dora or lora layer"):
        gd.adapter_state(base, gd.build(base)[0](X))
    adapted = dora.adapt(base, "attn_q")
    with pytest.raises(gd.GraphDSLError, match="has no attn_q_dora.magnitude"):
        st = gd.build(adapted)[0](X)
        del st.data["attn_q_dora"]["magnitude"]
        gd.merge_adapters(adapted, st)
    with pytest.raises(gd.GraphDSLError, match="needs a ModelState"):
        gd.merge_adapters(adapted, {})


def test_adapting_twice_and_name_clash():
    base = transformer_block()
    once = lora.adapt(base, "attn_q")
    twice = lora.adapt(once, "attn_k")  # earlier adapters stay trainable, new ones added
    st = gd.build(twice)[0](X)
    assert set(st.trainable_parameters()) == {"attn_q_lora", "attn_k_lora"}
    x = gd.input("x", (None, 4))
    clash = gd.add(gd.dense(x, 4, name="a"), gd.dense(x, 4, name="a_lora"))
    with pytest.raises(gd.GraphDSLError, match="already has a layer of that name"):
        lora.adapt(clash, ["a"])
