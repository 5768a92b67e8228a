"""gd.to_torch / gd.from_torch: a real nn.Module checked against a hand-written one
(forward and gradients), state_dict, deepcopy, torch.compile, training, errors, CUDA."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _mlp():
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 16, activation="gelu", name="fc1")
    h = gd.layer_norm(h, name="ln")
    h = gd.dropout(h, 0.3, name="drop")
    return gd.dense(h, 4, name="out")


def _state(model, shape=(1, 8), seed=0):
    inputs = gd.get_inputs(model)
    tpl = {k: np.zeros((1,) + tuple(d for d in s[1:]), np.float32) for k, s in inputs.items()}
    return gd.build(model, seed=seed)[0](tpl)


class HandMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.drop(self.ln(nn.functional.gelu(self.fc1(x)))))


def _hand(st):
    ref = HandMLP()
    with torch.no_grad():
        for name in ("fc1", "out"):
            getattr(ref, name).weight.copy_(torch.tensor(st.data[name]["kernel"].T))
            getattr(ref, name).bias.copy_(torch.tensor(st.data[name]["bias"]))
        ref.ln.weight.copy_(torch.tensor(st.data["ln"]["gamma"]))
        ref.ln.bias.copy_(torch.tensor(st.data["ln"]["beta"]))
    return ref


def _grads_match(m, ref):
    g = dict(m.named_parameters())
    pairs = {"fc1.kernel": ref.fc1.weight, "fc1.bias": ref.fc1.bias, "ln.gamma": ref.ln.weight,
             "ln.beta": ref.ln.bias, "out.kernel": ref.out.weight, "out.bias": ref.out.bias}
    for k, p in pairs.items():
        want = p.grad.T if k.endswith("kernel") else p.grad
        np.testing.assert_allclose(g[k].grad.numpy(), want.numpy(), **TOL)


@pytest.mark.parametrize("training", [False, True])
def test_forward_and_backward_match_hand_written_module(training):
    model = _mlp()
    st = _state(model)
    m, ref = gd.to_torch(model, st), _hand(st)
    m.train(training)
    ref.train(training)
    x = torch.randn(5, 8)
    torch.manual_seed(3)
    y = m(x)
    torch.manual_seed(3)
    y_ref = ref(x)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), **TOL)
    w = torch.randn(5, 4)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    _grads_match(m, ref)
    if not training:  # eval matches the NumPy backend too
        np.testing.assert_allclose(y.detach().numpy(), gd.predict(model, st, x.numpy()), **TOL)


def test_train_eval_switch_dropout():
    model = _mlp()
    m = gd.to_torch(model, _state(model))
    x = torch.randn(64, 8)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert not torch.allclose(a, b)


def test_state_dict_keys_order_and_round_trip():
    model = _mlp()
    st = _state(model)
    st = st.freeze(lambda layer, p: layer == "fc1")
    m = gd.to_torch(model, st)
    keys = list(m.state_dict())
    assert keys == ["fc1.kernel", "fc1.bias", "ln.gamma", "ln.beta", "drop.key",
                    "out.kernel", "out.bias"]
    assert [n for n, p in m.named_parameters() if not p.requires_grad] == ["fc1.kernel",
                                                                         "fc1.bias"]
    back = gd.from_torch(m)
    assert back == st  # values, dtypes, frozen flags, the uint64 dropout key
    # load the values of a differently seeded state into the first module
    other = gd.to_torch(model, _state(model, seed=5).freeze(lambda layer, p: layer == "fc1"))
    m.load_state_dict(other.state_dict())
    assert gd.from_torch(m) == gd.from_torch(other)
    x = torch.randn(3, 8)
    m.eval()
    other.eval()
    assert torch.equal(m(x), other(x))


def test_to_torch_copies_and_training_moves_only_trainable():
    model = _mlp()
    st = _state(model).freeze(lambda layer, p: layer in ("fc1", "ln"))
    before = st.deepcopy()
    m = gd.to_torch(model, st)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    x, t = torch.randn(16, 8), torch.randn(16, 4)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(m(x), t).backward()
        opt.step()
    after = gd.from_torch(m)
    assert st == before  # the ModelState given to to_torch is untouched
    for layer, p in [("fc1", "kernel"), ("fc1", "bias"), ("ln", "gamma"), ("ln", "beta")]:
        np.testing.assert_array_equal(after.data[layer][p], before.data[layer][p])
        assert (layer, p) in after.frozen
    assert not np.allclose(after.data["out"]["kernel"], before.data["out"]["kernel"])
    # unfreezing in torch is reflected by from_torch
    m.fc1.kernel.requires_grad_(True)
    assert ("fc1", "kernel") not in gd.from_torch(m).frozen


def test_deepcopy_is_independent():
    model = _mlp()
    m = gd.to_torch(model, _state(model)).eval()
    c = copy.deepcopy(m)
    x = torch.randn(4, 8)
    assert torch.equal(m(x), c(x))
    with torch.no_grad():
        c.out.kernel.add_(1.0)
    assert not torch.equal(m(x), c(x))
    assert gd.from_torch(m) != gd.from_torch(c)
    assert "fc1 (dense)" in c.code


def _adapted():
    x = gd.input("x", (None, 2, 8))
    h = gd.dense(x, 16, activation="relu", name="fc1")
    y = gd.dense(h, 4, name="out")
    y = dora.adapt(y, ["fc1"], rank=2, alpha=4.0)
    return lora.adapt(y, ["out"], rank=2, alpha=4.0, dropout=0.1)


def _adapted_state(seed=0):
    st = _state(_adapted(), seed=seed)
    st.data["fc1_dora"]["B"] = np.full((2, 16), 0.1, np.float32)
    st.data["out_lora"]["B"] = np.full((2, 4), -0.2, np.float32)
    return st.unfreeze(lambda layer, p: layer.endswith(("_dora", "_lora")) and p != "key")


def test_torch_compile_fullgraph_matches_eager():
    model = _adapted()
    m = gd.to_torch(model, _adapted_state()).eval()
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "fc1_dora.A", "fc1_dora.B", "fc1_dora.magnitude", "out_lora.A", "out_lora.B"}
    x = torch.randn(3, 2, 8)
    eager = m(x)
    eager.square().sum().backward()
    g_eager = {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}
    m.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), eager.detach().numpy(), **TOL)
    for k, p in m.named_parameters():
        if p.requires_grad:
            np.testing.assert_allclose(p.grad.numpy(), g_eager[k].numpy(), **TOL)
    assert gd.from_torch(compiled) == gd.from_torch(m)
    # train mode (LoRA dropout, torch RNG) traces without graph breaks too
    m.train()
    torch.compile(m, fullgraph=True, backend="aot_eager")(x).sum().backward()


def test_inputs_by_position_name_dict_and_container_outputs():
    a = gd.input("a", (None, 3))
    b = gd.input("b", (None, 3))
    s = gd.add(a, b, name="s")
    model = gd.container({"sum": s, "both": gd.container([gd.dense(s, 2, name="d"), b])})
    st = _state(model)
    m = gd.to_torch(model, st)
    ta, tb = torch.randn(2, 3), torch.randn(2, 3)
    outs = [m(ta, tb), m(a=ta, b=tb), m(ta, b=tb), m({"a": ta, "b": tb}),
            m(ta.numpy(), tb.numpy())]
    ref = gd.predict(model, st, {"a": ta.numpy(), "b": tb.numpy()})
    for o in outs:
        assert set(o) == {"sum", "both"} and isinstance(o["both"], tuple)
        np.testing.assert_allclose(o["sum"].numpy(), ref["sum"], **TOL)
        np.testing.assert_allclose(o["both"][0].detach().numpy(), ref["both"][0], **TOL)


def test_layer_names_that_shadow_module_attributes():
    x = gd.input("x", (None, 3))
    y = gd.dense(gd.dense(x, 4, name="training"), 2, name="forward")
    st = _state(y)
    m = gd.to_torch(y, st).eval()
    assert list(m.state_dict()) == ["training.kernel", "training.bias", "forward.kernel",
                                    "forward.bias"]
    xb = torch.randn(2, 3)
    np.testing.assert_allclose(m(xb).detach().numpy(), gd.predict(y, st, xb.numpy()), **TOL)
    assert m.training is False and gd.from_torch(m) == st


# segments that are nn.Module attributes: set by train() ("training"), by FSDP and by
# to_torch's blocks ("__class__"), or methods and internals torch reads
@pytest.mark.parametrize("seg", ["training", "__class__", "forward", "state_dict",
                                 "parameters", "_modules", "train"])
def test_any_legal_layer_name_trains_and_round_trips(seg):
    x = gd.input("x", (None, 3))
    h = gd.dense(x, 4, activation="relu", name=f"blk.{seg}.fc")  # a block (own call)
    h = gd.dropout(h, 0.5, name=seg)  # a top-level holder under that name
    y = gd.dense(h, 2, name=f"{seg}.out")
    st = _state(y)
    m = gd.to_torch(y, st)
    names = [f"blk.{seg}.fc.kernel", f"blk.{seg}.fc.bias", f"{seg}.key", f"{seg}.out.kernel",
             f"{seg}.out.bias"]
    sd = m.state_dict()
    assert list(sd) == names  # the names users see are the layer names
    xb = torch.randn(64, 3)
    for mode in (True, False, True):
        assert m.train(mode) is m
        assert [mm.training for mm in m.modules()] == [mode] * len(list(m.modules()))
    torch.manual_seed(0)
    a = m(xb)
    assert not torch.equal(a, m(xb))  # dropout on in train mode
    m.eval()
    assert not any(mm.training for mm in m.modules())
    ref = torch.relu(xb @ sd[names[0]] + sd[names[1]]) @ sd[names[3]] + sd[names[4]]
    np.testing.assert_allclose(m(xb).detach().numpy(), ref.numpy(), **TOL)
    assert gd.from_torch(m) == st
    with torch.no_grad():
        m.get_submodule(f"{seg}.out").get_parameter("bias").add_(1.0)
    m2 = gd.to_torch(y, gd.from_torch(m))
    m2.load_state_dict(m.state_dict())
    assert gd.from_torch(m2) == gd.from_torch(m) != st
    assert torch.equal(m2.eval()(xb), m(xb))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_torch_keeps_half_precision(dtype):
    pytest.importorskip("ml_dtypes")
    model = _mlp()
    m = gd.to_torch(model, _state(model)).to(dtype)
    back = gd.from_torch(m)  # the module's own dtype and bits (bfloat16: ml_dtypes)
    for key, t in m.named_parameters():
        layer, p = key.rsplit(".", 1)
        assert back.data[layer][p].dtype.name == str(dtype).removeprefix("torch.")
        np.testing.assert_array_equal(back.data[layer][p].astype(np.float32),
                                      t.detach().float().numpy())
    assert back.data["drop"]["key"].dtype == np.uint64
    again = gd.to_torch(model, back).eval()  # dtype=None: the state's half dtype again
    assert again.fc1.kernel.dtype == dtype
    x = torch.randn(4, 8).to(dtype)
    assert torch.equal(again(x), m.eval()(x))  # the same values in the same dtype


def test_float64_and_int_inputs():
    model = _mlp()
    st = _state(model)
    m = gd.to_torch(model, st, dtype=torch.float64).eval()
    assert m.fc1.kernel.dtype == torch.float64
    x = np.random.default_rng(0).standard_normal((3, 8))
    np.testing.assert_allclose(m(torch.tensor(x)).detach().numpy(),
                               gd.predict(model, st, x.astype(np.float32)), rtol=1e-5,
                               atol=1e-5)
    ids = gd.input("ids", (None, 4), dtype="int64")
    e = gd.embedding(ids, 10, 3, name="emb")
    est = _state(e)
    me = gd.to_torch(e, est)
    t = torch.randint(0, 10, (2, 4))
    np.testing.assert_allclose(me(t).detach().numpy(), gd.predict(e, est, t.numpy()), **TOL)
    with pytest.raises(gd.GraphDSLError, match=r"token ids must lie in \[0, 10\)"):
        me(torch.tensor([[1, 2, 3, 10]]))
    with pytest.raises(gd.GraphDSLError, match="integer"):  # whole-number floats are ids
        me(torch.full((2, 4), 0.5))


def test_errors():
    model = _mlp()
    st = _state(model)
    m = gd.to_torch(model, st)
    with pytest.raises(gd.GraphDSLError, match=r"expects shape \(None, 8\)"):
        m(torch.randn(2, 7))
    with pytest.raises(gd.GraphDSLError, match="dtype"):
        m(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(gd.GraphDSLError, match="missing"):
        m(y=torch.randn(2, 8))
    with pytest.raises(gd.GraphDSLError, match="positional"):
        m(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(gd.GraphDSLError, match="not a tensor"):
        m("hello")
    missing = st.copy()
    del missing.data["out"]["bias"]
    with pytest.raises(gd.GraphDSLError, match="out.bias"):
        gd.to_torch(model, missing)
    wrong = st.copy()
    wrong.data["out"]["kernel"] = np.zeros((3, 3), np.float32)
    with pytest.raises(gd.GraphDSLError, match=r"\(3, 3\)"):
        gd.to_torch(model, wrong)
    extra = st.copy()
    extra.data["nope"] = {"kernel": np.zeros(2, np.float32)}
    with pytest.raises(gd.GraphDSLError, match="nope"):
        gd.to_torch(model, extra)
    with pytest.raises(gd.GraphDSLError, match="ModelState"):
        gd.to_torch(model, {"fc1": {}})
    with pytest.raises(gd.GraphDSLError, match="device"):
        gd.to_torch(model, st, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(gd.GraphDSLError, match="CUDA is not available"):
            gd.to_torch(model, st, device="cuda")
    with pytest.raises(gd.GraphDSLError, match="dtype"):
        gd.to_torch(model, st, dtype="int8")
    with pytest.raises(gd.GraphDSLError, match="to_torch"):
        gd.from_torch(nn.Linear(2, 2))


def test_dora_kernel_cache_follows_in_place_updates():
    """colsum(K*K) of the frozen kernel is cached; load_state_dict (an in-place copy) must
    invalidate it."""
    model = _adapted()
    st1, st2 = _adapted_state(seed=1), _adapted_state(seed=2)
    m = gd.to_torch(model, st1).eval()
    x = torch.randn(3, 2, 8)
    m(x)
    m.load_state_dict(gd.to_torch(model, st2).state_dict())
    np.testing.assert_allclose(m(x).detach().numpy(), gd.predict(model, st2, x.numpy()),
                               **TOL)
    m.fc1.kernel.data = torch.tensor(st1.data["fc1"]["kernel"])  # new storage
    m.load_state_dict({k: v for k, v in gd.to_torch(model, st1).state_dict().items()
                       if k != "fc1.kernel"}, strict=False)
    np.testing.assert_allclose(m(x).detach().numpy(), gd.predict(model, st1, x.numpy()),
                               **TOL)


def test_loraplus_param_groups():
    x = gd.input("x", (None, 8))
    y = gd.dense(gd.dense(x, 6, name="a"), 3, name="b")
    y = lora.adapt(y, ["a", "b"], rank=2)
    m = gd.to_torch(y, _state(y))
    assert lora.loraplus_param_groups is gd.loraplus_param_groups
    groups = lora.loraplus_param_groups(m, 1e-3, ratio=8.0, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    fast = {id(p) for p in by_name["loraplus_B"]["params"]}
    assert fast == {id(m.a_lora.B), id(m.b_lora.B)}
    assert by_name["loraplus_B"]["lr"] == pytest.approx(8e-3)
    assert {id(p) for p in by_name["loraplus_A"]["params"]} == {id(m.a_lora.A),
                                                                 id(m.b_lora.A)}
    assert all(g["weight_decay"] == 0.01 for g in groups)
    opt = torch.optim.AdamW(groups)
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    plain = gd.to_torch(_mlp(), _state(_mlp()))
    with pytest.raises(gd.GraphDSLError, match="B matrices"):
        gd.loraplus_param_groups(plain, 1e-3)


def test_import_graphdsl_does_not_import_torch():
    code = "import sys, graphdsl; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_module_matches_cpu():
    model = _adapted()
    st = _adapted_state()
    cpu = gd.to_torch(model, st).eval()
    gpu = gd.to_torch(model, st, device="cuda").eval()
    assert all(p.is_cuda for p in gpu.parameters())
    x = torch.randn(3, 2, 8)
    y_cpu, y_gpu = cpu(x), gpu(x.cuda())
    np.testing.assert_allclose(y_gpu.detach().cpu().numpy(), y_cpu.detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    y_gpu.sum().backward()
    assert gpu.fc1_dora.A.grad.is_cuda
    moved = copy.deepcopy(cpu).to("cuda")
    np.testing.assert_allclose(moved(x.cuda()).detach().cpu().numpy(),
                               y_cpu.detach().numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(gd.GraphDSLError, match="is on cpu"):
        gpu(x)
    assert gd.from_torch(gpu) == gd.from_torch(cpu)
    gpu.train()
    gpu(x.cuda()).sum().backward()  # LoRA dropout on the GPU, torch's RNG


def test_integer_inputs_are_one_rule_on_every_path():
    """Token ids: whole-number floats and bools read as int64 (a mask as transformers takes
    it), fractions are the same InputError on NumPy, the torch backend and a module."""
    model = gd.embedding(gd.input("ids", (None, 3), dtype="int64"), 5, 2, name="e")
    st = gd.build(model)[0]()
    want = gd.predict(model, st, np.array([[0, 1, 4]]))
    runs = [lambda x: gd.predict(model, st, x),
            lambda x: gd.build(model, backend="torch")[1](st, x).numpy(),
            lambda x: gd.to_torch(model, st)(torch.from_numpy(x)).detach().numpy()]
    for run in runs:
        np.testing.assert_array_equal(run(np.array([[0.0, 1.0, 4.0]], np.float32)), want)
        with pytest.raises(gd.GraphDSLError, match=r"input 'ids' holds integers \(token ids, "
                           r"a 0/1 mask\), got dtype .*float32 with fractions"):
            run(np.array([[0.5, 1.0, 4.0]], np.float32))
