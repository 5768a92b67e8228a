"""The transformer ops (attention, rms_norm, rotary_embedding, slice/split, positions,
tied_dense) against transformers' own functions and hand-written NumPy, on both backends,
in float32 and float64; their construction-time errors; torch.compile and gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphdsl as gd
from graphdsl.errors import OptionError, ShapeError

torch = pytest.importorskip("torch")
ml = pytest.importorskip("transformers.models.llama.modeling_llama")
from transformers import LlamaConfig  # noqa: E402
from transformers.masking_utils import sliding_window_causal_mask_function  # noqa: E402

BACKENDS = ["numpy", "torch"]
HERE = __file__


def run(model, data, inputs, backend="numpy", dtype="float32"):
    init, pred = gd.build(model, backend=backend, dtype=dtype)
    st = init(None, gd.ModelState(data or {}))
    out = pred(st, inputs)
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- attention ------------------------------------------------------------------------------
def _hf_attention(q, k, v, keep, scale):
    """transformers' eager attention (repeat_kv, additive finfo.min mask, float32 softmax)
    -> [b, heads, n, d]."""
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    add = None
    if keep is not None:
        add = torch.where(torch.as_tensor(keep), 0.0, torch.finfo(q.dtype).min).to(q.dtype)
    mod = type("M", (), {"num_key_value_groups": q.shape[1] // k.shape[1],
                         "training": False})()
    out, _ = ml.eager_attention_forward(mod, q, k, v, add, scaling=scale)
    return out.transpose(1, 2).numpy()


def _attn_model(h, kv, d, masked, **kw):
    q = gd.input("q", (None, h, None, d))
    k = gd.input("k", (None, kv, None, d))
    v = gd.input("v", (None, kv, None, d))
    mask = None
    if masked:
        am = gd.input("attention_mask", (None, None), dtype="int64")
        mask = gd.reshape(am, (None, 1, 1, -1))
    return gd.attention(q, k, v, mask=mask, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,kv", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_transformers_eager(backend, h, kv, causal, rng):
    b, n, d = 3, 6, 8
    q, k, v = _f(rng, b, h, n, d), _f(rng, b, kv, n, d), _f(rng, b, kv, n, d)
    am = np.ones((b, n), np.int64)
    am[1, :2] = 0  # left padding
    am[2, 4:] = 0  # right padding
    keep = am[:, None, None, :].astype(bool)
    if causal:
        keep = keep & np.tril(np.ones((n, n), bool))
    model = _attn_model(h, kv, d, True, causal=causal)
    out = run(model, None, {"q": q, "k": k, "v": v, "attention_mask": am}, backend)
    assert out.shape == (b, h, n, d) and out.dtype == np.float32
    np.testing.assert_allclose(out, _hf_attention(q, k, v, keep, d ** -0.5), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_gqa_head_mapping(backend, rng):
    """Query head i uses k/v head i // (heads // kv_heads) (transformers' repeat_kv)."""
    b, h, kv, n, d = 2, 6, 3, 4, 4
    q, k, v = _f(rng, b, h, n, d), _f(rng, b, kv, n, d), _f(rng, b, kv, n, d)
    out = run(_attn_model(h, kv, d, False), None, {"q": q, "k": k, "v": v}, backend)
    rep = ml.repeat_kv(torch.from_numpy(k), h // kv).numpy()
    rev = ml.repeat_kv(torch.from_numpy(v), h // kv).numpy()
    for i in range(h):
        np.testing.assert_array_equal(rep[:, i], k[:, i // (h // kv)])
        s = q[:, i] @ k[:, i // 2].transpose(0, 2, 1) / math.sqrt(d)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[:, i], w @ rev[:, i], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,window", [(5, 5, 2), (4, 7, 3), (1, 9, 4), (6, 6, 10)])
def test_sliding_window_matches_transformers_mask(backend, n, m, window, rng):
    """causal + window, with q_len < k_len (a cache): transformers' mask function at
    q_idx = i + m - n, kv_idx = j."""
    b, h, d = 2, 2, 4
    q, k, v = _f(rng, b, h, n, d), _f(rng, b, h, m, d), _f(rng, b, h, m, d)
    i = torch.arange(n)[:, None] + (m - n)
    keep = sliding_window_causal_mask_function(window)(0, 0, i, torch.arange(m)[None])
    out = run(_attn_model(h, h, d, False, causal=True, window=window), None,
              {"q": q, "k": k, "v": v}, backend)
    np.testing.assert_allclose(out, _hf_attention(q, k, v, keep.numpy(), d ** -0.5),
                               atol=1e-5)
    if n == m and window < n:  # the window really cuts something
        full = run(_attn_model(h, h, d, False, causal=True), None, {"q": q, "k": k, "v": v},
                   backend)
        assert not np.allclose(out, full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_float64_scale_and_full_mask(backend, rng):
    b, h, n, m, d = 2, 2, 3, 4, 4
    q, k, v = (rng.standard_normal(s) for s in ((b, h, n, d), (b, h, m, d), (b, h, m, d)))
    mask = np.ones((b, 1, n, m))
    mask[0, 0, 1] = 0  # query 1 of batch 0 may see nothing: uniform weights, not NaN
    mq = gd.input("q", (None, h, n, d))
    mk, mv = gd.input("k", (None, h, m, d)), gd.input("v", (None, h, m, d))
    model = gd.attention(mq, mk, mv, mask=gd.input("mask", (None, 1, n, m)), scale=0.3)
    out = run(model, None, {"q": q, "k": k, "v": v, "mask": mask}, backend, "float64")
    assert out.dtype == np.float64
    s = np.where(mask > 0, q @ k.transpose(0, 1, 3, 2) * 0.3, np.finfo(np.float64).min)
    w = np.exp(s - s.max(-1, keepdims=True))
    ref = (w / w.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[0, :, 1], v[0].mean(1), rtol=1e-12)


def _probs_model(rate):
    """Attention (4 heads on 2 k/v heads) with v the identity [m, m]: its output [b, h, n, m]
    is the attention probabilities themselves."""
    q, k, v = gd.input("q", (2, 4, 16, 16)), gd.input("k", (2, 2, 16, 16)), gd.input(
        "v", (2, 2, 16, 16))
    return gd.attention(q, k, v, dropout=rate, name="att")


def _probs_feed(rng):
    return {"q": _f(rng, 2, 4, 16, 16), "k": _f(rng, 2, 2, 16, 16),
            "v": np.broadcast_to(np.eye(16, dtype=np.float32), (2, 2, 16, 16)).copy()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", [0.9, 0.3])
def test_attention_dropout_on_the_probabilities_in_train_mode(backend, rate, rng):
    """In train mode a fraction ``rate`` of the probabilities is 0 and the rest are eval's
    divided by (1 - rate), the mask drawn from the layer's key (same state, same mask; the
    returned key, a new one); inference ignores it."""
    model, feed = _probs_model(rate), _probs_feed(rng)
    init, infer = gd.build(model, backend=backend)
    st = init()
    ev = np.asarray(infer(st, feed))
    np.testing.assert_allclose(ev, run(_probs_model(0.0), None, feed), rtol=1e-6, atol=1e-7)
    train = gd.build(model, backend=backend, mode="train")[1]
    one = train(st, feed)
    y = np.asarray(one["prediction"])
    kept = y != 0
    assert abs(1 - kept.mean() - rate) < 0.05
    np.testing.assert_allclose(y[kept], ev[kept] / (1 - rate), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(train(st, feed)["prediction"]), y)
    assert int(one["state"].data["att"]["key"]) != int(st.data["att"]["key"])
    assert (np.asarray(train(one["state"], feed)["prediction"]) != y).any()


@pytest.mark.parametrize("rate", [0.9, 0.3])
def test_attention_dropout_in_a_torch_module_is_transformers_eager(rate, rng):
    """to_torch(...).train() drops the probabilities with torch's RNG as transformers'
    eager_attention_forward(dropout=rate) in training: one seed, the same output."""
    model, feed = _probs_model(rate), _probs_feed(rng)
    module = gd.to_torch(model, gd.build(model)[0]()).train()
    q, k, v = (torch.from_numpy(feed[n]) for n in "qkv")
    mod = type("M", (), {"num_key_value_groups": 2, "training": True})()
    torch.manual_seed(3)
    ref, _ = ml.eager_attention_forward(mod, q, k, v, None, scaling=0.25, dropout=rate)
    torch.manual_seed(3)
    got = module(q=q, k=k, v=v)
    np.testing.assert_allclose(got.detach().numpy(), ref.transpose(1, 2).numpy(),
                               rtol=1e-6, atol=1e-7)
    assert abs(float((got == 0).float().mean()) - rate) < 0.05
    with torch.no_grad():
        np.testing.assert_allclose(module.eval()(q=q, k=k, v=v).numpy(),
                                   run(_probs_model(0.0), None, feed), rtol=1e-5, atol=1e-6)


def test_attention_dropout_zero_adds_nothing_and_bad_rates_are_refused():
    q = gd.input("q", (1, 2, 3, 4))
    plain = gd.attention(q, q, q)
    assert "dropout" not in plain.attrs and not plain.params
    assert "dropout" not in gd.to_json(plain)
    back = gd.from_json(gd.to_json(gd.attention(q, q, q, dropout=0.25, name="a")))
    assert back.attrs["dropout"] == 0.25 and [p.name for p in back.params] == ["key"]
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(OptionError, match=r"dropout must be a number in \[0.0, 1.0\)"):
            gd.attention(q, q, q, dropout=bad)


def test_attention_shape_errors():
    def nodes(qs, ks, vs):
        return gd.input("q", qs), gd.input("k", ks), gd.input("v", vs)

    bad = [
        ((None, 4, 5), (None, 4, 5, 8), (None, 4, 5, 8), "rank-4"),
        ((None, 4, 5, 8), (None, 4, 5, 6), (None, 4, 5, 6), "head_dim"),
        ((None, 6, 5, 8), (None, 4, 5, 8), (None, 4, 5, 8), "multiple"),
        ((None, 4, 5, 8), (None, 4, 5, 8), (None, 4, 7, 8), "k and v"),
        ((2, 4, 5, 8), (3, 4, 5, 8), (3, 4, 5, 8), "batch"),
    ]
    for qs, ks, vs, what in bad:
        with pytest.raises(ShapeError, match=what) as e:
            gd.attention(*nodes(qs, ks, vs), name="attn")
        msg = str(e.value)
        assert "'attn'" in msg and "(op attention)" in msg and f"{HERE}:" in msg
        assert "shapes:" in msg and "fix:" in msg
    q, k, v = nodes((None, 4, 5, 8), (None, 2, 7, 8), (None, 2, 7, 8))
    for ms in [(None, 1, 1, 6), (None, 3, 5, 7), (2, 1, 1, 1, 7), (None, 1, 2, 7)]:
        with pytest.raises(ShapeError, match="mask"):
            gd.attention(q, k, v, mask=gd.input("m", ms), name="attn")
    for ms in [(None, 1, 1, 7), (None, 4, 5, 7), (5, 7), (7,), (None, 1, 5, None)]:
        assert gd.attention(q, k, v, mask=gd.input("m", ms)).shape == (None, 4, 5, 8)
    with pytest.raises(OptionError, match="causal"):
        gd.attention(q, k, v, window=4)
    with pytest.raises(OptionError, match="window"):
        gd.attention(q, k, v, causal=True, window=0)
    with pytest.raises(OptionError, match="scale"):
        gd.attention(q, k, v, scale=-1.0)
    with pytest.raises(OptionError, match="float"):
        gd.attention(gd.input("ids", (None, 4, 5, 8), dtype="int64"), k, v)
    # a mask that broadcasts symbolically but not at run time: caught before any kernel
    model = gd.attention(q, k, v, mask=gd.input("m", (None, 1, 1, None)))
    init, pred = gd.build(model)
    st = init()
    args = {"q": np.zeros((2, 4, 5, 8), np.float32), "k": np.zeros((2, 2, 7, 8), np.float32),
            "v": np.zeros((2, 2, 7, 8), np.float32), "m": np.ones((2, 1, 1, 6))}
    with pytest.raises(ShapeError, match="mask"):
        pred(st, args)


# -- rms_norm ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_matches_llama(backend, rng):
    x = _f(rng, 2, 5, 16) * 3 + 1
    g = _f(rng, 16)
    hf = ml.LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(g))
        ref = hf(torch.from_numpy(x)).numpy()
    model = gd.rms_norm(gd.input("x", (None, None, 16)), epsilon=1e-5, name="norm")
    out = run(model, {"norm": {"gamma": g}}, x, backend)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_axis_float64_and_init(backend, rng):
    x = rng.standard_normal((3, 4, 5))
    g = rng.standard_normal(4)
    model = gd.rms_norm(gd.input("x", (None, 4, 5)), axis=1, name="n")
    out = run(model, {"n": {"gamma": g}}, x, backend, "float64")
    ref = g[None, :, None] * x / np.sqrt((x ** 2).mean(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    st = gd.build(model)[0]()
    np.testing.assert_array_equal(st.data["n"]["gamma"], np.ones(4, np.float32))
    with pytest.raises(ShapeError, match="known size"):
        gd.rms_norm(gd.input("y", (None, None)), name="n")
    with pytest.raises(ShapeError, match="out of range"):
        gd.rms_norm(gd.input("y", (None, 4)), axis=2)


# -- rotary_embedding ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rotary_matches_llama(backend, theta, rng):
    b, h, s, d = 2, 3, 7, 16
    x = _f(rng, b, h, s, d)
    pos = np.stack([np.arange(s), np.arange(s) + 11]).astype(np.int64)  # 2nd: an offset
    cfg = LlamaConfig(hidden_size=h * d, num_attention_heads=h, rope_theta=theta)
    rope = ml.LlamaRotaryEmbedding(cfg)
    tx = torch.from_numpy(x)
    cos, sin = rope(tx, torch.from_numpy(pos))
    ref = ml.apply_rotary_pos_emb(tx, tx, cos, sin)[0].numpy()
    model = gd.rotary_embedding(gd.input("x", (None, h, None, d)),
                                gd.input("pos", (None, None), dtype="int64"), theta=theta)
    out = run(model, None, {"x": x, "pos": pos}, backend)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotary_float64_hand_written_and_broadcast_positions(backend, rng):
    b, h, s, d = 2, 2, 5, 8
    x = rng.standard_normal((b, h, s, d))
    pos = np.arange(3, 3 + s)[None]  # [1, seq], as transformers' default position_ids
    model = gd.rotary_embedding(gd.input("x", (None, h, s, d)),
                                gd.input("pos", (1, s), dtype="int64"), theta=100.0)
    out = run(model, None, {"x": x, "pos": pos}, backend, "float64")
    inv = (1.0 / 100.0 ** (np.arange(0, d, 2, dtype=np.float32) / d)).astype(np.float32)
    ang = pos[..., None].astype(np.float32) * inv  # cos/sin in float32, as transformers
    c, sn = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = np.concatenate([-x2, x1], -1)
    ref = x * c[:, None].astype(np.float64) + rot * sn[:, None].astype(np.float64)
    # float32 cos/sin: NumPy's and torch's libm may differ in the last float32 bit
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotary_tables_reused_by_value_never_stale(backend, rng):
    """A step's rotary layers share one cos/sin table (made once per positions), but the
    positions are compared by value: an input array edited in place between two calls, or
    new positions, give the rotation of the positions passed, as a fresh model's."""
    from graphdsl.backends import shared

    h, d = 2, 8
    x = _f(rng, 1, h, 1, d)
    pos = np.array([[5]], np.int64)
    xin = gd.input("x", (None, h, None, d))
    pin = gd.input("pos", (None, None), dtype="int64")
    model = gd.add(gd.rotary_embedding(xin, pin), gd.rotary_embedding(xin, pin))
    init, pred = gd.build(model, backend=backend)
    st = init(None, gd.ModelState({}))

    def ref(p):
        inv = 1.0 / (10000.0 ** (np.arange(0, d, 2, dtype=np.float32) / d))
        ang = np.concatenate([p[..., None] * inv] * 2, -1).astype(np.float32)[:, None]
        rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
        return 2 * (x * np.cos(ang) + rot * np.sin(ang))

    def out(p):
        y = pred(st, {"x": x, "pos": p})
        return y.detach().numpy() if isinstance(y, torch.Tensor) else y

    shared._ROTARY.clear()
    np.testing.assert_allclose(out(pos), ref(pos), rtol=1e-5, atol=1e-5)
    assert len(shared._ROTARY) == 1  # both layers used one table
    first = next(iter(shared._ROTARY.values()))
    pos[0, 0] = 9  # the same array, edited in place
    np.testing.assert_allclose(out(pos), ref(pos), rtol=1e-5, atol=1e-5)
    assert next(iter(shared._ROTARY.values()))[1] is not first[1]
    np.testing.assert_allclose(out(np.array([[5]])), ref(np.array([[5]])), rtol=1e-5,
                               atol=1e-5)


def test_rotary_table_of_inference_mode_not_used_for_training(rng):
    """A table made under torch.inference_mode (generation) is kept apart from one made
    for autograd: torch refuses to save an inference tensor for backward."""
    h, d = 2, 8
    model = gd.rotary_embedding(gd.input("x", (None, h, None, d)),
                                gd.input("pos", (None, None), dtype="int64"))
    module = gd.to_torch(model, gd.build(model)[0]({"x": np.zeros((1, h, 1, d), np.float32),
                                                    "pos": np.zeros((1, 1), np.int64)}))
    x = torch.from_numpy(_f(rng, 1, h, 1, d))
    pos = torch.tensor([[3]])
    with torch.inference_mode():
        module(x, pos)
    xg = x.clone().requires_grad_(True)
    module(xg, pos).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_rotary_errors():
    pos = gd.input("pos", (None, None), dtype="int64")
    with pytest.raises(ShapeError, match="even"):
        gd.rotary_embedding(gd.input("x", (None, 2, None, 7)), pos, name="rope")
    with pytest.raises(ShapeError, match=r"\[batch, heads, seq, head_dim\]"):
        gd.rotary_embedding(gd.input("x", (None, 5, 8)), pos)
    with pytest.raises(ShapeError, match="sequence"):
        gd.rotary_embedding(gd.input("x", (None, 2, 5, 8)), gd.input("p", (None, 4),
                                                                      dtype="int64"))
    with pytest.raises(ShapeError, match="batch"):
        gd.rotary_embedding(gd.input("x", (2, 2, 5, 8)), gd.input("p", (3, 5), dtype="int64"))
    with pytest.raises(OptionError, match="integer positions"):
        gd.rotary_embedding(gd.input("x", (None, 2, 5, 8)), gd.input("p", (None, 5)))
    with pytest.raises(OptionError, match="theta"):
        gd.rotary_embedding(gd.input("x", (None, 2, 5, 8)), pos, theta=0)


# -- slice / split ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_split_and_slice_values(backend, rng):
    x = _f(rng, 2, 3, 12)
    inp = gd.input("x", (None, 3, 12))
    a, b, c = gd.split(inp, 3, name="qkv")
    assert [n.name for n in (a, b, c)] == ["qkv_0", "qkv_1", "qkv_2"]
    assert a.shape == (None, 3, 4)
    parts = gd.split(inp, [6, 2, 4])
    first = gd.split(inp, 3, axis=1)
    model = gd.container([a, b, c, *parts, *first, gd.slice(inp, -5, -1),
                          gd.slice(inp, 1, None, axis=1)])
    out = run(model, None, x, backend)
    refs = [x[..., :4], x[..., 4:8], x[..., 8:], x[..., :6], x[..., 6:8], x[..., 8:],
            x[:, :1], x[:, 1:2], x[:, 2:], x[..., -5:-1], x[:, 1:]]
    assert len(out) == len(refs)
    for o, r in zip(out, refs):
        o = o.detach().numpy() if isinstance(o, torch.Tensor) else o
        np.testing.assert_array_equal(o, r)
    ints = gd.split(gd.input("i", (None, 4), dtype="int64"), 2)
    assert [p.dtype for p in ints] == ["int64", "int64"]


def test_split_and_slice_errors():
    x = gd.input("x", (None, None, 12))
    with pytest.raises(OptionError, match="5 equal parts") as e:
        gd.split(x, 5, name="s")
    assert f"{HERE}:" in str(e.value) and "'s'" in str(e.value)
    with pytest.raises(OptionError, match="sum to 10"):
        gd.split(x, [4, 6, 0][:2])
    with pytest.raises(OptionError, match="positive sizes"):
        gd.split(x, [4, 0, 8])
    with pytest.raises(OptionError, match="positive sizes"):
        gd.split(x, "3")
    with pytest.raises(ShapeError, match="known size"):
        gd.split(x, 2, axis=1)
    with pytest.raises(ShapeError, match="out of range"):
        gd.split(x, 2, axis=3)
    with pytest.raises(gd.GraphDSLError, match="invalid layer name"):
        gd.split(x, 2, name="bad name")
    with pytest.raises(gd.GraphDSLError, match="not a graph node"):
        gd.split(np.zeros(3), 2)
    with pytest.raises(OptionError, match="out of bounds"):
        gd.slice(x, 0, 13)
    with pytest.raises(OptionError, match="empty"):
        gd.slice(x, 5, 5)
    with pytest.raises(OptionError, match="start"):
        gd.slice(x, 1.5, 3)
    assert gd.slice(x, 2, 5, axis=1).shape == (None, 3, 12)
    assert gd.slice(x, 2, None, axis=1).shape == (None, None, 12)


# -- positions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_positions(backend):
    ids = gd.input("input_ids", (None, None), dtype="int64")
    model = gd.container([gd.positions(ids), gd.positions(ids, offset=5),
                          gd.positions(gd.input("h", (None, None, 4)), axis=1)])
    init, pred = gd.build(model, backend=backend)
    st = init()
    out = pred(st, {"input_ids": np.zeros((3, 6), np.int64), "h": np.zeros((2, 4, 4))})
    out = [o.numpy() if isinstance(o, torch.Tensor) else o for o in out]
    np.testing.assert_array_equal(out[0], np.tile(np.arange(6), (3, 1)))
    np.testing.assert_array_equal(out[1], np.tile(np.arange(5, 11), (3, 1)))
    np.testing.assert_array_equal(out[2], np.tile(np.arange(4), (2, 1)))
    assert all(o.dtype == np.int64 for o in out)
    assert gd.positions(ids).dtype == "int64" and gd.positions(ids).shape == (None, None)
    assert gd.positions(ids, axis=0).shape == (None,)
    with pytest.raises(OptionError, match="offset"):
        gd.positions(ids, offset=-1)
    with pytest.raises(ShapeError, match="out of range"):
        gd.positions(ids, axis=2)


# -- tied_dense -----------------------------------------------------------------------------------
def _tied(use_bias=False):
    ids = gd.input("input_ids", (None, None), dtype="int64")
    emb = gd.embedding(ids, 11, 6, name="model.embed_tokens")
    h = gd.rms_norm(gd.dense(emb, 6, name="mix"), name="norm")
    return gd.tied_dense(h, emb, use_bias=use_bias, name="lm_head")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_dense_shares_the_embedding_kernel(backend, rng):
    model = _tied(use_bias=True)
    assert model.shape == (None, None, 11)
    init, pred = gd.build(model, backend=backend)
    st = init()
    assert sorted(st.data) == ["lm_head", "mix", "model.embed_tokens", "norm"]
    assert list(st.data["lm_head"]) == ["bias"]  # the kernel lives once, in the embedding
    E = _f(rng, 11, 6)
    bias = _f(rng, 11)
    st.data["model.embed_tokens"]["kernel"] = E
    st.data["lm_head"]["bias"] = bias
    st.data["mix"]["kernel"] = np.eye(6, dtype=np.float32)
    ids = rng.integers(0, 11, (2, 5))
    out = pred(st, ids)
    out = out.detach().numpy() if isinstance(out, torch.Tensor) else out
    h = E[ids]
    h = h / np.sqrt((h ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, h @ E.T + bias, rtol=1e-5, atol=1e-5)
    # one parameter everywhere: counted once, one tensor in the torch module
    n_params = 11 * 6 + 6 * 6 + 6 + 6 + 11
    assert st.parameter_count() == n_params
    table = gd.display.as_table(model, state=st)
    assert f"Total parameters: {n_params:,} " in " ".join(table.split()), table
    m = gd.to_torch(model, st)
    assert sum(p.numel() for p in m.parameters()) == n_params
    assert "lm_head.kernel" not in m.state_dict()


def test_tied_dense_errors():
    x = gd.input("x", (None, 6))
    ids = gd.input("ids", (None,), dtype="int64")
    with pytest.raises(OptionError, match="without a name"):
        gd.tied_dense(x, gd.embedding(ids, 5, 6), name="head")
    with pytest.raises(OptionError, match="dense layer"):
        gd.tied_dense(x, gd.dense(x, 6, name="d"))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 4\)"):
        gd.tied_dense(x, gd.embedding(ids, 5, 4, name="emb"))


# -- torch.compile and gradients through every new op ------------------------------------------
def _block():
    ids = gd.input("input_ids", (None, 8), dtype="int64")
    am = gd.input("attention_mask", (None, 8), dtype="int64")
    emb = gd.embedding(ids, 13, 16, kernel_initializer="normal", name="embed")
    x = gd.rms_norm(emb, name="ln")
    qkv = gd.dense(x, 32, name="qkv")
    q, k, v = gd.split(qkv, [16, 8, 8], name="parts")
    heads = [gd.transpose(gd.reshape(t, (None, 8, n, 4)), (0, 2, 1, 3))
             for t, n in ((q, 4), (k, 2), (v, 2))]
    pos = gd.positions(ids)
    q, k = (gd.rotary_embedding(t, pos, theta=500.0) for t in heads[:2])
    a = gd.attention(q, k, heads[2], mask=gd.reshape(am, (None, 1, 1, -1)), causal=True,
                     window=5)
    o = gd.reshape(gd.transpose(a, (0, 2, 1, 3)), (None, 8, 16))
    return gd.tied_dense(gd.add(emb, o), emb, name="head")


def test_block_torch_compile_fullgraph_and_gradients(rng):
    model = _block()
    st = gd.build(model)[0]()
    st.data["ln"]["gamma"] = _f(rng, 16)
    ids = rng.integers(0, 13, (2, 8))
    am = np.ones((2, 8), np.int64)
    am[0, :3] = 0
    ref = gd.predict(model, st, {"input_ids": ids, "attention_mask": am})
    m = gd.to_torch(model, st).eval()
    args = (torch.from_numpy(ids), torch.from_numpy(am))
    eager = m(*args)
    np.testing.assert_allclose(eager.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    eager.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    m.zero_grad()
    torch._dynamo.reset()
    y = torch.compile(m, fullgraph=True)(*args)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[k].numpy(), rtol=1e-4, atol=1e-5)
    m64 = gd.to_torch(model, st, dtype=torch.float64)
    ref64 = gd.predict(model, st, {"input_ids": ids, "attention_mask": am}, dtype="float64")
    assert ref64.dtype == np.float64
    # float64 up to the rotary embedding's float32 cos/sin (as transformers computes them)
    np.testing.assert_allclose(m64(*args).detach().numpy(), ref64, rtol=1e-6, atol=1e-6)


def test_block_views_and_json_round_trip(rng):
    """as_table, Mermaid, DOT and networkx show every new op; JSON brings back the block."""
    model = _block()
    table = gd.display.as_table(model, {"input_ids": (2, 8), "attention_mask": (2, 8)})
    for op in ("attention", "rms_norm", "rotary_embedding", "slice", "positions",
               "tied_dense"):
        assert f"( {op} )" in table, op
    assert "embed.kernel" in table  # the head's borrowed kernel, counted once
    n = 13 * 16 + 16 + 16 * 32 + 32
    assert f"Total parameters: {n:,} " in " ".join(table.split())
    assert "parts_1" in gd.display.as_graph(model) and "head" in gd.display.to_dot(model)
    assert gd.to_networkx(model).number_of_nodes() == len(gd.topo_order(model))
    back = gd.from_json(gd.to_json(model))
    st = gd.build(model)[0]()
    args = {"input_ids": rng.integers(0, 13, (2, 8)), "attention_mask": np.ones((2, 8), np.int64)}
    np.testing.assert_array_equal(gd.predict(back, st, args), gd.predict(model, st, args))
