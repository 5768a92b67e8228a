"""DoRA / LoRA torch kernels against Hugging Face PEFT (LoraConfig(use_dora=True)):
forward, gradients of A, B and magnitude, dropout in PEFT's form, several SGD steps;
the factored norm never builds an [in, out] temporary; detach_norm=False; zero norms."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
IN, OUT, R = 24, 20, 4


def _graph(mod, x_shape=(None, IN), **kw):
    x = gd.input("x", x_shape)
    base = gd.dense(x, OUT, name="fc")
    return mod.wrap(x, base, rank=R, alpha=6.0, name="fc_ad", **kw)


def _state(model, seed=0):
    shape = tuple(1 if d is None else d for d in gd.get_inputs(model)["x"])
    st = gd.build(model, seed=seed)[0]({"x": np.zeros(shape, np.float32)})
    rng = np.random.default_rng(seed)
    st.data["fc_ad"]["B"] = (rng.standard_normal((R, OUT)) * 0.2).astype(np.float32)
    if "magnitude" in st.data["fc_ad"]:
        st.data["fc_ad"]["magnitude"] = (st.data["fc_ad"]["magnitude"]
                                         * rng.uniform(0.5, 1.5, OUT)).astype(np.float32)
    return st


def _peft_twin(st, use_dora, dropout=0.0, rslora=False):
    peft = pytest.importorskip("peft")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(IN, OUT)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor(st.data["fc"]["kernel"].T))
        net.fc.bias.copy_(torch.tensor(st.data["fc"]["bias"]))
    cfg = peft.LoraConfig(r=R, lora_alpha=6.0, target_modules=["fc"], use_dora=use_dora,
                          lora_dropout=dropout, use_rslora=rslora)
    pm = peft.get_peft_model(net, cfg)
    layer = pm.base_model.model.fc
    init_mag = (layer.lora_magnitude_vector["default"].weight.detach().clone()
                if use_dora else None)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor(st.data["fc_ad"]["A"].T))
        layer.lora_B["default"].weight.copy_(torch.tensor(st.data["fc_ad"]["B"].T))
        if use_dora:
            layer.lora_magnitude_vector["default"].weight.copy_(
                torch.tensor(st.data["fc_ad"]["magnitude"]))
    return pm, layer, init_mag


def _peft_params(layer, use_dora):
    out = {"A": layer.lora_A["default"].weight, "B": layer.lora_B["default"].weight}
    if use_dora:
        out["magnitude"] = layer.lora_magnitude_vector["default"].weight
    return out


def _compare_grads(m, layer, use_dora):
    ours = {"A": m.fc_ad.A.grad, "B": m.fc_ad.B.grad}
    if use_dora:
        ours["magnitude"] = m.fc_ad.magnitude.grad
    for k, p in _peft_params(layer, use_dora).items():
        want = p.grad.T if k in ("A", "B") else p.grad
        np.testing.assert_allclose(ours[k].numpy(), want.numpy(), **TOL, err_msg=k)


@pytest.mark.parametrize("use_dora", [True, False])
@pytest.mark.parametrize("x_shape", [(None, IN), (None, 3, IN)])
def test_forward_and_gradients_match_peft(use_dora, x_shape):
    model = _graph(dora if use_dora else lora, x_shape)
    st = _state(model)
    m = gd.to_torch(model, st)
    pm, layer, _ = _peft_twin(st, use_dora)
    x = torch.randn((5,) + tuple(x_shape[1:]))
    y, y_ref = m(x), pm(x)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), **TOL)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    _compare_grads(m, layer, use_dora)


@pytest.mark.parametrize("use_dora", [True, False])
def test_dropout_matches_peft_form(use_dora):
    """Train mode with lora_dropout: the same torch RNG draws give the same mask, so the
    outputs and gradients match PEFT's exactly-formulated dropout path."""
    model = _graph(dora if use_dora else lora, dropout=0.3)
    st = _state(model)
    m = gd.to_torch(model, st).train()
    pm, layer, _ = _peft_twin(st, use_dora, dropout=0.3)
    pm.train()
    x = torch.randn(6, IN)
    torch.manual_seed(11)
    y = m(x)
    torch.manual_seed(11)
    y_ref = pm(x)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), **TOL)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    _compare_grads(m, layer, use_dora)
    m.eval()
    pm.eval()
    np.testing.assert_allclose(m(x).detach().numpy(), pm(x).detach().numpy(), **TOL)


def test_sgd_steps_match_peft_and_magnitude_init():
    model = _graph(dora, rslora=True)
    fresh = gd.build(model)[0]({"x": np.zeros((1, IN), np.float32)})
    _, _, peft_mag = _peft_twin(fresh, True, rslora=True)  # PEFT's own init of m (B=0)
    np.testing.assert_allclose(fresh.data["fc_ad"]["magnitude"], peft_mag.numpy(), **TOL)
    st = _state(model)
    m = gd.to_torch(model, st)
    pm, layer, _ = _peft_twin(st, True, rslora=True)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    opt_ref = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.05)
    x, t = torch.randn(8, IN), torch.randn(8, OUT)
    for _ in range(4):
        for model_, o in ((m, opt), (pm, opt_ref)):
            o.zero_grad()
            torch.nn.functional.mse_loss(model_(x), t).backward()
            o.step()
    got = gd.from_torch(m).data["fc_ad"]
    ref = _peft_params(layer, True)
    np.testing.assert_allclose(got["A"], ref["A"].detach().numpy().T, **TOL)
    np.testing.assert_allclose(got["B"], ref["B"].detach().numpy().T, **TOL)
    np.testing.assert_allclose(got["magnitude"], ref["magnitude"].detach().numpy(), **TOL)
    np.testing.assert_array_equal(gd.from_torch(m).data["fc"]["kernel"],
                                  st.data["fc"]["kernel"])  # the base stays frozen


def test_factored_norm_builds_no_in_by_out_temporary():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and "view" not in func.__name__:
                    Largest.biggest = max(Largest.biggest, t.numel())
            return out

    n_in, n_out = 2048, 1536  # big enough that colsum(K*K) runs in blocks
    x = gd.input("x", (None, n_in))
    model = dora.wrap(x, gd.dense(x, n_out, name="fc"), rank=R, name="fc_ad")
    st = gd.build(model)[0]({"x": np.zeros((1, n_in), np.float32)})
    m = gd.to_torch(model, st).train()
    m(torch.randn(2, n_in))  # first-call allocations are not what this test is about
    with Largest():
        m(torch.randn(2, n_in)).sum().backward()
    assert 0 < Largest.biggest <= n_in * n_out // 2


def test_detach_norm_false_gives_the_full_gradient():
    """With detach_norm=False the norm is differentiated: compare with autograd through
    the materialized K + s*A@B (an independent formulation)."""
    model = _graph(dora, detach_norm=False)
    st = _state(model)
    m = gd.to_torch(model, st)
    x = torch.randn(5, IN)
    y = m(x)
    K = torch.tensor(st.data["fc"]["kernel"])
    b = torch.tensor(st.data["fc"]["bias"])
    A = torch.tensor(st.data["fc_ad"]["A"], requires_grad=True)
    B = torch.tensor(st.data["fc_ad"]["B"], requires_grad=True)
    mag = torch.tensor(st.data["fc_ad"]["magnitude"], requires_grad=True)
    s = 6.0 / R
    W = K + s * A @ B
    y_ref = x @ (W * (mag / W.norm(dim=0))) + b
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), **TOL)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for ours, ref in ((m.fc_ad.A, A), (m.fc_ad.B, B), (m.fc_ad.magnitude, mag)):
        np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=1e-4, atol=1e-5)
    # and the default (detached) gradient differs from it for A
    m2 = gd.to_torch(_graph(dora), st)
    m2(x).square().sum().backward()
    assert not torch.allclose(m2.fc_ad.A.grad, A.grad, atol=1e-4)


def test_zero_norm_column_is_an_error_and_eps_clamps():
    model = _graph(dora)
    st = _state(model)
    K, B = st.data["fc"]["kernel"].copy(), st.data["fc_ad"]["B"].copy()
    K[:, 3] = 0.0
    B[:, 3] = 0.0
    st.data["fc"]["kernel"], st.data["fc_ad"]["B"] = K, B
    m = gd.to_torch(model, st)
    with pytest.raises(gd.GraphDSLError, match=r"zero-norm column.*\n.*fc_ad") as e:
        m(torch.randn(2, IN))
    assert "[3]" in str(e.value) and "eps" in str(e.value)
    with pytest.raises(gd.GraphDSLError, match="zero-norm"):
        gd.predict(model, st, np.zeros((2, IN), np.float32), backend="torch",
                   mode="train")
    clamped = _graph(dora, eps=1e-6)
    x = torch.randn(2, IN)
    y = gd.to_torch(clamped, st)(x)
    assert torch.isfinite(y).all()
    np.testing.assert_allclose(y.detach().numpy(), gd.predict(clamped, st, x.numpy()), **TOL)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("batch", [4, 100])  # 12 rows: one fused GEMM; 300: two
def test_fused_dora_gradients_for_every_input(use_bias, batch):
    """The fused DoRA node's hand-written backward against autograd through the
    materialized weight with the norm detached: gradients of x (3-D), the base kernel and
    bias (made trainable), A, B and magnitude; an activation after it."""
    x = gd.input("x", (None, 3, IN))
    base = gd.dense(x, OUT, name="fc", use_bias=use_bias, activation="tanh")
    model = dora.wrap(x, base, rank=R, alpha=6.0, name="fc_ad")
    st = _state(model)
    m = gd.to_torch(model, st)
    for p in m.parameters():
        p.requires_grad_(True)
    xt = torch.randn(batch, 3, IN, dtype=torch.float32, requires_grad=True)
    y = m(xt)
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in
           {**st.data["fc"], **st.data["fc_ad"]}.items() if k != "key"}
    x2 = xt.detach().clone().requires_grad_(True)
    s = 6.0 / R
    W = ref["kernel"] + s * ref["A"] @ ref["B"]
    y_ref = x2 @ (W * (ref["magnitude"] / W.norm(dim=0).detach()))
    y_ref = torch.tanh(y_ref + ref["bias"] if use_bias else y_ref)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), **TOL)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), x2.grad.numpy(), **TOL)
    ours = {"kernel": m.fc.kernel, "A": m.fc_ad.A, "B": m.fc_ad.B,
            "magnitude": m.fc_ad.magnitude}
    if use_bias:
        ours["bias"] = m.fc.bias
    for k, p in ours.items():
        np.testing.assert_allclose(p.grad.numpy(), ref[k].grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=k)
