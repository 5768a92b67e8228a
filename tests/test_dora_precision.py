"""DoRA where an update nearly cancels a kernel column (``s*A@B = -(1-eps)*K`` on some
columns): the factored norm ``|K|^2 + 2s<A^T K, B> + s^2|AB|^2`` cancels there, so those
columns are recomputed from their materialized kernel. Every path (NumPy inference and
train mode, the ONNX export, the to_torch forward and its gradients of A, B, magnitude
and the input) is compared with PEFT's DoRA layer (Linear, Conv2d, Embedding) per output unit.

The reference is PEFT run in float64 on the same float32 weights: PEFT in float32 is
itself off the exact values by up to 6e-5 here (its materialized ``W + s*B@A`` rounds,
and its forward ``(m/c - 1)*x@W + (m/c)*s*lora(x)`` cancels), while graphdsl in float32
stays within 1e-6 of them."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import graphdsl as gd  # noqa: E402
from graphdsl import dora  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:  # the onnx extra is optional
    ort = None

R, ALPHA = 4, 8.0
S = ALPHA / R
FAN_IN, OUT, VOCAB, CIN, KS = 64, 12, 64, 8, 3  # conv: fan_in = 3*3*8 = 72


def _cancelling(rng, fan_in, out, eps):
    """Flat ``K [fan_in, out]``, ``A [fan_in, r]``, ``B [r, out]``, ``m [out]`` (float32):
    every third column of K lies in A's span and ``s*A@B = -(1-eps)*K`` there (the
    update leaves eps of it); ``m`` is the exact norm times U(0.5, 1.5)."""
    K = (rng.standard_normal((fan_in, out)) / np.sqrt(fan_in)).astype(np.float32)
    A = (rng.uniform(-1, 1, (fan_in, R)) / np.sqrt(fan_in)).astype(np.float32)
    B = (rng.standard_normal((R, out)) * 0.1).astype(np.float32)
    cols = np.arange(0, out, 3)
    Z = rng.standard_normal((R, len(cols)))
    K[:, cols] = (A.astype(np.float64) @ Z).astype(np.float32)
    B[:, cols] = (-(1 - eps) * Z / S).astype(np.float32)
    V = K.astype(np.float64) + S * (A.astype(np.float64) @ B.astype(np.float64))
    m = np.sqrt((V ** 2).sum(0)) * rng.uniform(0.5, 1.5, out)
    return K, A, B, m.astype(np.float32)


def _dense(rng, eps, **kw):
    K, A, B, m = _cancelling(rng, FAN_IN, OUT, eps)
    b = rng.standard_normal(OUT).astype(np.float32)
    x = gd.input("x", (None, FAN_IN))
    y = dora.wrap(x, gd.dense(x, OUT, name="base"), rank=R, alpha=ALPHA, name="ad", **kw)
    st = {"base": {"kernel": K, "bias": b}, "ad": {"A": A, "B": B, "magnitude": m}}
    lin = torch.nn.Linear(FAN_IN, OUT)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(K.T.copy()))
        lin.bias.copy_(torch.from_numpy(b))
    return y, st, lin, (A.T, B.T), rng.standard_normal((5, FAN_IN)).astype(np.float32)


def _conv(rng, eps):
    K, A, B, m = _cancelling(rng, KS * KS * CIN, OUT, eps)
    K, A = K.reshape(KS, KS, CIN, OUT), A.reshape(KS, KS, CIN, R)
    b = rng.standard_normal(OUT).astype(np.float32)
    x = gd.input("x", (None, 5, 5, CIN))
    base = gd.conv(x, OUT, KS, padding=[(1, 1)] * 2, name="base")
    y = dora.wrap(x, base, rank=R, alpha=ALPHA, name="ad")
    st = {"base": {"kernel": K, "bias": b}, "ad": {"A": A, "B": B, "magnitude": m}}
    conv = torch.nn.Conv2d(CIN, OUT, KS, padding=1)
    oihw = lambda a: np.ascontiguousarray(np.moveaxis(a, (-1, -2), (0, 1)))  # noqa: E731
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(oihw(K)))
        conv.bias.copy_(torch.from_numpy(b))
    return y, st, conv, (oihw(A), B.T.reshape(OUT, R, 1, 1)), \
        rng.standard_normal((2, 5, 5, CIN)).astype(np.float32)


def _embedding(rng, eps):
    K, A, B, m = _cancelling(rng, VOCAB, OUT, eps)
    ids = gd.input("ids", (None, 7), dtype="int64")
    y = dora.wrap(ids, gd.embedding(ids, VOCAB, OUT, name="base"), rank=R, alpha=ALPHA,
                  name="ad")
    st = {"base": {"kernel": K}, "ad": {"A": A, "B": B, "magnitude": m}}
    emb = torch.nn.Embedding(VOCAB, OUT)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(K))
    return y, st, emb, (A.T, B.T), rng.integers(0, VOCAB, (3, 7))


def _peft64(base, st, lora_weights):
    """PEFT's DoRA layer on ``base`` with graphdsl's adapter weights, in float64."""
    net = torch.nn.Sequential()
    net.add_module("base", base)
    pm = peft.get_peft_model(net, peft.LoraConfig(r=R, lora_alpha=ALPHA, use_dora=True,
                                                  target_modules=["base"]))
    layer = pm.base_model.model.base
    emb = isinstance(base, torch.nn.Embedding)
    pa = layer.lora_embedding_A["default"] if emb else layer.lora_A["default"].weight
    pb = layer.lora_embedding_B["default"] if emb else layer.lora_B["default"].weight
    mv = layer.lora_magnitude_vector["default"].weight
    with torch.no_grad():
        pa.copy_(torch.from_numpy(np.ascontiguousarray(lora_weights[0])))
        pb.copy_(torch.from_numpy(np.ascontiguousarray(lora_weights[1])))
        mv.copy_(torch.from_numpy(st["ad"]["magnitude"]).reshape(mv.shape))
    return layer.double(), pa, pb, mv


def _check(ours, ref, what):
    """Per output unit (the last axis; a vector as a whole): max |ours - ref| / max |ref|
    <= 1e-5."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    lead = tuple(range(ref.ndim - 1)) or None
    err = np.max(np.abs(ours - ref), axis=lead) / np.max(np.abs(ref), axis=lead)
    assert err.max() <= 1e-5, f"{what}: relative error {err.max():.2e} (unit {err.argmax()})"


@pytest.mark.parametrize("eps", [0.1, 0.01, 0.003, 3e-4])
@pytest.mark.parametrize("kind", ["dense", "conv", "embedding"])
def test_nearly_cancelled_columns_match_peft(kind, eps):
    rng = np.random.default_rng(int(eps * 1e4))
    model, data, base, lora_weights, x = {"dense": _dense, "conv": _conv,
                                          "embedding": _embedding}[kind](rng, eps)
    st = gd.ModelState(data)
    layer, pa, pb, mv = _peft64(base, data, lora_weights)
    ints = kind == "embedding"
    xr = torch.from_numpy(x) if ints else torch.tensor(x, dtype=torch.float64,
                                                       requires_grad=True)
    if kind == "conv":
        ref = layer(xr.movedim(-1, 1)).movedim(1, -1)
    else:
        ref = layer(xr)
    g = rng.standard_normal(ref.shape)
    (ref * torch.from_numpy(g)).sum().backward()
    want = ref.detach().numpy()

    _check(gd.build(model)[1](st, x), want, "NumPy inference")
    if ort is not None:  # the export holds the merged kernel (NumPy inference's)
        sess = ort.InferenceSession(gd.to_onnx(model, st).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        _check(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, "ONNX Runtime")
    _check(gd.build(model, mode="train")[1](st, x)["prediction"], want, "NumPy train mode")
    mod = gd.to_torch(model, st.unfreeze(lambda name, p: name == "ad")).train()
    xt = torch.from_numpy(x) if ints else torch.from_numpy(x).requires_grad_(True)
    out = mod(xt)
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    _check(out.detach().numpy(), want, "to_torch forward")
    # PEFT's A is [r, in] (conv: [r, cin, kh, kw]), its B [out, r] (conv: [out, r, 1, 1])
    _check(mod.ad.A.grad.numpy().reshape(-1, R),
           np.moveaxis(pa.grad.numpy(), (0, 1), (-1, -2)).reshape(-1, R), "grad A")
    _check(mod.ad.B.grad.numpy(), pb.grad.numpy().reshape(OUT, R).T, "grad B")
    _check(mod.ad.magnitude.grad.numpy(), mv.grad.numpy().reshape(-1), "grad magnitude")
    if not ints:
        _check(xt.grad.numpy(), xr.grad.numpy(), "grad input")


class _FixedDropout(torch.nn.Module):
    """PEFT's lora_dropout with a given keep mask (inverted dropout at ``rate``)."""

    def __init__(self, keep, rate):
        super().__init__()
        self.keep, self.rate = torch.from_numpy(keep), rate

    def forward(self, x):
        return torch.where(self.keep, x / (1 - self.rate), torch.zeros((), dtype=x.dtype))


@pytest.mark.parametrize("eps", [0.1, 0.003])
def test_dropout_and_differentiated_norm_paths_with_cancelled_columns(eps):
    """The other two forms: lora_dropout in training (NumPy with the layer's key, to_torch
    with torch's RNG; PEFT given the same mask) and ``detach_norm=False`` (against
    autograd through the materialized ``K + s*A@B`` in float64)."""
    rate = 0.3
    rng = np.random.default_rng(7)
    dropped, data, base, lora_weights, x = _dense(rng, eps, dropout=rate)
    layer, pa, pb, mv = _peft64(base, data, lora_weights)
    x64 = torch.from_numpy(x.astype(np.float64))
    g = rng.standard_normal((x.shape[0], OUT))
    init_fn, train_fn = gd.build(dropped, mode="train")
    st = init_fn(None, gd.ModelState(data))
    keep = np.random.default_rng(int(st.data["ad"]["key"])).random(x.shape, np.float32) >= rate
    layer.lora_dropout["default"] = _FixedDropout(keep, rate)
    _check(train_fn(st, x)["prediction"], layer(x64).detach().numpy(), "NumPy, dropout")

    mod = gd.to_torch(dropped, st.unfreeze(lambda name, p: name == "ad" and p != "key"))
    torch.manual_seed(3)
    keep = (torch.nn.functional.dropout(torch.ones(x.shape), rate, True) != 0).numpy()
    layer.lora_dropout["default"] = _FixedDropout(keep, rate)
    ref = layer(x64)
    (ref * torch.from_numpy(g)).sum().backward()
    torch.manual_seed(3)
    out = mod.train()(torch.from_numpy(x))
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    _check(out.detach().numpy(), ref.detach().numpy(), "to_torch, dropout")
    _check(mod.ad.B.grad.numpy(), pb.grad.numpy().T, "to_torch, dropout: grad B")
    _check(mod.ad.magnitude.grad.numpy(), mv.grad.numpy(), "to_torch, dropout: grad magnitude")

    full = _dense(np.random.default_rng(7), eps, detach_norm=False)[0]
    mod = gd.to_torch(full, gd.ModelState(data).unfreeze(lambda name, p: name == "ad"))
    out = mod(torch.from_numpy(x))
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    K, b = (torch.from_numpy(data["base"][k].astype(np.float64)) for k in ("kernel", "bias"))
    A, B, m = (torch.from_numpy(data["ad"][k].astype(np.float64)).requires_grad_()
               for k in ("A", "B", "magnitude"))
    W = K + S * A @ B
    ref = x64 @ (W * (m / W.norm(dim=0))) + b
    (ref * torch.from_numpy(g)).sum().backward()
    _check(out.detach().numpy(), ref.detach().numpy(), "detach_norm=False")
    for name, want in (("A", A), ("B", B), ("magnitude", m)):
        _check(getattr(mod.ad, name).grad.numpy(), want.grad.numpy(),
               f"detach_norm=False: grad {name}")
