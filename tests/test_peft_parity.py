"""Agreement with Hugging Face PEFT (LoraConfig(use_dora=True) and plain LoRA) in float32.

PEFT's Linear weight is ``[out, in]`` = our kernel transposed; ``lora_A.weight`` is
``A.T`` ``[r, in]``, ``lora_B.weight`` is ``B.T`` ``[out, r]``; the magnitude is ``m``.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora  # noqa: E402

N_IN, N_OUT, R, ALPHA = 24, 10, 4, 8.0


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(N_IN, N_OUT)

    def forward(self, x):
        return self.lin(x)


class _FixedMask(torch.nn.Module):
    """Dropout with a given keep-mask (so both sides drop the same entries)."""

    def __init__(self, keep: np.ndarray, rate: float) -> None:
        super().__init__()
        self.keep = torch.from_numpy(keep.astype(np.float32))
        self.rate = rate

    def forward(self, x):
        return x * self.keep / (1.0 - self.rate)


def _params(seed):
    rng = np.random.default_rng(seed)
    return {"K": (rng.standard_normal((N_IN, N_OUT)) / np.sqrt(N_IN)).astype(np.float32),
            "b": rng.standard_normal(N_OUT).astype(np.float32),
            "A": (rng.standard_normal((N_IN, R)) * 0.3).astype(np.float32),
            "B": (rng.standard_normal((R, N_OUT)) * 0.3).astype(np.float32),
            "m": rng.uniform(0.5, 2.0, N_OUT).astype(np.float32)}


def _peft_model(P, use_dora, rslora=False, dropout=0.0, set_adapters=True):
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.lin.weight.copy_(torch.from_numpy(P["K"].T.copy()))
        net.lin.bias.copy_(torch.from_numpy(P["b"]))
    cfg = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["lin"], use_dora=use_dora,
                          use_rslora=rslora, lora_dropout=dropout)
    pm = peft.get_peft_model(net, cfg)
    layer = pm.base_model.model.lin
    if set_adapters:
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(torch.from_numpy(P["A"].T.copy()))
            layer.lora_B["default"].weight.copy_(torch.from_numpy(P["B"].T.copy()))
            if use_dora:
                layer.lora_magnitude_vector["default"].weight.copy_(torch.from_numpy(P["m"]))
    return pm, layer


def _ours(mod, P, shape=(None, N_IN), mode="inference", **kw):
    x = gd.input("x", shape)
    orig = gd.dense(x, N_OUT, name="lin")
    y = mod.wrap(x, orig, rank=R, alpha=ALPHA, **kw)
    init_fn, predict_fn = gd.build(y, mode=mode)
    data = {"lin": {"kernel": P["K"], "bias": P["b"]},
            f"lin_{mod.__name__.split('.')[-1]}": {"A": P["A"], "B": P["B"]}}
    if mod is dora:
        data["lin_dora"]["magnitude"] = P["m"]
    return y, init_fn(None, gd.ModelState(data)), predict_fn


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("shape", [(None, N_IN), (None, 3, N_IN)])
def test_dora_forward_matches_peft(rslora, shape):
    P = _params(0)
    pm, _ = _peft_model(P, use_dora=True, rslora=rslora)
    pm.eval()
    x = np.random.default_rng(1).standard_normal((5,) + shape[1:]).astype(np.float32)
    with torch.no_grad():
        ref = pm(torch.from_numpy(x)).numpy()
    _, st, predict_fn = _ours(dora, P, shape, rslora=rslora)
    np.testing.assert_allclose(predict_fn(st, x), ref, rtol=1e-5, atol=1e-5)
    _, st, train_fn = _ours(dora, P, shape, mode="train", rslora=rslora)
    np.testing.assert_allclose(train_fn(st, x)["prediction"], ref, rtol=1e-5, atol=1e-5)


def test_dora_magnitude_init_matches_peft():
    P = _params(2)
    pm, layer = _peft_model(P, use_dora=True, set_adapters=False)
    peft_m = layer.lora_magnitude_vector["default"].weight.detach().numpy()
    x = gd.input("x", (None, N_IN))
    y = dora.wrap(x, gd.dense(x, N_OUT, name="lin"), rank=R, alpha=ALPHA)
    st = gd.build(y)[0](None, gd.ModelState({"lin": {"kernel": P["K"], "bias": P["b"]}}))
    np.testing.assert_allclose(st.data["lin_dora"]["magnitude"], peft_m, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mod,seed,rate", [(dora, 3, 0.3), (lora, 8, 0.2)],
                         ids=["dora", "lora"])
def test_train_dropout_matches_peft_with_same_mask(mod, seed, rate):
    P = _params(seed)
    x = np.random.default_rng(seed + 1).standard_normal((6, N_IN)).astype(np.float32)
    _, st, train_fn = _ours(mod, P, mode="train", dropout=rate)
    layer_name = f"lin_{mod.__name__.rsplit('.', 1)[-1]}"
    keep = np.random.default_rng(int(st.data[layer_name]["key"])).random(
        x.shape, dtype=np.float32) >= rate
    pm, layer = _peft_model(P, use_dora=mod is dora, dropout=rate)
    layer.lora_dropout["default"] = _FixedMask(keep, rate)
    pm.train()
    ref = pm(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(train_fn(st, x)["prediction"], ref, rtol=1e-5, atol=1e-5)


def test_dora_merge_matches_peft_merge_and_unload():
    P = _params(5)
    pm, _ = _peft_model(P, use_dora=True)
    merged_peft = pm.merge_and_unload().lin.weight.detach().numpy().T
    y, st, _ = _ours(dora, P)
    _, ms = gd.merge_adapters(y, st)
    np.testing.assert_allclose(ms.data["lin"]["kernel"], merged_peft, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_forward_matches_peft(rslora):
    P = _params(6)
    pm, _ = _peft_model(P, use_dora=False, rslora=rslora)
    pm.eval()
    x = np.random.default_rng(7).standard_normal((5, 2, N_IN)).astype(np.float32)
    with torch.no_grad():
        ref = pm(torch.from_numpy(x)).numpy()
    _, st, predict_fn = _ours(lora, P, (None, 2, N_IN), rslora=rslora)
    np.testing.assert_allclose(predict_fn(st, x), ref, rtol=1e-5, atol=1e-5)
