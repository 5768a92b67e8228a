"""DoRA / LoRA on conv and embedding layers against Hugging Face PEFT (Conv1d, Conv2d,
Embedding; ``LoraConfig(use_dora=...)``): forward values and gradients to 1e-5 in
float32, on the NumPy backend, the torch backend and the to_torch module; and merging."""
import numpy as np
import pytest
import torch

import graphdsl as gd
from graphdsl import dora, lora

peft = pytest.importorskip("peft")


def _randomize(st, layer, rng, dora_on):
    """Nonzero B (and a magnitude off the norm) so the adapter path really counts."""
    B = st.data[layer]["B"]
    st.data[layer]["B"] = rng.normal(size=B.shape).astype(np.float32) * 0.3
    if dora_on:
        m = st.data[layer]["magnitude"]
        st.data[layer]["magnitude"] = (m * rng.uniform(0.5, 1.5, m.shape)).astype(np.float32)
    return st


def _peft_conv(n, K, b, A, B, m, kernel, stride, padding, use_dora):
    conv_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[n]
    cin, f = K.shape[-2], K.shape[-1]
    net = torch.nn.Sequential()
    net.add_module("conv", conv_cls(cin, f, kernel, stride=stride, padding=padding))
    tw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(  # noqa: E731
        a, (-1, -2), (0, 1))))
    with torch.no_grad():
        net.conv.weight.copy_(tw(K))
        net.conv.bias.copy_(torch.tensor(np.asarray(b)))
    cfg = peft.LoraConfig(r=A.shape[-1], lora_alpha=4, target_modules=["conv"],
                          use_dora=use_dora)
    pm = peft.get_peft_model(net, cfg)
    layer = pm.base_model.model.conv
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(tw(A))
        layer.lora_B["default"].weight.copy_(
            torch.tensor(np.asarray(B).T.copy()).reshape(-1, A.shape[-1], *[1] * n))
        if use_dora:
            mv = layer.lora_magnitude_vector["default"].weight
            mv.copy_(torch.tensor(np.asarray(m)).reshape(mv.shape))
    return pm, layer


@pytest.mark.parametrize("use_dora", [True, False])
@pytest.mark.parametrize("n", [1, 2])
def test_conv_adapter_matches_peft(n, use_dora, rng):
    spatial = (9,) if n == 1 else (7, 6)
    x = rng.normal(size=(3, *spatial, 4)).astype(np.float32)
    inp = gd.input("x", (None, *spatial, 4))
    base = gd.conv(inp, 5, 3, strides=2 if n == 1 else 1, padding=[(1, 1)] * n, name="conv")
    mod_ = dora if use_dora else lora
    model = mod_.adapt(base, ["conv"], rank=2, alpha=4.0)
    adapter = f"conv_{'dora' if use_dora else 'lora'}"
    st = _randomize(gd.build(model)[0](), adapter, rng, use_dora)
    p = st.data
    A = np.asarray(p[adapter]["A"])
    assert A.shape == (3,) * n + (4, 2) and p[adapter]["B"].shape == (2, 5)
    pm, layer = _peft_conv(n, p["conv"]["kernel"], p["conv"]["bias"], A, p[adapter]["B"],
                           p[adapter].get("magnitude"), 3, 2 if n == 1 else 1, 1, use_dora)
    xt = torch.from_numpy(x).movedim(-1, 1)
    ref = pm.base_model.model.conv(xt).movedim(1, -1)
    sub = model
    for train in (False, True):
        out = gd.build(sub, mode="train" if train else "inference")[1](st, x)
        out = out["prediction"] if train else out
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gd.predict(sub, st, x, backend="torch").numpy(),
                               ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    # gradients of the adapter's parameters: to_torch module vs PEFT
    g = torch.from_numpy(rng.normal(size=ref.shape).astype(np.float32))
    (ref * g).sum().backward()
    mod = gd.to_torch(sub, st).train()
    (mod(torch.from_numpy(x)) * g).sum().backward()
    h = getattr(mod, adapter)
    np.testing.assert_allclose(h.A.grad.numpy(), np.moveaxis(
        layer.lora_A["default"].weight.grad.numpy(), (0, 1), (-1, -2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.B.grad.numpy(), layer.lora_B["default"].weight.grad.numpy()
                               .reshape(5, 2).T, rtol=1e-4, atol=1e-5)
    if use_dora:
        np.testing.assert_allclose(
            h.magnitude.grad.numpy(),
            layer.lora_magnitude_vector["default"].weight.grad.numpy().reshape(-1),
            rtol=1e-4, atol=1e-5)
    assert mod.conv.kernel.grad is None  # the base kernel stays frozen
    # merging folds the adapter into a plain conv with the same output
    merged, mst = gd.merge_adapters(model, st)
    assert merged.op == "conv" and merged.name == "conv" and adapter not in mst.data
    np.testing.assert_allclose(gd.predict(merged, mst, x), gd.predict(model, st, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_dora", [True, False])
def test_embedding_adapter_matches_peft(use_dora, rng):
    ids = rng.integers(0, 11, size=(3, 5))
    emb = gd.embedding(gd.input("ids", (None, 5), dtype="int64"), 11, 6, name="emb")
    mod_ = dora if use_dora else lora
    model = mod_.wrap(emb.inputs[0], emb, rank=3, alpha=6.0, name="emb_ad")
    st = gd.build(model)[0]()
    p = st.data
    assert np.all(p["emb_ad"]["A"] == 0) and p["emb_ad"]["B"].shape == (3, 6)  # PEFT's init
    np.testing.assert_allclose(gd.predict(model, st, ids), p["emb"]["kernel"][ids], atol=1e-6)
    p["emb_ad"]["A"] = rng.normal(size=(11, 3)).astype(np.float32) * 0.3
    if use_dora:
        p["emb_ad"]["magnitude"] = (p["emb_ad"]["magnitude"] * 1.3).astype(np.float32)
    net = torch.nn.Sequential()
    net.add_module("emb", torch.nn.Embedding(11, 6))
    with torch.no_grad():
        net.emb.weight.copy_(torch.tensor(np.asarray(p["emb"]["kernel"])))
    pm = peft.get_peft_model(net, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["emb"],
                                                  use_dora=use_dora))
    layer = pm.base_model.model.emb
    with torch.no_grad():
        layer.lora_embedding_A["default"].copy_(torch.tensor(np.asarray(p["emb_ad"]["A"]).T))
        layer.lora_embedding_B["default"].copy_(torch.tensor(np.asarray(p["emb_ad"]["B"]).T))
        if use_dora:
            layer.lora_magnitude_vector["default"].weight.copy_(
                torch.tensor(np.asarray(p["emb_ad"]["magnitude"])))
    ref = layer(torch.from_numpy(ids))
    for mode in ("inference", "train"):
        out = gd.build(model, mode=mode)[1](st, ids)
        out = out["prediction"] if mode == "train" else out
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    g = torch.from_numpy(rng.normal(size=ref.shape).astype(np.float32))
    (ref * g).sum().backward()
    mod = gd.to_torch(model, st).train()
    (mod(torch.from_numpy(ids)) * g).sum().backward()
    np.testing.assert_allclose(mod.emb_ad.A.grad.numpy(),
                               layer.lora_embedding_A["default"].grad.numpy().T, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(mod.emb_ad.B.grad.numpy(),
                               layer.lora_embedding_B["default"].grad.numpy().T, rtol=1e-4,
                               atol=1e-5)
    if use_dora:
        np.testing.assert_allclose(mod.emb_ad.magnitude.grad.numpy(),
                                   layer.lora_magnitude_vector["default"].weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-5)
    merged, mst = gd.merge_adapters(model, st)
    assert merged.op == "embedding" and merged.name == "emb"
    np.testing.assert_allclose(gd.predict(merged, mst, ids), ref.detach().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_conv_adapter_channels_first_dilation_and_dropout(rng):
    """channels='first' with kernel dilation: merged == unmerged on both backends, and
    PEFT's dropout form on the NumPy and torch functional paths agree."""
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    base = gd.conv(gd.input("x", (None, 3, 9, 8)), 4, (3, 2), kernel_dilation=2,
                   padding="same", channels="first", activation="relu", name="c")
    model = dora.adapt(base, ["c"], rank=2, dropout=0.3)
    st = _randomize(gd.build(model)[0](), "c_dora", rng, True)
    assert st.data["c_dora"]["A"].shape == (3, 2, 3, 2)
    inf = gd.predict(model, st, x)
    train = gd.build(model, mode="train")[1]
    no_drop = dora.adapt(base, ["c"], rank=2)
    st_nd = gd.ModelState({k: dict(v) for k, v in st.data.items() if k != "c_dora"}
                          | {"c_dora": {k: v for k, v in st.data["c_dora"].items()
                                        if k != "key"}})
    np.testing.assert_allclose(gd.build(no_drop, mode="train")[1](st_nd, x)["prediction"],
                               inf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gd.predict(model, st, x, backend="torch").numpy(), inf,
                               rtol=1e-5, atol=1e-5)
    merged, mst = gd.merge_adapters(model, st)
    np.testing.assert_allclose(gd.predict(merged, mst, x), inf, rtol=1e-5, atol=1e-5)
    out = train(st, x)["prediction"]
    assert out.shape == inf.shape and not np.allclose(out, inf)  # dropout is active


def test_adapter_errors_on_conv_and_embedding():
    x = gd.input("x", (None, 6, 6, 4))
    grouped = gd.conv(x, 4, 3, feature_group_size=2, name="g")
    with pytest.raises(gd.GraphDSLError, match="grouped conv"):
        dora.adapt(grouped, ["g"], rank=2)
    emb = gd.embedding(gd.input("ids", (None, 3), dtype="int64"), 5, 4, name="e")
    with pytest.raises(gd.GraphDSLError, match="no bias or dropout"):
        lora.adapt(emb, ["e"], rank=2, dropout=0.1)
    c = gd.conv(x, 4, 3, name="c")
    with pytest.raises(gd.GraphDSLError, match="kernel of shape"):
        dora.wrap(gd.input("y", (None, 6, 6, 3)), c, rank=2)


@pytest.mark.parametrize("adapter", [None, lora, dora])
def test_out_of_range_token_ids_are_one_error_on_every_path(adapter):
    """An id outside [0, vocab) is the same InputError, naming the layer, on NumPy, the
    torch backend (inference and train) and a to_torch module, plain or adapted (the torch
    adapter used to let torch's IndexError through)."""
    emb = gd.embedding(gd.input("ids", (None, 3), dtype="int64"), 5, 4, name="e")
    model = emb if adapter is None else adapter.adapt(emb, ["e"], rank=2)
    st = gd.build(model)[0]()
    bad = np.array([[0, 5, 1]], np.int64)
    runs = [lambda: gd.predict(model, st, bad)]
    for mode in ("inference", "train"):
        runs.append(lambda mode=mode: gd.build(model, backend="torch", mode=mode)[1](st, bad))
    runs.append(lambda: gd.to_torch(model, st)(torch.from_numpy(bad)))
    for run in runs:
        with pytest.raises(gd.GraphDSLError, match=r"token ids must lie in \[0, 5\), got "
                           r"values in \[0, 5\] \(ids of shape \(1, 3\)\)") as e:
            run()
        assert isinstance(e.value, gd.errors.InputError)
        assert e.value.layer == ("e" if adapter is None else "e_" + adapter.OP)
