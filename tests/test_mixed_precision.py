"""Axon's mixed-precision policies (``Axon.MixedPrecision``, issue 24.2).

Axon's own policy tests are ported as they are written there: the ``create_policy``
doctests (``test/axon/mixed_precision_test.exs``), the "initializes with parameter
policy" and "computes forward pass with output policy" tests of
``test/axon/compiler_test.exs`` (run here for every row of the op case table, not only
Axon's layer list) and the filters of ``apply_policy``'s docs. Then a policied LLaMA
against the same model without a policy on NumPy, torch and ONNX Runtime, and the model
file round trip.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_VOCAB
from op_cases import cases_for

import graphdsl as gd
from graphdsl import mixed_precision as mp
from graphdsl import models
from graphdsl.dtypes import dtype_name, is_float

BF16 = mp.create_policy(params="bfloat16")
OUT_BF16 = mp.create_policy(output="bfloat16")


def _dtypes(out):
    """The dtype names of an output (tuples and dicts of them too)."""
    if isinstance(out, dict):
        return [d for v in out.values() for d in _dtypes(v)]
    if isinstance(out, tuple):
        return [d for v in out for d in _dtypes(v)]
    return [dtype_name(out.dtype)]


# -- Axon.MixedPrecision's doctests ------------------------------------------------------------
def test_create_policy_as_axon_shows_it():
    assert repr(mp.create_policy(params="float16", output="float16")) == "Policy<p=f16 o=f16>"
    assert repr(mp.create_policy(compute="bfloat16")) == "Policy<c=bf16>"
    assert repr(mp.create_policy()) == "Policy<>"  # Axon's default: nil, nothing is cast
    p = mp.create_policy(params=np.float32, compute=torch.bfloat16, output="float32")
    assert (p.params, p.compute, p.output) == ("float32", "bfloat16", "float32")


@pytest.mark.parametrize("bad", ["int32", "float8", torch.int64, 3])
def test_create_policy_refuses_what_is_not_a_float_dtype(bad):
    with pytest.raises(gd.GraphDSLError, match="not a floating-point dtype") as e:
        mp.create_policy(compute=bad)
    assert "bfloat16" in e.value.fix


def test_integers_are_never_cast():
    """Axon's cast doctest: an integer tensor keeps its type under any policy. Token ids
    reach the embedding as int64 (no cast layer before it) and it still gathers rows."""
    ids = gd.input("ids", (None, 4), dtype="int64")
    model = mp.apply_policy(gd.embedding(ids, 7, 3, name="emb"),
                            mp.create_policy(compute="float16", output="float16"))
    emb = next(n for n in gd.topo_order(model) if n.op == "embedding")
    assert emb.inputs[0].op == "input"
    init, predict = gd.build(model)
    st = init()
    x = np.array([[0, 6, 2, 2]])
    out = predict(st, x)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, st.data["emb"]["kernel"][x].astype(np.float16))


# -- compiler_test.exs: parameter and output policies, every op ----------------------------
def _no_block(c) -> bool:
    # a block's body is opaque to a policy, as in Axon (its compiler applies none to blocks)
    return "block" not in gd.get_op_counts(c.build())


#: what a policy leaves alone, as Axon's compiler does: inputs, optional inputs, block
#: calls, and the casts themselves
UNPOLICIED = {"input", "optional", "cast", "block", "block_output"}


def _expected(node, ref):
    """The dtypes an output policy of bfloat16 gives ``node``'s output (``ref``: its
    output without the policy): floats from a policied layer become bfloat16."""
    if node.op == "container":
        vals = ref.values() if isinstance(ref, dict) else ref
        return [d for n, r in zip(node.inputs, vals) for d in _expected(n, r)]
    d = dtype_name(ref.dtype)
    return ["bfloat16" if is_float(d) and node.op not in UNPOLICIED else d]


@pytest.mark.parametrize("case", cases_for("json", _no_block))
def test_initializes_with_parameter_policy(case):
    """Axon: ``create_policy(params: {:bf, 16})`` makes every parameter of the layer
    bfloat16 (kernel, bias, gamma, beta, the running statistics)."""
    model = mp.apply_policy(case.build(), BF16)
    st = gd.build(model)[0](case.feed(model))
    for layer, values in st.data.items():
        for name, v in values.items():
            if is_float(v.dtype):
                assert dtype_name(v.dtype) == "bfloat16", (layer, name, v.dtype)


# (cast/compute holds a policy already: a second one replaces it, tested below)
@pytest.mark.parametrize("case", cases_for("json", lambda c: c.id != "cast/compute"))
def test_computes_forward_pass_with_output_policy(case):
    """Axon: ``create_policy(output: {:bf, 16})`` gives a bfloat16 prediction (integer
    outputs stay integers), on NumPy and on torch."""
    model, inputs, st = case.setup()
    mp_model = mp.apply_policy(model, OUT_BF16)
    arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    want = _expected(model, gd.predict(model, st, arg))
    for backend in ("numpy", "torch"):
        assert _dtypes(gd.predict(mp_model, st, arg, backend=backend)) == want, backend


def test_a_layer_outside_the_policy_reads_float32():
    """cond with one branch excluded: the branches differ in dtype (bfloat16, float32);
    cond, a policied layer without a compute dtype, reads both as float32 (Nx's
    promotion), then casts its result to the output dtype."""
    inp = gd.input("input", (None, 1, 32))
    model = gd.cond(inp, lambda x, xp: x.sum() > 0, gd.relu(inp, name="t"),
                    gd.sigmoid(inp, name="f"))
    mp_model = mp.apply_policy(model, OUT_BF16, exclude=["t"])
    c = next(n for n in gd.topo_order(mp_model) if n.op == "cond")
    assert [i.dtype for i in c.inputs[1:]] == ["float32", "float32"]
    x = np.random.default_rng(0).normal(size=(1, 1, 32)).astype(np.float32)
    for arg in (np.abs(x), -np.abs(x)):  # each branch
        ref = gd.predict(model, gd.ModelState.empty(), arg)
        for backend in ("numpy", "torch"):
            got = gd.predict(mp_model, gd.ModelState.empty(), arg, backend=backend)
            assert dtype_name(got.dtype) == "bfloat16"
            got = got.float().numpy() if isinstance(got, torch.Tensor) else got
            # one bfloat16 rounding (the sigmoid branch's own, then the output's): 2^-8
            np.testing.assert_allclose(got.astype(np.float32), ref, rtol=2 ** -7)


def test_constant_with_output_policy():
    """Axon: a constant gets only the output cast; its value is exact in bfloat16."""
    model = mp.apply_policy(gd.constant(np.array(1.0, np.float32)), OUT_BF16)
    out = gd.build(model)[1](gd.ModelState.empty(), {})
    assert dtype_name(out.dtype) == "bfloat16" and float(out) == 1.0


# -- apply_policy's filters (Axon's only:, except:, a function) -----------------------------
def _axon_doc_model():
    """The model of Axon.MixedPrecision's moduledoc."""
    x = gd.input("input", (None, 784))
    h = gd.dropout(gd.batch_norm(gd.dense(x, 128, activation="relu")), 0.5)
    h = gd.dropout(gd.batch_norm(gd.dense(h, 64, activation="relu")), 0.5)
    return gd.dense(h, 10, activation="softmax")


def _policied_ops(model):
    return sorted({n.op for n in gd.topo_order(model) if n.policy is not None})


def test_filters_as_axon_takes_them():
    model, p = _axon_doc_model(), mp.create_policy(params="float32", compute="float16",
                                                   output="float32")
    every = {"dense", "relu", "batch_norm", "dropout", "softmax"}
    assert set(_policied_ops(mp.apply_policy(model, p))) == every
    assert _policied_ops(mp.apply_policy(model, p, only=["dense"])) == ["dense"]
    assert set(_policied_ops(mp.apply_policy(
        model, p, exclude=lambda n: n.op == "batch_norm"))) == every - {"batch_norm"}
    assert set(_policied_ops(mp.apply_policy(
        model, p, lambda n: n.op not in ("batch_norm", "conv")))) == every - {"batch_norm"}
    # exclude= takes targets as adapt does: names (a name matches itself and every layer
    # ending in ".name") or a regex on the layer name
    named = mp.apply_policy(model, p, exclude=["dense_2"])
    assert [n.name for n in gd.topo_order(named) if n.op == "dense" and n.policy is None] \
        == ["dense_2"]
    rx = mp.apply_policy(model, p, exclude=r"dense_[01]")
    assert [n.name for n in gd.topo_order(rx) if n.op == "dense" and n.policy] == ["dense_2"]


def test_a_second_policy_replaces_the_first_where_it_applies():
    """As Axon's apply_policy sets each selected node's policy: the earlier casts of a
    re-policied layer go (the same graph as applying the second policy alone); layers the
    second policy does not select keep the first one."""
    model = _axon_doc_model()
    p1 = mp.create_policy(params="float16", compute="float16", output="float16")
    p2 = mp.create_policy(compute="bfloat16", output="float32")
    twice = mp.apply_policy(mp.apply_policy(model, p1), p2)
    assert gd.to_json(twice) == gd.to_json(mp.apply_policy(model, p2))
    both = mp.apply_policy(mp.apply_policy(model, p1, only=["dense"]), p2,
                           only=["batch_norm"])
    got = {n.op: n.policy for n in gd.topo_order(both) if n.op in ("dense", "batch_norm")}
    assert got == {"dense": p1, "batch_norm": p2}
    st = gd.build(both)[0](np.zeros((2, 784), np.float32))
    assert st.data["dense_0"]["kernel"].dtype == np.float16
    x = np.random.default_rng(0).normal(size=(3, 784)).astype(np.float32)
    for backend in ("numpy", "torch"):  # softmax, outside both, reads float32
        assert _dtypes(gd.predict(both, st, x, backend=backend)) == ["float32"]


def test_filter_mistakes_are_graphdsl_errors():
    model, p = _axon_doc_model(), mp.create_policy(compute="float16")
    with pytest.raises(gd.GraphDSLError, match="matches no layer"):
        mp.apply_policy(model, p, exclude=["lm_head"])
    with pytest.raises(gd.GraphDSLError, match="one of filter= and only="):
        mp.apply_policy(model, p, lambda n: True, only=["dense"])
    with pytest.raises(gd.GraphDSLError, match="unknown ops"):
        mp.apply_policy(model, p, only=["Dense"])
    with pytest.raises(gd.GraphDSLError, match="takes a Policy"):
        mp.apply_policy(model, {"compute": "float16"})


def test_policy_leaves_names_and_the_original_model_alone():
    model = _axon_doc_model()
    before = gd.to_json(model)
    mp_model = mp.apply_policy(model, mp.create_policy(compute="bfloat16"))
    assert gd.to_json(model) == before  # a new graph; the model is unchanged
    old = {n for n in gd.get_parameters(model)}
    assert {n for n in gd.get_parameters(mp_model)} == old  # no state key moved


# -- a policied LLaMA: dtypes per layer, values against the model without a policy ---------
@pytest.fixture(scope="module")
def llama():
    model = models.llama(dict(vocab_size=TINY_VOCAB, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2))
    st = gd.build(model)[0]()
    r = np.random.default_rng(0)
    for layer, params in st.data.items():  # non-trivial norms
        for k, v in params.items():
            st.data[layer][k] = (r.normal(size=v.shape) * 0.2 + (v.ndim == 1)).astype(
                np.float32)
    ids = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]]) % TINY_VOCAB
    return model, st, ids


DESIGN_POLICY = mp.create_policy(params="bfloat16", compute="bfloat16", output="float32")


def test_policied_llama_dtypes_follow_axons_rules(llama):
    """Each policied layer reads its inputs through a compute cast and its result through
    an output cast; parameters are created bfloat16 except the excluded lm_head's."""
    model, _, ids = llama
    mp_model = mp.apply_policy(model, DESIGN_POLICY, exclude=["lm_head"])
    for n in gd.topo_order(mp_model):
        if n.policy is None:
            continue
        assert n.policy is DESIGN_POLICY
        for i in n.inputs:
            assert not is_float(i.dtype) or (i.op == "cast" and i.attrs["compute"]
                                             and i.dtype == "bfloat16"), n.name
    readers = {}
    for n in gd.topo_order(mp_model):
        for i in n.inputs:
            readers.setdefault(i.id, []).append(n)
    for n in gd.topo_order(mp_model):
        if n.policy is not None and is_float(n.dtype):
            (out,) = readers.get(n.id, [None]) or [None]
            assert out is not None and out.op == "cast" and out.dtype == "float32", n.name
    st = gd.build(mp_model)[0](ids)
    for layer, values in st.data.items():
        for name, v in values.items():
            want = "float32" if layer == "lm_head" else "bfloat16"
            assert dtype_name(v.dtype) == want, (layer, name)
    lm = next(n for n in gd.topo_order(mp_model) if n.name == "lm_head")
    assert lm.policy is None and lm.inputs[0].dtype == "float32"


@pytest.mark.parametrize("backend", ["numpy", "torch", "module", "onnxruntime"])
def test_policied_llama_matches_the_float32_model(llama, backend):
    """Values of the model under params/compute/output = bfloat16 (lm_head excluded,
    reading float32) against the float32 model: bfloat16 keeps 8 significant bits (a
    rounding of 2^-9 relative), and some 20 roundings on the way (inputs, weights and
    results of each projection, norm and attention) move the logits by about 1% of their
    scale (measured 0.014 of 2.1 on NumPy, 0.016 on torch); 0.06 is four times that."""
    model, st, ids = llama
    pol = mp.create_policy(params="bfloat16", compute="bfloat16", output="bfloat16")
    mp_model = mp.apply_policy(model, pol, exclude=["lm_head"])
    st16 = gd.build(mp_model)[0](initial_state=st.astype("bfloat16"))
    ref = gd.predict(model, st, ids)
    if backend == "module":
        with torch.no_grad():
            got = gd.to_torch(mp_model, st16)(torch.from_numpy(ids))
    else:
        got = gd.predict(mp_model, st16, ids, backend=backend)
    got = got.float().numpy() if isinstance(got, torch.Tensor) else got
    assert got.dtype == np.float32  # lm_head, outside the policy, computes in float32
    np.testing.assert_allclose(got, ref, atol=0.06)
    assert np.abs(got - ref).max() > 1e-4  # the policy did round something


def test_torch_computes_in_the_policy_dtype(llama):
    """On torch a policied layer runs in bfloat16: its result is a bfloat16 tensor (the
    compute dtype), while NumPy gives float32 there (no fast half path) rounded at the
    output cast. After the first projection (inputs, weights and result rounded once,
    |values| < 4) the two agree within two bfloat16 steps at that size (2 * 2^-6; measured
    0.006)."""
    model, st, ids = llama
    mp_model = mp.apply_policy(model, mp.create_policy(compute="bfloat16"),
                               exclude=["lm_head"])
    q = next(n for n in gd.topo_order(mp_model) if n.name == "model.layers.0.self_attn.q_proj")
    sub = gd.container([q])
    out_t = gd.predict(sub, st, ids, backend="torch")[0]
    out_n = gd.predict(sub, st, ids)[0]
    assert out_t.dtype == torch.bfloat16 and out_n.dtype == np.float32
    assert np.abs(out_n).max() < 4
    np.testing.assert_allclose(out_t.float().numpy(), out_n, atol=2 * 2.0 ** -6)


def test_module_trains_in_the_policy_dtype(llama):
    """to_torch of a bfloat16-parameter policy: the module's parameters are bfloat16 (as
    stored), gradients reach them in bfloat16, and lm_head stays float32."""
    model, st, ids = llama
    mp_model = mp.apply_policy(model, DESIGN_POLICY, exclude=["lm_head"])
    st16 = gd.build(mp_model)[0](ids)
    mod = gd.to_torch(mp_model, st16)
    mod(torch.from_numpy(ids)).float().square().mean().backward()
    params = dict(mod.named_parameters())
    assert params["lm_head.kernel"].dtype == torch.float32
    q = params["model.layers.0.self_attn.q_proj.kernel"]
    assert q.dtype == torch.bfloat16 and q.grad is not None and q.grad.abs().sum() > 0


# -- the model file: the policy and its casts survive -------------------------------------
def test_json_and_file_round_trips_are_identical(llama, tmp_path):
    model, st, ids = llama
    mp_model = mp.apply_policy(model, DESIGN_POLICY, exclude=["lm_head"])
    text = gd.to_json(mp_model)
    assert '"policy": {"params": "bfloat16", "compute": "bfloat16", "output": "float32"}' \
        in text
    back = gd.from_json(text)
    assert gd.to_json(back) == text
    assert [n.policy for n in gd.topo_order(back)] == \
        [n.policy for n in gd.topo_order(mp_model)]
    st16 = gd.build(mp_model)[0](ids)
    gd.save(tmp_path / "m.gdsl", mp_model, st16)
    model2, st2 = gd.load(tmp_path / "m.gdsl")
    assert gd.to_json(model2) == text
    np.testing.assert_array_equal(gd.predict(model2, st2, ids), gd.predict(mp_model, st16,
                                                                            ids))
    q = st2.data["model.layers.0.self_attn.q_proj"]["kernel"]
    assert dtype_name(q.dtype) == "bfloat16"


def test_a_bad_policy_in_a_file_is_an_error():
    x = gd.input("x", (None, 3))
    text = gd.to_json(mp.apply_policy(gd.dense(x, 2, name="fc"), DESIGN_POLICY))
    with pytest.raises(gd.GraphDSLError, match="not a floating-point dtype"):
        gd.from_json(text.replace('"compute": "bfloat16"', '"compute": "int8"'))
    with pytest.raises(gd.GraphDSLError, match="a policy is an object"):
        gd.from_json(text.replace('"output": "float32"', '"outputs": "float32"'))


def test_as_table_shows_the_policy_and_the_casts():
    x = gd.input("x", (None, 3))
    model = mp.apply_policy(gd.dense(x, 2, name="fc"), DESIGN_POLICY)
    table = gd.display.as_table(model)
    assert "policy: Policy<p=bf16 c=bf16 o=f32>" in table
    assert "kernel: bf16[3][2]" in table and "( cast )" in table
    assert "Total parameters:                  8  (16 bytes" in table  # bf16: 2 bytes each


def test_onnx_export_rounds_through_cast_nodes():
    """A float16 compute policy exports as Cast nodes (to float16 and back: the export
    keeps one float dtype); ONNX Runtime then gives what NumPy gives, which computes the
    same way (float32 on float16-rounded values)."""
    import onnxruntime as ort
    x = gd.input("x", (None, 5))
    model = mp.apply_policy(gd.dense(gd.dense(x, 4, activation="tanh"), 3),
                            mp.create_policy(compute="float16", output="float16"))
    st = gd.build(model)[0](np.zeros((1, 5), np.float32))
    proto = gd.to_onnx(model, st)
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert {a.i for n in casts for a in n.attribute} == {1, 10}  # FLOAT, FLOAT16
    xx = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": xx})[0]
    want = gd.predict(model, st, xx)
    assert want.dtype == np.float16
    np.testing.assert_array_equal(got.astype(np.float16), want)


def test_policy_over_a_dora_adapted_model():
    """A bfloat16 compute policy applied after dora.adapt: the DoRA layer (its autograd
    node on torch) runs in bfloat16 and its adapter values stay float32 with float32
    gradients; outputs within bfloat16 rounding of the float32 model (about ten roundings
    of 2^-9 relative at |y| < 1: 0.01; measured 0.0035)."""
    from graphdsl import dora
    x = gd.input("x", (None, 8))
    model = gd.dense(gd.dense(x, 16, name="fc1", activation="relu"), 4, name="lm_head")
    adapted = dora.adapt(model, "fc1", rank=4)
    st = gd.build(adapted)[0](np.zeros((1, 8), np.float32))
    b = st.data["fc1_dora"]["B"]
    st.data["fc1_dora"]["B"] = np.random.default_rng(1).normal(size=b.shape).astype(
        np.float32) * 0.1  # a non-zero update, so the adapter path counts
    policied = mp.apply_policy(adapted, mp.create_policy(compute="bfloat16"),
                               exclude=["lm_head"])
    xx = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    ref = gd.predict(adapted, st, xx)
    assert np.abs(ref).max() < 1
    np.testing.assert_allclose(gd.predict(policied, st, xx), ref, atol=0.01)
    mod = gd.to_torch(policied, st)
    out = mod(torch.from_numpy(xx))
    out.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=0.01)
    for name in ("A", "B", "magnitude"):
        p = dict(mod.named_parameters())[f"fc1_dora.{name}"]
        assert p.dtype == p.grad.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_policied_llama_on_cuda_matches_the_cpu(llama):
    """On a GPU the policy computes in bfloat16 with CUDA's kernels: within bfloat16
    rounding of the CPU run (both round the same ~20 times; 0.06 as above)."""
    model, st, ids = llama
    mp_model = mp.apply_policy(model, DESIGN_POLICY, exclude=["lm_head"])
    st16 = gd.build(mp_model)[0](initial_state=st.astype("bfloat16"))
    cpu = gd.predict(mp_model, st16, ids, backend="torch")
    gpu = gd.build(mp_model, backend="torch", device="cuda")[1](st16, ids)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=0.06)


def test_adapt_and_merge_keep_the_policy():
    """dora.adapt after apply_policy: the DoRA layer takes the dense layer's policy (its
    adapter values float32 under params=None); merge_adapters gives it back to the merged
    dense. Values within bfloat16 rounding (0.01 as above) on NumPy and torch."""
    from graphdsl import dora
    x = gd.input("x", (None, 8))
    model = gd.dense(gd.dense(x, 16, name="fc1", activation="relu"), 4, name="lm_head")
    pol = mp.create_policy(compute="bfloat16", output="float32")
    adapted = dora.adapt(mp.apply_policy(model, pol, exclude=["lm_head"]), "fc1", rank=4)
    assert next(n for n in gd.topo_order(adapted) if n.op == "dora").policy is pol
    st = gd.build(adapted)[0](np.zeros((1, 8), np.float32))
    assert {dtype_name(v.dtype) for v in st.data["fc1_dora"].values()} == {"float32"}
    st.data["fc1_dora"]["B"] = np.full(st.data["fc1_dora"]["B"].shape, 0.05, np.float32)
    plain = gd.build(model)[0](np.zeros((1, 8), np.float32), gd.ModelState(
        {k: v for k, v in st.data.items() if k != "fc1_dora"}))
    xx = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    merged, mst = gd.merge_adapters(adapted, st)
    assert next(n for n in gd.topo_order(merged) if n.name == "fc1").policy is pol
    ref = gd.predict(*gd.merge_adapters(dora.adapt(model, "fc1", rank=4), st), xx)
    for backend in ("numpy", "torch"):
        for m, s in ((adapted, st), (merged, mst)):
            got = gd.predict(m, s, xx, backend=backend)
            got = got.numpy() if isinstance(got, torch.Tensor) else got
            np.testing.assert_allclose(got, ref, atol=0.01)
    assert np.abs(gd.predict(model, plain, xx) - ref).max() > 0.01  # the adapter counts


def test_to_torch_refuses_a_half_dtype_over_a_policy():
    x = gd.input("x", (None, 3))
    model = mp.apply_policy(gd.dense(x, 2, name="fc"), DESIGN_POLICY)
    st = gd.build(model)[0](np.zeros((1, 3), np.float32))
    with pytest.raises(gd.GraphDSLError, match="the policy sets each layer's dtypes") as e:
        gd.to_torch(model, st, dtype="bfloat16")
    assert "dtype=None" in e.value.fix
    assert gd.to_torch(model, st, dtype="float32")(torch.zeros(1, 3)).dtype == torch.float32


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    from helpers import tiny_causal_lms
    return tiny_causal_lms(tmp_path_factory, ("llama",))["llama"]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_an_all_bfloat16_policy_matches_transformers_in_bfloat16(hf_llama, backend):
    """params = compute = output = bfloat16 over a transformers LLaMA read by
    hf.from_pretrained, against the same model's bfloat16 forward in transformers: within
    16u of the largest logit (u = 2^-8, bfloat16's; measured 0.125 of 3.75 on torch, 8u,
    as much as a whole bfloat16 to_torch module; NumPy, computing in float32 between the
    roundings, 0.08)."""
    ref, model, st = hf_llama
    ids = np.array([[3, 7, 1, 9, 4, 2, 11, 30], [5, 5, 8, 0, 6, 1, 22, 39]]) % TINY_VOCAB
    with torch.no_grad():
        want = ref.to(torch.bfloat16)(torch.from_numpy(ids)).logits.float().numpy()
    ref.to(torch.float32)
    pol = mp.create_policy(params="bfloat16", compute="bfloat16", output="bfloat16")
    got = gd.predict(mp.apply_policy(model, pol), st.astype("bfloat16"), ids, backend=backend)
    assert dtype_name(got.dtype) == "bfloat16"
    got = got.float().numpy() if isinstance(got, torch.Tensor) else got.astype(np.float32)
    np.testing.assert_allclose(got, want, atol=16 * 2.0 ** -8 * np.abs(want).max())
