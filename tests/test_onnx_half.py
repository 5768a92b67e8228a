"""ONNX export in half precision (issue 24.1): a float16 state exports float16 weights,
inputs and outputs and ONNX Runtime computes in float16, held to torch / transformers /
PEFT computing in float16 themselves; bfloat16, which ONNX Runtime's CPU provider has no
MatMul/Add/Mul kernels for, is refused with the op and the fix.

Tolerance: float16 keeps 11 significant bits (relative rounding 2**-11 ~ 4.9e-4 per
operation). Two float16 implementations round after each of their few ops in different
orders (ONNX Runtime's CPU provider computes some float16 ops in float32 and rounds the
result), so they differ by a few rounding steps of the outputs' scale: ``_close`` allows
8e-3 of the largest |output|, about 16 steps. That tolerance is still tight enough to
fail on a float32-exported or mis-merged model being compared against a wrong reference:
each test also checks that the float16 result differs from float32 by more than
rounding-free arithmetic would, or checks dtypes outright."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl.errors import GraphDSLError, OptionError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

HALF_TOL = 8e-3  # of max |reference|: ~16 float16 rounding steps, see the module docstring


def _close(got, want, what, tol=HALF_TOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= tol, f"{what}: error {err:.2e} of max |ref|"
    return err


def _run(proto, feed):
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _as(st, dtype, keep=()):
    """``st`` with every float value in ``dtype`` but the layers in ``keep``."""
    return gd.ModelState({k: {p: np.asarray(v) if k in keep else np.asarray(v).astype(dtype)
                              for p, v in d.items()} for k, d in st.data.items()},
                         frozen=st.frozen)


def _float_types(proto):
    """The ONNX element types of the weights (not the small constants, some float32 by
    design) and of the float graph inputs and outputs (1 float32, 10 float16)."""
    g = proto.graph
    return ({t.data_type for t in g.initializer if "/const" not in t.name},
            {v.type.tensor_type.elem_type for v in [*g.input, *g.output]} - {6, 7})


def _mlp():
    x = gd.input("x", (None, 16))
    h = gd.layer_norm(gd.dense(x, 32, name="d0"), name="ln")
    return gd.dense(gd.gelu(h), 8, name="d1")


def test_float16_mlp_matches_torch_float16():
    model = _mlp()
    st = _as(gd.build(model)[0]({"x": np.zeros((1, 16), np.float32)}), np.float16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float16)
    proto = gd.to_onnx(model, st)  # dtype None: the state's float16
    assert _float_types(proto) == ({10}, {10})  # FLOAT16 weights, input and output
    got = _run(proto, {"x": x})
    assert got.dtype == np.float16

    d = st.data
    ref = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32, eps=1e-5),
                              torch.nn.GELU(), torch.nn.Linear(32, 8)).half()
    with torch.no_grad():
        for i, name in ((0, "d0"), (3, "d1")):
            ref[i].weight.copy_(torch.from_numpy(d[name]["kernel"].T.copy()))
            ref[i].bias.copy_(torch.from_numpy(np.array(d[name]["bias"])))
        ref[1].weight.copy_(torch.from_numpy(np.array(d["ln"]["gamma"])))
        ref[1].bias.copy_(torch.from_numpy(np.array(d["ln"]["beta"])))
        want = ref(torch.from_numpy(x)).numpy()
    _close(got, want, "float16 MLP vs torch float16")
    # the float32 export of the same float16 weights differs by float16 rounding only
    f32 = _run(gd.to_onnx(model, st, dtype="float32"), {"x": x.astype(np.float32)})
    assert f32.dtype == np.float32
    assert 0 < _close(got, f32, "float16 vs float32 export")


def test_float16_conv_matches_torch_float16():
    x_in = gd.input("img", (None, 9, 9, 3))
    model = gd.conv(gd.relu(gd.conv(x_in, 4, 3, padding="same", name="c0")), 5, 3,
                    strides=2, name="c1")
    st = _as(gd.build(model)[0]({"img": np.zeros((1, 9, 9, 3), np.float32)}), np.float16)
    x = np.random.default_rng(1).standard_normal((2, 9, 9, 3)).astype(np.float16)
    got = _run(gd.to_onnx(model, st), {"img": x})
    assert got.dtype == np.float16
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        for name, kw in (("c0", {"padding": 1}), ("c1", {"stride": 2})):
            k = torch.from_numpy(st.data[name]["kernel"].transpose(3, 2, 0, 1).copy())
            t = torch.nn.functional.conv2d(t, k, torch.from_numpy(
                np.array(st.data[name]["bias"])), **kw)
            t = torch.relu(t) if name == "c0" else t
    _close(got, t.permute(0, 2, 3, 1).numpy(), "float16 conv vs torch float16")


def test_float16_llama_matches_transformers_float16(tmp_path):
    """A transformers-saved float16 LLaMA read by hf.from_pretrained and exported in
    float16: logits within float16 tolerance of transformers' own float16 forward (norms,
    softmax and rotary angles in float32 on both sides). Two layers of ~10 rounded ops
    each, with logits up to ~14, drift further than one MLP: 2e-2 of max |logit| (measured
    8e-3, the same as transformers' float16 against its float32 forward); and the export
    must be no further from the float32 forward than transformers' float16 is."""
    transformers = pytest.importorskip("transformers")
    from graphdsl import hf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="eager",
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(6.0)  # logits of a few units, so the error is not hidden in noise
    ref = ref.half()
    ref.save_pretrained(tmp_path)
    model, st = hf.from_pretrained(tmp_path)
    ids = np.random.default_rng(2).integers(0, 64, (2, 11)).astype(np.int64)
    proto = gd.to_onnx(model, st, dtype="float16")
    assert _float_types(proto) == ({10}, {10})
    got = _run(proto, {"input_ids": ids})
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
        exact = ref.float()(torch.from_numpy(ids)).logits.numpy()
    assert want.dtype == got.dtype == np.float16
    _close(got, want, "float16 LLaMA logits vs transformers float16", tol=2e-2)
    peer = _close(want, exact, "transformers float16 vs float32", tol=2e-2)
    _close(got, exact, "float16 export vs float32 forward", tol=1.5 * peer)
    # the decode step (optimum's cache inputs) in float16 too: a prefill, empty past
    dec = gd.to_onnx(model, st, kv_cache=True, dtype="float16")
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()}
    feed.update({v.name: np.zeros((2, 2, 0, 8), np.float16) for v in dec.graph.input
                 if v.name.startswith("past_key_values")})
    assert len(feed) == 3 + 2 * cfg.num_hidden_layers
    _close(_run(dec, feed), got, "float16 decode step (prefill) vs the plain export",
           tol=1e-3)  # the same float16 ops but for a concatenation with the empty past


def test_dora_over_float16_base_matches_peft():
    """A DoRA-adapted MLP, base float16 and adapters float32 (PEFT's default over a half
    base), exports merged in float16; PEFT's merged forward (float32 over the same
    float16-rounded base) is the reference."""
    peft = pytest.importorskip("peft")
    x = gd.input("x", (None, 16))
    base = gd.dense(gd.relu(gd.dense(x, 24, name="d0")), 8, name="d1")
    model = gd.dora.adapt(base, ["d0", "d1"], rank=4, alpha=8.0)
    st = gd.build(model)[0]({"x": np.zeros((1, 16), np.float32)})
    rng = np.random.default_rng(3)
    data = {k: dict(v) for k, v in st.data.items()}
    for k in ("d0_dora", "d1_dora"):  # B is zero at init: make the adapter count
        data[k]["B"] = rng.standard_normal(data[k]["B"].shape).astype(np.float32) * 0.3
        data[k]["magnitude"] = np.asarray(data[k]["magnitude"]) * 1.5
    st = _as(gd.ModelState(data, frozen=st.frozen), np.float16, keep=("d0_dora", "d1_dora"))
    xv = rng.standard_normal((4, 16)).astype(np.float16)
    proto = gd.to_onnx(model, st)
    assert _float_types(proto) == ({10}, {10})
    got = _run(proto, {"x": xv})

    net = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    with torch.no_grad():
        for i, k in ((0, "d0"), (2, "d1")):
            net[i].weight.copy_(torch.from_numpy(np.asarray(st.data[k]["kernel"], np.float32).T))
            net[i].bias.copy_(torch.from_numpy(np.asarray(st.data[k]["bias"], np.float32)))
    cfg = peft.LoraConfig(r=4, lora_alpha=8.0, use_dora=True, target_modules=["0", "2"],
                          init_lora_weights=False)
    pm = peft.get_peft_model(net, cfg)
    with torch.no_grad():
        for i, k in ((0, "d0_dora"), (2, "d1_dora")):
            lay = pm.base_model.model[i]
            lay.lora_A["default"].weight.copy_(torch.from_numpy(st.data[k]["A"].T.copy()))
            lay.lora_B["default"].weight.copy_(torch.from_numpy(st.data[k]["B"].T.copy()))
            lay.lora_magnitude_vector["default"].weight.copy_(
                torch.from_numpy(np.array(st.data[k]["magnitude"])))
        want = pm(torch.from_numpy(xv.astype(np.float32))).numpy()
    _close(got, want, "float16 DoRA export vs PEFT")


def test_bfloat16_export_is_refused_with_the_op_and_the_fix():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    model = _mlp()
    st = _as(gd.build(model)[0]({"x": np.zeros((1, 16), np.float32)}), ml_dtypes.bfloat16)
    with pytest.raises(GraphDSLError) as e:
        gd.to_onnx(model, st)  # dtype None: the state's bfloat16
    msg = str(e.value)
    assert "bfloat16 kernel for" in msg and "layer '" in msg
    assert "dtype='float16'" in msg and "state.astype('float32')" in msg
    # float16 of the same bfloat16 state works and computes in float16
    proto = gd.to_onnx(model, st, dtype="float16")
    assert _float_types(proto) == ({10}, {10})
    # a graph whose ops ONNX Runtime does run in bfloat16 (a Transpose) exports as asked
    x = gd.input("x", (None, 4, 3))
    moved = gd.transpose(x, axes=(0, 2, 1))
    proto = gd.to_onnx(moved, gd.build(moved)[0]({"x": np.zeros((1, 4, 3), np.float32)}),
                       dtype="bfloat16")
    assert _float_types(proto) == (set(), {16})  # BFLOAT16 input and output


def test_bad_export_dtype_is_an_option_error():
    model = _mlp()
    st = gd.build(model)[0]({"x": np.zeros((1, 16), np.float32)})
    with pytest.raises(OptionError, match="float32, float16 or bfloat16"):
        gd.to_onnx(model, st, dtype="int8")
    with pytest.raises(OptionError, match="float32, float16 or bfloat16"):
        gd.to_onnx(model, st, dtype="float64")
