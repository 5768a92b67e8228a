"""Half precision through the torch backend (issue 24): ``to_torch(dtype=, adapter_dtype=)``,
a bfloat16 LLaMA with float32 DoRA adapters against PEFT's same model (forward, gradients,
an SGD step), ``torch.autocast`` around every op of the case table and around DoRA against
PEFT's DoRA under the same autocast, on the CPU and, where present, CUDA.

Tolerances: bfloat16 keeps 8 significant bits (unit roundoff u = 2^-8 ~ 0.0039). Two
computations of the same bfloat16 model that round in different places (graphdsl's factored
DoRA against PEFT's materialized weight, fused kernels against separate ones) differ by a
few u per layer, relative to the size of the values: the checks below allow 4u-16u of the
largest value (said at each), far under what a wrong formula, a lost term or a float32
reference gives (those differ by O(1)).
"""
from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
ml_dtypes = pytest.importorskip("ml_dtypes")

from op_cases import cases_for  # noqa: E402

import graphdsl as gd  # noqa: E402
from graphdsl import dora, hf, lora  # noqa: E402
from graphdsl.errors import GraphDSLError  # noqa: E402

U = 2.0 ** -8  # bfloat16's unit roundoff
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8.0


def _rel(a, b) -> float:
    """max|a - b| / max|b| in float64 (the error relative to the values' scale)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _flat(y) -> list:
    if isinstance(y, dict):
        return [t for v in y.values() for t in _flat(v)]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in _flat(v)]
    return [y]


@functools.cache
def _llama(dtype: torch.dtype = torch.bfloat16):
    """A tiny random LLaMA: PEFT's DoRA on its ``dtype`` base (adapters float32:
    autocast_adapter_dtype) with trained-looking adapters, and graphdsl's DoRA of the same
    weights (float32 state, PEFT's adapter values)."""
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=96, attn_implementation="eager")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    model, state = hf.from_transformers(base)  # float32, read before PEFT wraps the layers
    net = peft.get_peft_model(base.to(dtype), peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, use_dora=True))
    with torch.no_grad():  # an adapter that moves the output (PEFT's B starts at zero)
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = dora.adapt(model, targets=TARGETS, rank=RANK, alpha=ALPHA)
    state = gd.build(adapted)[0](None, state)
    for name, mod in net.get_base_model().named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            assert mod.lora_A["default"].weight.dtype == torch.float32  # PEFT's default
            state.data[f"{name}_dora"] = dict(
                state.data[f"{name}_dora"],
                A=mod.lora_A["default"].weight.detach().numpy().T,
                B=mod.lora_B["default"].weight.detach().numpy().T,
                magnitude=mod.lora_magnitude_vector["default"].weight.detach().numpy())
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 17)))
    return net, adapted, state, ids


@pytest.fixture
def llama():
    return _llama()


def _half_state(state: gd.ModelState, dtype: Any = ml_dtypes.bfloat16) -> gd.ModelState:
    """``state`` with every float value rounded to ``dtype`` (as transformers' .to())."""
    data = {k: {n: v.astype(dtype) if v.dtype.kind == "f" else v
                for n, v in d.items()} for k, d in state.data.items()}
    return gd.ModelState(data, state.frozen, state.entries)


def _loss(logits, ids):
    """transformers' causal-LM loss: float32 cross-entropy of the shifted logits."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _peft_grads(net) -> dict:
    """``{graphdsl layer: {A, B, magnitude: gradient}}`` in graphdsl's layout."""
    out = {}
    for name, mod in net.get_base_model().named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            out[f"{name}_dora"] = {"A": mod.lora_A["default"].weight.grad.t(),
                                   "B": mod.lora_B["default"].weight.grad.t(),
                                   "magnitude": mod.lora_magnitude_vector["default"].weight.grad}
    return out


def test_to_torch_dtypes_and_adapter_dtype(llama):
    _, adapted, state, ids = llama
    q = "model.layers.0.self_attn.q_proj"
    for m in (gd.to_torch(adapted, state, dtype="bfloat16"),
              gd.to_torch(adapted, _half_state(state))):  # cast, or kept from the state
        assert m.get_parameter(f"{q}.kernel").dtype == torch.bfloat16
        for p in ("A", "B", "magnitude"):  # PEFT's autocast_adapter_dtype
            assert m.get_parameter(f"{q}_dora.{p}").dtype == torch.float32
        assert m(ids).dtype == torch.bfloat16  # the base's dtype, as PEFT's result
    m = gd.to_torch(adapted, state, dtype=torch.float16, adapter_dtype="bfloat16")
    assert m.get_parameter(f"{q}.kernel").dtype == torch.float16
    assert m.get_parameter(f"{q}_dora.A").dtype == torch.bfloat16
    assert gd.to_torch(adapted, state).get_parameter(f"{q}_dora.A").dtype == torch.float32
    assert gd.to_torch(adapted, state, dtype="float64").get_parameter(
        f"{q}_dora.A").dtype == torch.float64  # adapters follow a full-precision dtype
    with pytest.raises(GraphDSLError, match="unsupported module dtype 'int8'"):
        gd.to_torch(adapted, state, dtype="int8")
    back = gd.from_torch(gd.to_torch(adapted, state, dtype="bfloat16"))  # kept, not widened
    assert back.data[q]["kernel"].dtype == ml_dtypes.bfloat16
    assert back.data[f"{q}_dora"]["A"].dtype == np.float32
    np.testing.assert_array_equal(back.data[f"{q}_dora"]["A"], state.data[f"{q}_dora"]["A"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_llama_dora_forward_and_gradients_match_peft(dtype):
    """u below is the dtype's own unit roundoff (float16: 2^-11)."""
    net, adapted, state, ids = _llama(dtype)
    U = torch.finfo(dtype).eps / 2
    m = gd.to_torch(adapted, _half_state(state, np.float16 if dtype == torch.float16 else
                                         ml_dtypes.bfloat16))
    net.zero_grad(set_to_none=True)
    ref = net(input_ids=ids).logits
    got = m(ids)
    assert got.dtype == ref.dtype == dtype
    # logits of order 1 through 2 layers: a few bf16 roundings apart (4u of the largest;
    # measured 1.5u)
    assert _rel(got, ref) < 4 * U
    _loss(ref, ids).backward()
    _loss(got, ids).backward()
    grads = _peft_grads(net)
    worst = 0.0
    for layer, g in grads.items():
        for p, want in g.items():
            have = m.get_parameter(f"{layer}.{p}").grad
            assert have.dtype == torch.float32  # the adapters' own dtype
            worst = max(worst, _rel(have, want))
    # gradients flow back through bf16 activations of both models: 8u of the largest
    # (measured 4u; PEFT's bf16 model against graphdsl's float32 one: 5u)
    assert worst < 8 * U, worst


def test_llama_dora_under_autocast_matches_peft():
    """A float32 LLaMA + DoRA under torch.autocast(bfloat16), graphdsl's against PEFT's
    under the same autocast: logits within 4u and the adapters' float32 gradients within
    8u of the largest, as the bfloat16 test above (measured 1.5u and 3.2u)."""
    net, adapted, state, ids = _llama(torch.float32)
    m = gd.to_torch(adapted, state)
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = net(input_ids=ids).logits, m(ids)
    assert got.dtype == ref.dtype == torch.bfloat16
    assert _rel(got, ref) < 4 * U
    _loss(ref, ids).backward()
    _loss(got, ids).backward()
    worst = max(_rel(m.get_parameter(f"{layer}.{p}").grad, want)
                for layer, g in _peft_grads(net).items() for p, want in g.items())
    assert worst < 8 * U, worst


def test_bf16_llama_dora_sgd_step_matches_peft(llama):
    net, adapted, state, ids = llama
    m = gd.to_torch(adapted, state, dtype="bfloat16")  # base cast here, adapters float32
    net_params = [p for p in net.parameters() if p.requires_grad]
    ours = [p for p in m.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in net_params]
    opt_a, opt_b = torch.optim.SGD(net_params, lr=0.5), torch.optim.SGD(ours, lr=0.5)

    def step(fn, params, opt):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = _loss(fn(ids), ids)
        loss.backward()
        opt.step()
        return float(loss.detach()), time.perf_counter() - t0

    try:
        losses = {k: [] for k in ("peft", "ours")}
        for _ in range(2):  # the second loss sees the first step's update
            losses["peft"].append(step(lambda x: net(input_ids=x).logits, net_params, opt_a)[0])
            losses["ours"].append(step(m, ours, opt_b)[0])
        # a loss of ~4.6 from bf16 logits: within 4u of the loss itself
        np.testing.assert_allclose(losses["ours"], losses["peft"], rtol=4 * U)
        assert losses["ours"][1] < losses["ours"][0] - 0.01  # the step did something
    finally:
        with torch.no_grad():
            for p, v in zip(net_params, saved):
                p.copy_(v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", cases_for("torch"))
def test_every_op_runs_under_autocast(case, device):
    """Forward and backward of each op under torch.autocast(bfloat16): no crash, the
    float32 result within bf16 rounding (16u of the largest value: the matmul-like ops
    round their inputs and outputs, several in a row in the block cases)."""
    model, inputs, st = case.setup()
    m = gd.to_torch(model, st, device=device).eval()
    args = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    want = _flat(m(**args))
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _flat(m(**args))
    floats = [g for g in got if g.is_floating_point() and g.requires_grad]
    if floats:
        sum(g.float().sum() for g in floats).backward()
        for p in m.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all())
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if w.is_floating_point():
            assert _rel(g, w) < 16 * U
        else:
            assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", cases_for("torch", lambda c: c.op != "cast"))  # a cast (a
def test_every_op_in_a_half_precision_module(case, dtype):  # policy's) sets its own dtype
    """``to_torch(dtype=...)``: each op computes in half precision (adapters in float32),
    forward and backward, the float32 module's result within 16u of the largest value (u
    of that dtype; measured at most 9u, an LSTM)."""
    model, inputs, st = case.setup()
    want = _flat(gd.to_torch(model, st).eval()(**{k: torch.from_numpy(v)
                                                  for k, v in inputs.items()}))
    m = gd.to_torch(model, st, dtype=dtype).eval()
    got = _flat(m(**{k: torch.from_numpy(v).to(dtype) if v.dtype.kind == "f" else
                     torch.from_numpy(v) for k, v in inputs.items()}))
    floats = [g for g in got if g.is_floating_point() and g.requires_grad]
    if floats:
        sum(g.float().sum() for g in floats).backward()
    for g, w in zip(got, want):
        if w.is_floating_point():
            assert g.dtype == dtype
            assert _rel(g, w) < 8 * torch.finfo(dtype).eps  # 16u
        else:
            assert torch.equal(g, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_dora_under_autocast_matches_peft(device, bias):
    """graphdsl's DoRA node under autocast against PEFT's DoRA under the same autocast:
    output in bfloat16, float32 gradients of x and the adapter, 8u of the largest."""
    rng = np.random.default_rng(1)
    n_in, n_out, r, s = 48, 40, 8, 2.0
    K = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    P = {"A": rng.standard_normal((n_in, r)).astype(np.float32) * 0.3,
         "B": rng.standard_normal((r, n_out)).astype(np.float32) * 0.3,
         "magnitude": rng.uniform(0.5, 2.0, n_out).astype(np.float32)}
    lin = torch.nn.ModuleDict({"lin": torch.nn.Linear(n_in, n_out, bias=bias)})
    with torch.no_grad():
        lin["lin"].weight.copy_(torch.from_numpy(K.T.copy()))
    net = peft.get_peft_model(lin, peft.LoraConfig(r=r, lora_alpha=r * s,
                                                   target_modules=["lin"], use_dora=True))
    layer = net.base_model.model["lin"].to(device)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.from_numpy(P["A"].T.copy()))
        layer.lora_B["default"].weight.copy_(torch.from_numpy(P["B"].T.copy()))
        layer.lora_magnitude_vector["default"].weight.copy_(torch.from_numpy(P["magnitude"]))
    x = gd.input("x", (None, n_in))
    y = dora.wrap(x, gd.dense(x, n_out, name="lin", use_bias=bias), rank=r, alpha=r * s)
    data = {"lin": {"kernel": K}, "lin_dora": P}
    if bias:
        data["lin"]["bias"] = layer.base_layer.bias.detach().numpy()
    m = gd.to_torch(y, gd.build(y)[0](None, gd.ModelState(data)), device=device)
    x0 = torch.randn(5, n_in, device=device)
    xs = [x0.clone().requires_grad_() for _ in range(2)]
    outs = []
    with torch.autocast(device, dtype=torch.bfloat16):
        for fn, xi in ((layer, xs[0]), (m, xs[1])):
            outs.append(fn(xi))
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    assert _rel(outs[1], outs[0]) < 4 * U
    gy = torch.randn_like(outs[0], dtype=torch.float32)
    for o in outs:
        o.float().backward(gy)
    assert xs[1].grad.dtype == torch.float32
    assert _rel(xs[1].grad, xs[0].grad) < 8 * U
    for mine, theirs in (("A", layer.lora_A["default"].weight.grad.t()),
                         ("B", layer.lora_B["default"].weight.grad.t()),
                         ("magnitude", layer.lora_magnitude_vector["default"].weight.grad)):
        g = m.get_parameter(f"lin_dora.{mine}").grad
        assert g.dtype == torch.float32
        assert _rel(g, theirs) < 8 * U, mine


@pytest.mark.parametrize("mod", [dora, lora])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_adapter_dropout_in_a_bf16_module(mod, kind):
    """Train mode with adapter dropout (PEFT's form, not the fused node) over a bf16 base
    with float32 adapters: the float32 module's output with the same torch seed (the same
    mask: torch draws it the same for both dtypes) within 4u, and float32 gradients."""
    if kind == "dense":
        x, xin = gd.input("x", (None, 16)), torch.randn(8, 16)
        base = gd.dense(x, 12, name="fc")
    else:
        x, xin = gd.input("x", (None, 6, 6, 4)), torch.randn(2, 6, 6, 4)
        base = gd.conv(x, 5, kernel_size=3, name="fc")
    y = mod.wrap(x, base, rank=4, alpha=8.0, dropout=0.3)
    st = gd.build(y)[0]({"x": xin.numpy()})
    ad = f"fc_{mod.__name__.rsplit('.', 1)[-1]}"
    rng = np.random.default_rng(0)
    st = gd.ModelState({**st.data, ad: {**st.data[ad], "B": rng.standard_normal(
        st.data[ad]["B"].shape).astype(np.float32) * 0.3}}, st.frozen, st.entries)
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        m = gd.to_torch(y, st, dtype=dtype).train()
        torch.manual_seed(0)
        outs.append(m(xin.to(dtype)))
        outs[-1].float().sum().backward()
        assert m.get_parameter(f"{ad}.A").grad.dtype == torch.float32
    assert outs[1].dtype == torch.bfloat16
    assert _rel(outs[1], outs[0]) < 4 * U
