"""Axon's recurrent layers: lstm, gru, conv_lstm, bidirectional.

References: Axon's own fixtures (layers_test.exs "lstm_cell" and "lstm", numbers PyTorch
computed, in tests/golden/axon_lstm_fixtures.npz), torch.nn.LSTM / torch.nn.GRU for values
and for the gradients of every parameter, the initial state and the input through
gd.to_torch, F.conv2d for conv_lstm's cell, and ONNX Runtime for the exports. Axon's
compiler_test shapes (parameters, bidirectional) and its "mask actually works" check.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import export_and_run

import graphdsl as gd
from graphdsl import GraphDSLError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

R = np.random.default_rng(22)
GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "axon_lstm_fixtures.npz"))
TOL = {"rtol": 1e-5, "atol": 1e-5}
BACKENDS = ("numpy", "torch", "onnxruntime")
Z = {"recurrent_initializer": "zeros"}  # the zero initial state (torch's default)


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _rnn_model(op, T=5, F_=4, U=3, state=False, **kw):
    if not state:
        kw.setdefault("recurrent_initializer", "zeros")
    x = gd.input("x", (None, T, F_))
    hs = None
    if state:
        hs = tuple(gd.input(n, (None, U)) for n in (("c0", "h0") if op == "lstm" else ("h0",)))
    seq, states = getattr(gd, op)(x, U, hs, name="rnn", **kw)
    return gd.container([seq, *states])


def _predict(model, st, feed, backend):
    if backend == "onnxruntime":
        return export_and_run(model, st, feed)[0]
    out = gd.predict(model, st, feed if len(feed) > 1 else feed["x"], backend=backend)
    out = out if isinstance(out, tuple) else (out,)
    return [np.asarray(o.detach() if isinstance(o, torch.Tensor) else o) for o in out]


# -- Axon's fixtures -------------------------------------------------------------------------
def _axon_state(prefix):
    g = {k.removeprefix(prefix): GOLDEN[k] for k in GOLDEN if k.startswith(prefix)}
    return {"input_kernel": np.concatenate([g[f"wi{k}"] for k in "ifgo"], 1),
            "hidden_kernel": np.concatenate([g[f"wh{k}"] for k in "ifgo"], 1),
            "bias": np.concatenate([g[f"b{k}"] for k in "ifgo"])}, g


@pytest.mark.parametrize("unroll", ["dynamic", "static"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_matches_axons_fixture(unroll, backend):
    """layers_test.exs "lstm": seq [3, 5, 10], state (c, h) [3, 20] -> Axon's expected
    sequence, cell and hidden (PyTorch's numbers)."""
    params, g = _axon_state("lstm_")
    model = _rnn_model("lstm", 5, 10, 20, state=True, unroll=unroll)
    st = gd.build(model)[0](None, gd.ModelState({"rnn": params}))
    feed = {"x": g["input_seq"], "c0": g["input_c"][0], "h0": g["input_h"][0]}
    seq, c, h = _predict(model, st, feed, backend)
    np.testing.assert_allclose(seq, g["output_seq"], **TOL)
    np.testing.assert_allclose(c, g["output_c"], **TOL)
    np.testing.assert_allclose(h, g["output_h"], **TOL)


def test_lstm_cell_matches_axons_fixture():
    """layers_test.exs "lstm_cell": one step of x [3, 10] from (c, h) [3, 20]."""
    params, g = _axon_state("lstm_cell_")
    model = _rnn_model("lstm", 1, 10, 20, state=True)
    st = gd.build(model)[0](None, gd.ModelState({"rnn": params}))
    feed = {"x": g["input_seq"][:, None], "c0": g["input_c"], "h0": g["input_h"]}
    seq, c, h = _predict(model, st, feed, "numpy")
    np.testing.assert_allclose(c, g["output_c"], **TOL)
    np.testing.assert_allclose(h, g["output_h"], **TOL)
    np.testing.assert_array_equal(seq[:, 0], h)


def test_params_as_axon():
    """compiler_test "initializes in default case": per-gate shapes [10, 64], [64, 64], [64]
    (here concatenated: [10, 256] ...), zero biases, every gate block glorot-drawn on its own
    (Axon's per-gate maps: limit sqrt(6 / (10 + 64)), not the [10, 256] matrix's)."""
    seq, _ = gd.lstm(gd.input("x", (None, 32, 10)), 64, name="lstm")
    p = gd.build(seq)[0]().data["lstm"]
    assert p["input_kernel"].shape == (10, 256) and p["hidden_kernel"].shape == (64, 256)
    np.testing.assert_array_equal(p["bias"], np.zeros(256, np.float32))
    assert np.abs(p["input_kernel"]).max() > np.sqrt(6 / (10 + 256))
    assert np.abs(p["input_kernel"]).max() <= np.sqrt(6 / (10 + 64))
    seq, _ = gd.gru(gd.input("x", (None, 32, 10)), 64, name="gru")
    p = gd.build(seq)[0]().data["gru"]
    assert [p[k].shape for k in ("input_kernel", "hidden_kernel", "bias")] == [
        (10, 192), (64, 192), (256,)]
    seq, _ = gd.conv_lstm(gd.input("x", (None, 10, 3, 6, 6)), 4, name="convlstm")
    p = gd.build(seq)[0]().data["convlstm"]
    assert [p[k].shape for k in ("input_kernel", "hidden_kernel", "bias")] == [
        (16, 3, 1, 1), (16, 4, 1, 1), (16,)]


# -- torch.nn.LSTM / GRU: values and gradients ------------------------------------------------
def _torch_ref(op, p, F_, U):
    """torch's layer holding graphdsl's parameters (weight_ih = input_kernel.T, ...)."""
    ref = (torch.nn.LSTM if op == "lstm" else torch.nn.GRU)(F_, U, batch_first=True)
    b = torch.tensor(p["bias"])
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.tensor(p["input_kernel"].T))
        ref.weight_hh_l0.copy_(torch.tensor(p["hidden_kernel"].T))
        ref.bias_ih_l0.copy_(b[:4 * U] if op == "lstm" else b[:3 * U])
        ref.bias_hh_l0.zero_()
        if op == "gru":
            ref.bias_hh_l0[2 * U:] = b[3 * U:]
    return ref


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_values_and_gradients_equal_torch(op):
    """Forward and the gradients of input_kernel, hidden_kernel, bias, the initial state and
    the input through gd.to_torch equal torch.nn.LSTM / GRU's (weights mapped)."""
    B, T, F_, U = 3, 6, 4, 5
    model = _rnn_model(op, T, F_, U, state=True)
    st = gd.build(model)[0]()
    st.data["rnn"]["bias"] = _f(4 * U)
    p = {k: np.asarray(v) for k, v in st.data["rnn"].items()}
    mod = gd.to_torch(model, st)
    x, h0, c0 = (torch.tensor(_f(*s), requires_grad=True) for s in ((B, T, F_), (B, U), (B, U)))
    w = [torch.tensor(_f(B, T, U)), torch.tensor(_f(B, U)), torch.tensor(_f(B, U))]
    ins = {"x": x, "c0": c0, "h0": h0} if op == "lstm" else {"x": x, "h0": h0}
    out = mod(**ins)
    sum((o * wi).sum() for o, wi in zip(out, w)).backward()
    ref = _torch_ref(op, p, F_, U)
    xr, h0r, c0r = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    if op == "lstm":
        y, (hn, cn) = ref(xr, (h0r[None], c0r[None]))
        want = [y, cn[0], hn[0]]
    else:
        y, hn = ref(xr, h0r[None])
        want = [y, hn[0]]
    sum((o * wi).sum() for o, wi in zip(want, w)).backward()
    for got, exp in zip(out, want):
        np.testing.assert_allclose(got.detach().numpy(), exp.detach().numpy(), **TOL)
    g = {k: v.grad.numpy() for k, v in mod.named_parameters()}
    np.testing.assert_allclose(g["rnn.input_kernel"], ref.weight_ih_l0.grad.numpy().T, **TOL)
    np.testing.assert_allclose(g["rnn.hidden_kernel"], ref.weight_hh_l0.grad.numpy().T, **TOL)
    gb = ref.bias_ih_l0.grad.numpy()
    if op == "gru":  # bhn is torch's recurrent n bias
        gb = np.concatenate([gb, ref.bias_hh_l0.grad.numpy()[2 * U:]])
    np.testing.assert_allclose(g["rnn.bias"], gb, **TOL)
    for mine, theirs in [(x, xr), (h0, h0r)] + ([(c0, c0r)] if op == "lstm" else []):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), **TOL)


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_zero_default_state_static_and_dynamic_agree(op):
    """Without hidden_state the state starts at zeros (torch's default); static and dynamic
    unroll give the same numbers on every backend."""
    B, T, F_, U = 2, 4, 3, 4
    x = _f(B, T, F_)
    outs = []
    for unroll in ("dynamic", "static"):
        model = _rnn_model(op, T, F_, U, unroll=unroll)
        st = gd.build(model)[0]()
        st.data["rnn"]["bias"] = np.linspace(-1, 1, 4 * U, dtype=np.float32)
        for backend in BACKENDS:
            outs.append(_predict(model, st, {"x": x}, backend))
    ref = _torch_ref(op, {k: np.asarray(v) for k, v in st.data["rnn"].items()}, F_, U)
    y = ref(torch.tensor(x))[0].detach().numpy()
    for o in outs:
        np.testing.assert_allclose(o[0], y, **TOL)


def test_states_feed_another_layer():
    """An encoder's (cell, hidden) as a decoder's hidden_state, as Axon's docs chain them:
    torch's decoder started from torch's encoder state."""
    B, T, F_, U = 2, 4, 3, 5
    _, enc_state = gd.lstm(gd.input("x", (None, T, F_)), U, name="enc", **Z)
    dec, _ = gd.lstm(gd.input("y", (None, 3, F_)), U, enc_state, name="dec")
    st = gd.build(dec)[0]()
    feed = {"x": _f(B, T, F_), "y": _f(B, 3, F_)}
    enc, dec_ref = (_torch_ref("lstm", {k: np.asarray(v) for k, v in st.data[n].items()}, F_,
                               U) for n in ("enc", "dec"))
    want = dec_ref(torch.tensor(feed["y"]), enc(torch.tensor(feed["x"]))[1])[0]
    for backend in BACKENDS:
        np.testing.assert_allclose(_predict(dec, st, feed, backend)[0], want.detach().numpy(),
                                   **TOL)


# -- mask ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_mask_keeps_the_state_like_a_shorter_sequence(op):
    """Where the mask is 1 the step keeps the previous state (Axon's lstm_cell select): a
    row masked after step k ends with torch's state after k steps, and outputs the last
    kept hidden at every masked step."""
    B, T, F_, U = 3, 6, 4, 3
    x, lengths = _f(B, T, F_), [6, 4, 1]
    m = np.array([[0] * n + [1] * (T - n) for n in lengths], np.int64)
    seq, states = getattr(gd, op)(gd.input("x", (None, T, F_)), U,
                                  mask=gd.input("m", (None, T), dtype="int64"), name="rnn",
                                  **Z)
    model = gd.container([seq, *states])
    st = gd.build(model)[0]()
    st.data["rnn"]["bias"] = _f(4 * U)
    ref = _torch_ref(op, {k: np.asarray(v) for k, v in st.data["rnn"].items()}, F_, U)
    for backend in ("numpy", "torch"):
        out = _predict(model, st, {"x": x, "m": m}, backend)
        for r, n in enumerate(lengths):
            y = ref(torch.tensor(x[r:r + 1, :n]))[0].detach().numpy()[0]
            np.testing.assert_allclose(out[0][r, :n], y, **TOL)
            np.testing.assert_allclose(out[0][r, n:], np.broadcast_to(y[-1], (T - n, U)), **TOL)
            np.testing.assert_allclose(out[-1][r], y[-1], **TOL)


def test_masked_gradients_equal_torch_on_the_kept_steps():
    """Masked steps pass no gradient: the to_torch module's input and kernel gradients of
    a row masked after step 2 equal torch's on its first 2 steps (zero after them)."""
    T, F_, U = 5, 3, 4
    seq, (c, h) = gd.lstm(gd.input("x", (None, T, F_)), U,
                          mask=gd.input("m", (None, T), dtype="int64"), name="rnn", **Z)
    st = gd.build(h)[0]()
    mod = gd.to_torch(h, st)
    x = torch.tensor(_f(1, T, F_), requires_grad=True)
    mod(x=x, m=torch.tensor([[0, 0, 1, 1, 1]])).square().sum().backward()
    ref = _torch_ref("lstm", {k: np.asarray(v) for k, v in st.data["rnn"].items()}, F_, U)
    x2 = x.detach()[:, :2].clone().requires_grad_()
    ref(x2)[1][0].square().sum().backward()
    np.testing.assert_allclose(x.grad[:, :2].numpy(), x2.grad.numpy(), **TOL)
    np.testing.assert_array_equal(x.grad[:, 2:].numpy(), 0)
    np.testing.assert_allclose(dict(mod.named_parameters())["rnn.hidden_kernel"].grad.numpy(),
                               ref.weight_hh_l0.grad.numpy().T, **TOL)


def test_mask_actually_works_as_axon():
    """compiler_test "mask actually works": gd.mask(tokens, 0) on a padded review; every
    output after the last real token equals it."""
    ids = gd.input("review", (None, 16), dtype="int64")
    seq, _ = gd.lstm(gd.embedding(ids, 64, 8), 8, mask=gd.mask(ids, 0))
    st = gd.build(seq)[0]()
    tokens = np.zeros((1, 16), np.int64)
    tokens[0, :4] = [1, 2, 3, 4]
    out = gd.predict(seq, st, tokens)
    for i in range(4, 16):
        np.testing.assert_array_equal(out[:, i], out[:, 3])
    assert not np.allclose(out[:, 2], out[:, 3])


# -- conv_lstm ----------------------------------------------------------------------------------
def _conv_lstm_ref(x, c, h, wi, wh, b, pad):
    """Axon's conv_lstm_cell over time by hand with F.conv2d (gates i, g, f, o; f + 1)."""
    outs = []
    for t in range(x.shape[1]):
        z = F.conv2d(x[:, t], wi, b, padding=pad) + F.conv2d(h, wh, padding=pad)
        i, g, f, o = z.chunk(4, 1)
        c = torch.sigmoid(f + 1) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1), c, h


@pytest.mark.parametrize("state", [False, True])
def test_conv_lstm_equals_axons_cell(state):
    B, T, C, H, W, U = 2, 3, 2, 5, 4, 3
    x = gd.input("x", (None, T, C, H, W))
    hs = (gd.input("c0", (None, 1, U, H, W)), gd.input("h0", (None, 1, U, H, W))) \
        if state else None
    seq, (c, h) = gd.conv_lstm(x, U, hs, kernel_size=3, name="cl", **({} if state else Z))
    model = gd.container([seq, c, h])
    st = gd.build(model)[0]()
    st.data["cl"]["bias"] = _f(4 * U)
    feed = {"x": _f(B, T, C, H, W)}
    c0 = h0 = torch.zeros(B, U, H, W)
    if state:
        feed.update(c0=_f(B, 1, U, H, W), h0=_f(B, 1, U, H, W))
        c0, h0 = torch.tensor(feed["c0"][:, 0]), torch.tensor(feed["h0"][:, 0])
    p = {k: torch.tensor(np.asarray(v)) for k, v in st.data["cl"].items()}
    want = _conv_lstm_ref(torch.tensor(feed["x"]), c0, h0, p["input_kernel"],
                          p["hidden_kernel"], p["bias"], 1)
    for backend in BACKENDS:
        got = _predict(model, st, feed, backend)
        np.testing.assert_allclose(got[0], want[0].numpy(), **TOL)
        np.testing.assert_allclose(got[1], want[1][:, None].numpy(), **TOL)
        np.testing.assert_allclose(got[2], want[2][:, None].numpy(), **TOL)


def test_conv_lstm_gradients_equal_the_hand_written_cell():
    B, T, C, H, W, U = 2, 3, 2, 4, 4, 2
    seq, _ = gd.conv_lstm(gd.input("x", (None, T, C, H, W)), U, kernel_size=3, name="cl",
                          **Z)
    st = gd.build(seq)[0]()
    st.data["cl"]["bias"] = _f(4 * U)
    mod = gd.to_torch(seq, st)
    x = torch.tensor(_f(B, T, C, H, W), requires_grad=True)
    mod(x).square().sum().backward()
    p = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in st.data["cl"].items()}
    x2 = x.detach().clone().requires_grad_()
    zero = torch.zeros(B, U, H, W)
    _conv_lstm_ref(x2, zero, zero, p["input_kernel"], p["hidden_kernel"], p["bias"],
                   1)[0].square().sum().backward()
    g = dict(mod.named_parameters())
    for k in p:
        np.testing.assert_allclose(g[f"cl.{k}"].grad.numpy(), p[k].grad.numpy(), **TOL)
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), **TOL)


# -- bidirectional --------------------------------------------------------------------------
def test_bidirectional_as_axon():
    """compiler_test "bidirectional": embedding(10, 16) -> bidirectional lstm(32, name
    "lstm") merged on axis 1 -> {1, 20, 32}; one set of parameters under the block's name
    (Axon's %{"bidirectional" => %{"lstm" => _}})."""
    ids = gd.input("input", (None, 10), dtype="int64")
    seq, _ = gd.bidirectional(gd.embedding(ids, 10, 16), lambda x: gd.lstm(x, 32, name="lstm"),
                              lambda a, b: gd.concatenate([a, b], axis=1), name="bidirectional")
    st = gd.build(seq)[0]()
    # one block: the directions share the lstm and its initial-state layers (the same draw
    # at inference), as Axon's block of one rnn_state does
    assert list(st.data) == ["embedding_0", "bidirectional.lstm_c_initial_state",
                             "bidirectional.lstm_h_initial_state", "bidirectional.lstm"]
    assert gd.predict(seq, st, np.ones((1, 10), np.int64)).shape == (1, 20, 32)


def test_bidirectional_equals_torch_bidirectional_lstm():
    """With merge = concatenate on the last axis, the sequence is torch's bidirectional
    LSTM whose reverse weights are the forward ones (Axon shares them); the backward
    states come reversed along axis 1, as Axon's deep reverse leaves them."""
    B, T, F_, U = 2, 5, 3, 4
    seq, (c, h) = gd.bidirectional(gd.input("x", (None, T, F_)),
                                   lambda x: gd.lstm(x, U, name="l", **Z))
    model = gd.container([seq, c, h])
    st = gd.build(model)[0]()
    assert list(st.data) == ["block_0.l"]  # the unnamed block's name, as Axon's
    st.data["block_0.l"]["bias"] = _f(4 * U)
    p = {k: np.asarray(v) for k, v in st.data["block_0.l"].items()}
    one = _torch_ref("lstm", p, F_, U)
    ref = torch.nn.LSTM(F_, U, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, v in one.named_parameters():
            getattr(ref, name).copy_(v)
            getattr(ref, name + "_reverse").copy_(v)
    x = _f(B, T, F_)
    y, (hn, cn) = ref(torch.tensor(x))
    for backend in BACKENDS:
        got = _predict(model, st, {"x": x}, backend)
        np.testing.assert_allclose(got[0], y.detach().numpy(), **TOL)
        np.testing.assert_allclose(got[2][:, :U], hn[0].detach().numpy(), **TOL)
        np.testing.assert_allclose(got[2][:, U:], hn[1].detach().numpy()[:, ::-1], **TOL)
        np.testing.assert_allclose(got[1][:, U:], cn[1].detach().numpy()[:, ::-1], **TOL)


def test_bidirectional_shared_parameters_get_both_directions_gradients():
    """One set of parameters: the to_torch module's gradient of each is the sum of torch's
    forward and reverse gradients (torch's bidirectional LSTM, reverse weights = forward)."""
    B, T, F_, U = 2, 4, 3, 2
    seq, _ = gd.bidirectional(gd.input("x", (None, T, F_)),
                              lambda x: gd.lstm(x, U, name="l", **Z))
    st = gd.build(seq)[0]()
    st.data["block_0.l"]["bias"] = _f(4 * U)
    mod = gd.to_torch(seq, st)
    assert [k for k, _ in mod.named_parameters()] == [
        "block_0.l.input_kernel", "block_0.l.hidden_kernel", "block_0.l.bias"]
    x = torch.tensor(_f(B, T, F_))
    w = torch.tensor(_f(B, T, 2 * U))
    (mod(x) * w).sum().backward()
    one = _torch_ref("lstm", {k: np.asarray(v) for k, v in st.data["block_0.l"].items()},
                     F_, U)
    ref = torch.nn.LSTM(F_, U, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, v in one.named_parameters():
            getattr(ref, name).copy_(v)
            getattr(ref, name + "_reverse").copy_(v)
    (ref(x)[0] * w).sum().backward()
    g = dict(mod.named_parameters())
    for ours, theirs in (("input_kernel", "weight_ih_l0"), ("hidden_kernel", "weight_hh_l0")):
        want = getattr(ref, theirs).grad + getattr(ref, theirs + "_reverse").grad
        np.testing.assert_allclose(g[f"block_0.l.{ours}"].grad.numpy(), want.numpy().T, **TOL)
    want = ref.bias_ih_l0.grad + ref.bias_ih_l0_reverse.grad
    np.testing.assert_allclose(g["block_0.l.bias"].grad.numpy(), want.numpy(), **TOL)


def test_bidirectional_holds_any_layers_and_exports_each_parameter_once():
    """forward_fun = dense then an unnamed lstm (Axon's block takes any layers): the two
    directions share both under the block's name; since the dense acts per step, the
    sequence is torch's bidirectional LSTM (reverse weights = forward) on dense(x), on
    every backend and ONNX Runtime, whose export holds each parameter once."""
    B, T, F_, H, U = 2, 5, 3, 4, 3
    seq, (c, h) = gd.bidirectional(gd.input("x", (None, T, F_)),
                                   lambda v: gd.lstm(gd.dense(v, H), U, **Z), name="bi")
    model = gd.container([seq, c, h])
    st = gd.build(model)[0]()
    assert {k: sorted(v) for k, v in st.data.items()} == {
        "bi.dense_0": ["bias", "kernel"], "bi.lstm_0": ["bias", "hidden_kernel", "input_kernel"]}
    st.data["bi.lstm_0"]["bias"] = _f(4 * U)
    st.data["bi.dense_0"]["bias"] = _f(H)
    d = {k: np.asarray(v) for k, v in st.data["bi.dense_0"].items()}
    one = _torch_ref("lstm", {k: np.asarray(v) for k, v in st.data["bi.lstm_0"].items()}, H, U)
    ref = torch.nn.LSTM(H, U, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, v in one.named_parameters():
            getattr(ref, name).copy_(v)
            getattr(ref, name + "_reverse").copy_(v)
    x = _f(B, T, F_)
    y, (hn, cn) = ref(torch.tensor(x @ d["kernel"] + d["bias"]))
    for backend in BACKENDS:
        got = _predict(model, st, {"x": x}, backend)
        np.testing.assert_allclose(got[0], y.detach().numpy(), **TOL)
        np.testing.assert_allclose(got[2][:, U:], hn[1].detach().numpy()[:, ::-1], **TOL)
        np.testing.assert_allclose(got[1][:, :U], cn[0].detach().numpy(), **TOL)
    inits = sorted(i.name for i in gd.to_onnx(model, st).graph.initializer
                   if "/const" not in i.name)  # the LSTM node's W, R, B: once
    assert inits == ["bi.dense_0.bias", "bi.dense_0.kernel", "bi.lstm_0.B", "bi.lstm_0.R",
                     "bi.lstm_0.W"]


def test_bidirectional_keeps_a_dict_and_a_single_layer():
    """forward_fun's structure comes back: a dict of layers, or one layer."""
    x = gd.input("x", (None, 4, 3))
    out = gd.bidirectional(x, lambda v: {"s": gd.gru(v, 2)[0], "d": gd.dense(v, 5)},
                           lambda a, b: a + b)
    assert set(out) == {"s", "d"} and out["s"].shape == (None, 4, 2)
    one = gd.bidirectional(x, lambda v: gd.dense(v, 5))
    st = gd.build(one)[0]()
    assert list(st.data) == ["block_0.dense_0"] and one.shape == (None, 4, 10)
    x0 = _f(2, 4, 3)
    p = st.data["block_0.dense_0"]
    want = x0 @ p["kernel"] + p["bias"]
    np.testing.assert_allclose(gd.predict(one, st, x0), np.concatenate([want, want], -1),
                               **TOL)


# -- ONNX -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, node", [("lstm", "LSTM"), ("gru", "GRU")])
def test_onnx_uses_lstm_and_gru_nodes(op, node):
    model = _rnn_model(op, state=True, unroll="static")
    st = gd.build(model)[0]()
    proto = gd.to_onnx(model, st)
    assert [n.op_type for n in proto.graph.node].count(node) == 1


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_onnx_masked_is_unrolled(op):
    """A mask has no ONNX LSTM/GRU form: the export unrolls the cell (any activation) over
    a known sequence length, and refuses an unknown one."""
    seq, _ = getattr(gd, op)(gd.input("x", (None, 4, 3)), 2, activation="gelu",
                             mask=gd.input("m", (None, 4), dtype="int64"), name="rnn", **Z)
    st = gd.build(seq)[0]()
    st.data["rnn"]["bias"] = _f(8)
    feed = {"x": _f(3, 4, 3), "m": np.array([[0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]])}
    np.testing.assert_allclose(export_and_run(seq, st, feed)[0][0],
                               gd.predict(seq, st, feed), **TOL)
    seq, _ = getattr(gd, op)(gd.input("x", (None, None, 3)), 2,
                             mask=gd.input("m", (None, None), dtype="int64"), **Z)
    with pytest.raises(GraphDSLError, match="known sequence length"):
        gd.to_onnx(seq, gd.build(seq)[0]())


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_zero_steps_are_refused_everywhere(op):
    """0 steps: a GraphDSLError on numpy/torch, a run error in ONNX Runtime (whose GRU
    would abort the process on them)."""
    seq, _ = getattr(gd, op)(gd.input("x", (None, None, 3)), 2, **Z)
    st = gd.build(seq)[0]()
    x = np.zeros((2, 0, 3), np.float32)
    for backend in ("numpy", "torch"):
        with pytest.raises(GraphDSLError, match="0 steps"):
            gd.predict(seq, st, x, backend=backend)
    with pytest.raises(Exception, match="out of data bounds"):
        export_and_run(seq, st, {"x": x})


def test_onnx_conv_lstm_needs_a_known_sequence_length():
    seq, _ = gd.conv_lstm(gd.input("x", (None, None, 2, 4, 4)), 2, **Z)
    with pytest.raises(GraphDSLError, match="known sequence length"):
        gd.to_onnx(seq, gd.build(seq)[0]())


def test_onnx_refuses_activations_it_lacks():
    seq, _ = gd.lstm(gd.input("x", (None, 4, 3)), 2, activation="gelu", **Z)
    with pytest.raises(GraphDSLError, match="gelu"):
        gd.to_onnx(seq, gd.build(seq)[0]())


# -- Axon's random initial state (rnn_state) ----------------------------------------------------
def _initial_states(seq):
    """The recurrent_state layers feeding the recurrent layer behind ``seq``."""
    rnn = seq.inputs[0]
    return [n for n in rnn.inputs[1:] if n.op == "recurrent_state"]


def _glorot_limit(shape):
    """Glorot's limit sqrt(6 / (fan_in + fan_out)) with Axon's fans (receptive field: every
    axis but the last two), on the state's own shape."""
    receptive = int(np.prod(shape[:-2]))
    return np.sqrt(6 / ((shape[-2] + shape[-1]) * receptive))


@pytest.mark.parametrize("op, shape", [("lstm", (None, 3, 2)), ("gru", (None, 3, 2)),
                                       ("conv_lstm", (None, 2, 3, 5, 4))])
def test_random_state_has_axons_shape_names_and_glorot_statistics(op, shape):
    """Axon's rnn_state: a recurrent_state layer per state, named {name}_{c|h}_initial_state,
    of Axon.Shape.rnn_hidden_state ([batch, units], conv_lstm [batch, 1, units, *spatial]),
    glorot_uniform drawn on that shape (limit sqrt(6/(fan_in+fan_out)) of it, variance
    limit^2/3); c and h differ; the same state array starts the recurrence (torch's LSTM
    from it gives the sequence)."""
    B, U = 60, 40
    seq, states = getattr(gd, op)(gd.input("x", shape), U, name="r", kernel_size=3) \
        if op == "conv_lstm" else getattr(gd, op)(gd.input("x", shape), U, name="r")
    init = _initial_states(seq)
    parts = ["c", "h"] if op != "gru" else ["h"]
    assert [n.name for n in init] == [f"r_{p}_initial_state" for p in parts]
    model = gd.container([seq, *states, *init])
    st = gd.build(model)[0]()
    assert st.data["r_h_initial_state"]["key"].dtype == np.uint64
    x = _f(B, *shape[1:])
    out = gd.predict(model, st, x)
    drawn = out[len(parts) + 1:]
    want = (B, U) if op != "conv_lstm" else (B, 1, U, *shape[3:])
    for v in drawn:
        lim = _glorot_limit(want)
        assert v.shape == want and v.dtype == np.float32
        assert np.abs(v).max() <= lim and np.abs(v).max() > 0.97 * lim
        assert abs(v.mean()) < 0.05 * lim and abs(v.var() / (lim**2 / 3) - 1) < 0.1
    if op != "gru":
        assert not np.allclose(drawn[0], drawn[1])
    if op == "lstm":  # torch from (h0, c0) = the drawn states
        ref = _torch_ref(op, {k: np.asarray(v) for k, v in st.data["r"].items()}, 2, U)
        h0, c0 = (torch.tensor(v)[None] for v in (drawn[1], drawn[0]))
        y = ref(torch.tensor(x), (h0, c0))[0].detach().numpy()
        np.testing.assert_allclose(out[0], y, **TOL)


def test_inference_repeats_train_mode_advances_the_key_numpy_equals_torch():
    """Inference draws the same state every call, on NumPy, functional torch and a to_torch
    module alike; train mode returns the advanced key (Axon's StatefulOutput), whose next
    draw differs, equal on NumPy, torch and the module's key buffer."""
    seq, _ = gd.gru(gd.input("x", (None, 4, 3)), 5, name="g")
    (h0,) = _initial_states(seq)
    model = gd.container([seq, h0])
    st = gd.build(model)[0]()
    x = _f(2, 4, 3)
    ref = gd.predict(model, st, x)
    def same(got, want):  # the state exactly, the sequence to float rounding
        np.testing.assert_array_equal(np.asarray(got[1]), want[1])
        np.testing.assert_allclose(np.asarray(got[0]), want[0], **TOL)

    for backend in ("numpy", "torch"):
        for _ in range(2):
            same(gd.predict(model, st, x, backend=backend), ref)
    mod = gd.to_torch(model, st).eval()
    with torch.no_grad():
        same([t.numpy() for t in mod(torch.tensor(x))], ref)
    steps = {b: gd.build(model, backend=b, mode="train")[1] for b in ("numpy", "torch")}
    s1 = {b: step(st, x) for b, step in steps.items()}
    key0 = st.data["g_h_initial_state"]["key"]
    key1 = s1["numpy"]["state"].data["g_h_initial_state"]["key"]
    assert key1 != key0 and s1["torch"]["state"] == s1["numpy"]["state"]
    np.testing.assert_array_equal(np.asarray(s1["numpy"]["prediction"][1]), ref[1])
    nxt = gd.predict(model, s1["numpy"]["state"], x)
    assert np.abs(nxt[1] - ref[1]).min() > 0 and not np.allclose(nxt[0], ref[0])
    mod.train()
    with torch.no_grad():
        first, second = mod(torch.tensor(x)), mod(torch.tensor(x))
    same([t.numpy() for t in first], ref)
    same([t.numpy() for t in second], nxt)
    s2 = steps["numpy"](s1["numpy"]["state"], x)["state"]
    assert gd.from_torch(mod) == s2


def test_seed_fixes_the_key_and_the_build_seed_does_not():
    """seed= (Axon's option) alone decides the state: equal across build seeds, a new seed
    gives new values; without it the build seed does; an empty batch gives [0, units]."""
    def draw(seed, build_seed, batch=3):
        seq, _ = gd.lstm(gd.input("x", (None, 2, 3)), 4, name="l", seed=seed)
        model = gd.container(_initial_states(seq))
        st = gd.build(model, seed=build_seed)[0]()
        return gd.predict(model, st, _f(batch, 2, 3))

    a, b = draw(7, 0), draw(7, 1)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(draw(8, 0)[0], a[0])
    assert not np.allclose(draw(None, 0)[0], draw(None, 1)[0])
    assert draw(7, 0, batch=0)[1].shape == (0, 4)


def test_onnx_refuses_a_random_initial_state():
    seq, _ = gd.lstm(gd.input("x", (None, 4, 3)), 2, name="l")
    with pytest.raises(GraphDSLError, match="hidden_state.*recurrent_initializer='zeros'") as e:
        gd.to_onnx(seq, gd.build(seq)[0]())
    assert "l_c_initial_state" in str(e.value) and "test_rnn_axon.py" in str(e.value)


# -- construction errors ------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: gd.lstm(gd.input("x", (None, 4)), 2), "rank 3"),
    (lambda: gd.gru(gd.input("x", (None, 4, 3)), 2, (gd.input("h", (None, 3)),)), "state"),
    (lambda: gd.lstm(gd.input("x", (None, 4, 3)), 2, (gd.input("h", (None, 2)),)), "tuple"),
    (lambda: gd.lstm(gd.input("x", (None, 4, 3)), 2, unroll="eager"), "unroll"),
    (lambda: gd.gru(gd.input("x", (None, 4, 3)), 2, recurrent_initializer="orthogonal"),
     "unknown recurrent_initializer"),
    (lambda: gd.gru(gd.input("x", (None, 4, 3)), 2, seed=1.5), "seed must be an integer"),
    (lambda: gd.lstm(gd.input("x", (None, 4, 3)), 2, gate="nope"), "unknown activation"),
    (lambda: gd.lstm(gd.input("x", (None, 4, 3)), 2, mask=gd.input("m", (None, 4, 1))),
     "mask"),
    (lambda: gd.gru(gd.input("x", (None, 4, 3)), 2, mask=gd.input("m", (None, 5))), "mask"),
    (lambda: gd.conv_lstm(gd.input("x", (None, 4, 3, 6, 6)), 2, kernel_size=3, strides=2),
     "spatial sizes"),
    (lambda: gd.conv_lstm(gd.input("x", (None, 4, 3)), 2), "channels"),
    (lambda: gd.conv_lstm(gd.input("x", (None, 4, 3, 6)), 2, mask=gd.input("m", (None, 4))),
     "no mask"),
])
def test_mistakes_are_graphdsl_errors(make, match):
    with pytest.raises(GraphDSLError, match=match) as e:
        make()
    assert "test_rnn_axon.py" in str(e.value)


@pytest.mark.parametrize("extra", [{"seed": 3}, {"recurrent_initializer": "zeros"}])
def test_an_initial_state_option_beside_hidden_state_is_refused(extra):
    # Axon's lstm/4 and gru/4 (with a hidden state) do not take these options
    x = gd.input("x", (None, 4, 3))
    h = gd.input("h", (None, 2))
    with pytest.raises(gd.GraphDSLError, match="hidden_state") as e:
        gd.gru(x, 2, (h,), name="g", **extra)
    assert "test_rnn_axon.py" in str(e.value)


def test_models_with_rnns_deepcopy_and_pickle():
    import copy
    import pickle
    x = gd.input("x", (None, 4, 3))
    seq, (c, h) = gd.lstm(x, 2, name="l")
    model = gd.container([gd.gru(seq, 2, name="g")[0], c, h])
    st = gd.build(model)[0]()
    feed = _f(2, 4, 3)
    want = gd.predict(model, st, feed)
    for m in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for a, b in zip(gd.predict(m, st, feed), want):
            np.testing.assert_array_equal(a, b)
