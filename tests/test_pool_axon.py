"""The pools of issue 22 against Axon and torch: lp_pool, global_lp_pool, the adaptive
pools and ``dilations`` on max/avg/lp_pool.

References: Axon's documented examples (lib/axon/layers.ex), its compiler tests
(test/axon/compiler_test.exs: default and custom options on 1 to 3 spatial axes, no
params) and layers tests (channels last = channels first, with dilations), each checked
against :func:`nx_window`, Nx's window_max / window_mean / window_sum written out one
window at a time in float64; and torch's ``F.lp_pool*d``, ``F.max_pool*d(dilation=)``
and ``F.adaptive_*_pool*d`` (equal to Axon's adaptive windows only where the output size
divides the input's). Every model runs on NumPy, torch, the to_torch module and ONNX
Runtime; the op-case rows (tests/op_cases.py) add JSON, files and the empty batch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import export_and_run

import graphdsl as gd
from graphdsl import GraphDSLError

R = np.random.default_rng(22)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def nx_window(x: np.ndarray, op: str, kernel, strides, pads, dilations=None,
              norm: float = 2.0) -> np.ndarray:
    """Axon.Layers' max / avg / lp pool of channels-last ``x`` by definition: padding
    ``-inf`` (max) or 0, ``kernel`` taps ``dilations`` apart, the max, the mean over the
    taps, or ``(sum x**norm) ** (1/norm)`` of each window."""
    n = x.ndim - 2
    dilations = dilations or [1] * n
    xs = x.astype(np.float64) ** (norm if op == "lp" else 1)
    xp = np.pad(xs, [(0, 0), *pads, (0, 0)], constant_values=-np.inf if op == "max" else 0)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = [(xp.shape[1 + i] - spans[i]) // strides[i] + 1 for i in range(n)]
    y = np.empty((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        idx = tuple(slice(o[i] * strides[i], o[i] * strides[i] + spans[i], dilations[i])
                    for i in range(n))
        win = xp[(slice(None), *idx, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
        y[(slice(None), *o, slice(None))] = (win.max(1) if op == "max" else win.mean(1)
                                             if op == "avg" else win.sum(1) ** (1 / norm))
    return y


def same_pads(kernel, dilations=None):
    """Nx's "same" (``Nx.Shape.to_padding_config`` on the dilated window)."""
    dilations = dilations or [1] * len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    return [((s - 1) // 2, s - 1 - (s - 1) // 2) for s in spans]


def axon_adaptive(x: np.ndarray, op: str, out, norm: float = 2.0) -> np.ndarray:
    """Axon.Shape's adaptive window (strides ``n // o``, size ``n - (o-1) * strides``)."""
    sizes = x.shape[1:-1]
    strides = [n // o for n, o in zip(sizes, out)]
    kernel = [n - (o - 1) * s for n, o, s in zip(sizes, out, strides)]
    return nx_window(x, op, kernel, strides, [(0, 0)] * len(sizes), norm=norm)


def outputs(model: gd.Node, x: np.ndarray, onnx: bool = True) -> dict[str, np.ndarray]:
    """The model's output for ``x`` on NumPy, torch, the to_torch module and ONNX."""
    st = gd.build(model)[0]()
    assert st.data == {}  # Axon's "initializes with no params"
    outs = {"numpy": np.asarray(gd.predict(model, st, x)),
            "torch": gd.predict(model, st, x, backend="torch").numpy()}
    with torch.no_grad():
        outs["module"] = gd.to_torch(model, st).eval()(torch.from_numpy(x)).numpy()
    if onnx:
        name = next(iter(gd.get_inputs(model)))
        outs["onnx"] = export_and_run(model, st, {name: x})[0][0]
    return outs


def assert_all(model: gd.Node, x: np.ndarray, want: np.ndarray, tol=TOL, onnx: bool = True):
    for backend, got in outputs(model, x, onnx).items():
        assert got.shape == want.shape, backend
        np.testing.assert_allclose(got, want, **tol, err_msg=backend)


def uniform(*shape):  # Axon's test helper `random`: uniform in [0, 1)
    return R.uniform(0.0, 1.0, shape).astype(np.float32)


POOLS = {"max_pool": (gd.max_pool, "max"), "avg_pool": (gd.avg_pool, "avg"),
         "lp_pool": (gd.lp_pool, "lp")}
ADAPTIVE = {"adaptive_max_pool": (gd.adaptive_max_pool, "max"),
            "adaptive_avg_pool": (gd.adaptive_avg_pool, "avg"),
            "adaptive_lp_pool": (gd.adaptive_lp_pool, "lp")}


# -- Axon's documented examples (lib/axon/layers.ex) ---------------------------------------
def test_axon_doc_examples():
    t = np.array([[[0.051500000059604645, -0.7042999863624573, -0.32899999618530273],
                   [-0.37130001187324524, 1.6191999912261963, -0.11829999834299088],
                   [0.7099999785423279, 0.7282999753952026, -0.18639999628067017]]],
                 np.float32)
    mp = gd.max_pool(gd.input("t", (None, 3, 3)), 2, channels="first")
    assert_all(mp, t, np.array([[[0.0515], [1.6192], [0.7283]]], np.float32),
               {"rtol": 0, "atol": 1e-4})
    t = np.array([[[0.9450, 0.4684, 1.8146], [1.2663, 0.4354, -0.0781],
                   [-0.4759, 0.3251, 0.8742]]], np.float32)
    lp = gd.lp_pool(gd.input("t", (None, 3, 3)), 2, norm=2, channels="first")
    assert_all(lp, t, np.array([[[1.0547149181365967], [1.3390626907348633],
                                 [0.5763426423072815]]], np.float32))
    glp = gd.global_lp_pool(gd.input("t", (None, 2, 3)), norm=1, channels="first")
    assert_all(glp, np.arange(18, dtype=np.float32).reshape(3, 2, 3),
               np.array([[3.0, 12.0], [21.0, 30.0], [39.0, 48.0]], np.float32))
    # Axon's example is f16 ([3.7421875, 11.2265625, 19.125]); float32 is sqrt(14) ...
    keep = gd.global_lp_pool(gd.input("t", (None, 3, 2, 2)), keep_axes=True, channels="first")
    f16 = np.array([3.7421875, 11.2265625, 19.125], np.float32).reshape(1, 3, 1, 1)
    assert_all(keep, np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2), f16,
               {"rtol": 2e-3, "atol": 0})


# -- Axon's compiler tests (test/axon/compiler_test.exs) -----------------------------------
SHAPES = [(1, 32, 1), (1, 8, 4, 1), (1, 8, 4, 2, 1)]


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pools_default_options(op, shape):
    """Axon's default kernel_size is 1 (strides: the kernel), valid padding, norm 2."""
    make, kind = POOLS[op]
    x = uniform(*shape)
    n = len(shape) - 2
    assert_all(make(gd.input("input", (None, *shape[1:]))), x,
               nx_window(x, kind, [1] * n, [1] * n, [(0, 0)] * n))


# opts1, opts2, opts3 of "computes forward pass with custom options"
CUSTOM = [((1, 32, 1), {"kernel_size": 6}),
          ((1, 8, 4, 1), {"kernel_size": 2, "strides": 2, "padding": "same"}),
          ((1, 8, 4, 2, 1), {"kernel_size": (2, 1, 2), "strides": (1, 2, 1),
                             "padding": [(0, 1), (1, 1), (0, 2)]})]


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize("shape,opts", CUSTOM)
def test_pools_custom_options(op, shape, opts):
    make, kind = POOLS[op]
    x = uniform(*shape)
    n = len(shape) - 2
    k = opts["kernel_size"]
    k = [k] * n if isinstance(k, int) else list(k)
    s = opts.get("strides", k)
    s = [s] * n if isinstance(s, int) else list(s)
    pads = opts.get("padding", "valid")
    pads = same_pads(k) if pads == "same" else [(0, 0)] * n if pads == "valid" else pads
    inp = gd.input("input", (None, *shape[1:]))
    if op == "max_pool" and any(max(p) > kk // 2 for p, kk in zip(pads, k)):
        # Axon computes -inf for the windows of padding only (kernel 1, pad 1); graphdsl
        # keeps torch's rule, a pad of at most half the window
        with pytest.raises(GraphDSLError, match="more than half the window"):
            make(inp, **opts)
        return
    assert_all(make(inp, **opts), x, nx_window(x, kind, k, s, pads))


def test_lp_pool_custom_norm():
    x = uniform(1, 32, 1)
    model = gd.lp_pool(gd.input("input", (None, 32, 1)), norm=3)
    assert model.attrs["norm"] == 3.0
    assert_all(model, x, nx_window(x, "lp", [1], [1], [(0, 0)], norm=3))


@pytest.mark.parametrize("op", POOLS)
def test_pools_channels_last(op):
    make, kind = POOLS[op]
    x = uniform(1, 32, 1)
    assert_all(make(gd.input("input", (None, 32, 1)), kernel_size=2, channels="last"), x,
               nx_window(x, kind, [2], [2], [(0, 0)]))


@pytest.mark.parametrize("op", ADAPTIVE)
@pytest.mark.parametrize("shape,out", [((1, 32, 1), None), ((1, 8, 4, 1), None),
                                       ((1, 8, 4, 2, 1), None), ((1, 32, 1), 27),
                                       ((1, 8, 4, 1), (2, 3)), ((1, 8, 4, 2, 1), (4, 3, 1))])
def test_adaptive_pools_default_and_custom_options(op, shape, out):
    """No output_size: the input's own sizes (Axon's output_size: 32, {8, 4}, ...)."""
    make, kind = ADAPTIVE[op]
    x = uniform(*shape)
    sizes = shape[1:-1]
    want = [out] * len(sizes) if isinstance(out, int) else out or sizes
    model = make(gd.input("input", (None, *shape[1:])), output_size=out)
    assert model.shape == (None, *want, 1)
    assert_all(model, x, axon_adaptive(x, kind, want))


@pytest.mark.parametrize("op", ADAPTIVE)
def test_adaptive_pools_channels_last(op):
    make, kind = ADAPTIVE[op]
    x = uniform(1, 32, 1)
    assert_all(make(gd.input("input", (None, 32, 1)), output_size=(27,), channels="last"),
               x, axon_adaptive(x, kind, [27]))


GLOBAL = {"global_max_pool": lambda x, ax, keep: x.max(ax, keepdims=keep),
          "global_avg_pool": lambda x, ax, keep: x.mean(ax, keepdims=keep),
          "global_lp_pool": lambda x, ax, keep: np.sqrt((x.astype(np.float64) ** 2).sum(
              ax, keepdims=keep))}


@pytest.mark.parametrize("op", GLOBAL)
@pytest.mark.parametrize("shape,keep", [((1, 1, 4), False), ((1, 1, 2, 2), False),
                                        ((1, 1, 2, 2, 1), False), ((1, 1, 2), True),
                                        ((1, 32, 1), True), ((1, 32, 1), False)])
def test_global_pools(op, shape, keep):
    x = uniform(*shape)
    model = getattr(gd, op)(gd.input("input", (None, *shape[1:])), keep_axes=keep)
    assert_all(model, x, GLOBAL[op](x, tuple(range(1, len(shape) - 1)), keep))


# -- Axon's layers tests (test/axon/layers_test.exs) ---------------------------------------
@pytest.mark.parametrize("opts", [{}, {"dilations": (2, 2)}, {"padding": [(2, 2), (1, 2)]}])
@pytest.mark.parametrize("op", POOLS)
def test_channels_last_same_as_channels_first(op, opts):
    make, kind = POOLS[op]
    x = R.standard_normal((1, 1, 28, 28)).astype(np.float32)
    if op == "max_pool" and "padding" in opts:  # Axon: -inf where a window is padding only
        with pytest.raises(GraphDSLError, match="more than half the window"):
            make(gd.input("x", (None, 1, 28, 28)), (2, 2), channels="first", **opts)
        return
    first = make(gd.input("x", (None, 1, 28, 28)), (2, 2), channels="first", **opts)
    last = make(gd.input("x", (None, 28, 28, 1)), (2, 2), channels="last", **opts)
    a = outputs(first, x, onnx=False)["numpy"]
    b = outputs(last, x.transpose(0, 2, 3, 1), onnx=False)["numpy"]
    np.testing.assert_allclose(a, b.transpose(0, 3, 1, 2), rtol=1e-6, atol=0)
    pads = opts.get("padding", [(0, 0)] * 2)
    want = nx_window(x.transpose(0, 2, 3, 1), kind, [2, 2], [2, 2], pads, opts.get("dilations"))
    np.testing.assert_allclose(b, want, **TOL)


@pytest.mark.parametrize("op", [*ADAPTIVE, "global_lp_pool"])
def test_adaptive_and_global_channels_last_same_as_first(op):
    x = R.standard_normal((1, 1, 28, 28)).astype(np.float32)
    make = getattr(gd, op)
    kw = {"output_size": (25, 25)} if op in ADAPTIVE else {}
    first = outputs(make(gd.input("x", (None, 1, 28, 28)), channels="first", **kw), x)
    last = outputs(make(gd.input("x", (None, 28, 28, 1)), channels="last", **kw),
                   x.transpose(0, 2, 3, 1))
    for backend in first:
        b = last[backend] if op == "global_lp_pool" else last[backend].transpose(0, 3, 1, 2)
        np.testing.assert_allclose(first[backend], b, rtol=1e-5, atol=1e-6)


# -- torch agreement -----------------------------------------------------------------------
LP_TORCH = [((11,), 3, 2, 2.0), ((9,), 2, 1, 3.0), ((7, 8), (2, 3), (2, 1), 2.0),
            ((7, 8), 3, 2, 1.5), ((5, 6, 4), 2, 1, 2.0), ((5, 6, 4), (3, 2, 2), 2, 3.0)]


@pytest.mark.parametrize("spatial,k,s,norm", LP_TORCH)
def test_lp_pool_matches_torch(spatial, k, s, norm):
    """torch's F.lp_pool*d is Axon's formula on its windows (no padding, no dilation);
    on positive inputs, where an odd or fractional norm has values."""
    n = len(spatial)
    x = np.abs(R.standard_normal((2, 3, *spatial))).astype(np.float32)
    ref = getattr(F, f"lp_pool{n}d")(torch.from_numpy(x), norm, k, s).numpy()
    model = gd.lp_pool(gd.input("x", (None, 3, *spatial)), k, strides=s, norm=norm,
                       channels="first")
    assert_all(model, x, ref, {"rtol": 2e-5, "atol": 2e-5})


MAX_TORCH = [((12,), 3, 1, 2, 1), ((9, 8), 2, 1, (2, 3), 1), ((9, 8), 3, 2, 2, 0),
             ((6, 7, 5), 2, 1, (1, 2, 2), 1)]  # torch pads at most kernel_size // 2


@pytest.mark.parametrize("spatial,k,s,d,p", MAX_TORCH)
def test_dilated_max_pool_matches_torch(spatial, k, s, d, p):
    n = len(spatial)
    x = R.standard_normal((2, *spatial, 3)).astype(np.float32)
    xt = torch.from_numpy(x).movedim(-1, 1)
    ref = getattr(F, f"max_pool{n}d")(xt, k, s, p, d).movedim(1, -1).numpy()
    model = gd.max_pool(gd.input("x", (None, *spatial, 3)), k, strides=s, dilations=d,
                        padding=[(p, p)] * n)
    assert_all(model, x, ref, {"rtol": 0, "atol": 0})


@pytest.mark.parametrize("op,kind", [("avg_pool", "avg"), ("lp_pool", "lp")])
@pytest.mark.parametrize("spatial,k,s,d,pad", [
    ((12,), 3, 2, 3, "same"), ((9, 8), 2, 1, (2, 3), [(1, 0), (2, 2)]),
    ((6, 7, 5), (2, 2, 1), (1, 2, 1), 2, "valid")])
def test_dilated_avg_and_lp_pool(op, kind, spatial, k, s, d, pad):
    """torch's avg_pool and lp_pool have no dilation: Nx's definition is the reference."""
    n = len(spatial)
    x = np.abs(R.standard_normal((2, *spatial, 3))).astype(np.float32)
    kk = [k] * n if isinstance(k, int) else list(k)
    dd = [d] * n if isinstance(d, int) else list(d)
    ss = [s] * n if isinstance(s, int) else list(s)
    pads = same_pads(kk, dd) if pad == "same" else [(0, 0)] * n if pad == "valid" else pad
    model = getattr(gd, op)(gd.input("x", (None, *spatial, 3)), k, strides=s, dilations=d,
                            padding=pad)
    assert_all(model, x, nx_window(x, kind, kk, ss, pads, dd))


@pytest.mark.parametrize("spatial,out", [((12,), 4), ((8, 6), (2, 3)), ((8, 6), 1),
                                         ((4, 6, 8), (2, 3, 4))])
@pytest.mark.parametrize("op", ["adaptive_avg_pool", "adaptive_max_pool"])
def test_adaptive_pools_match_torch_where_sizes_divide(op, spatial, out):
    n = len(spatial)
    x = R.standard_normal((2, 3, *spatial)).astype(np.float32)
    ref = getattr(F, f"{op}{n}d")(torch.from_numpy(x), out).numpy()
    model = getattr(gd, op)(gd.input("x", (None, 3, *spatial)), out, channels="first")
    assert_all(model, x, ref)


def test_adaptive_pools_follow_axon_where_torch_differs():
    """32 -> 27: Axon's windows (strides 1, size 6) are not torch's (start floor(i*32/27),
    end ceil((i+1)*32/27): sizes 2 and 3)."""
    x = R.standard_normal((1, 32, 1)).astype(np.float32)
    model = gd.adaptive_avg_pool(gd.input("x", (None, 32, 1)), 27)
    ours = outputs(model, x)["numpy"]
    np.testing.assert_allclose(ours, axon_adaptive(x, "avg", [27]), **TOL)
    torch_ = F.adaptive_avg_pool1d(torch.from_numpy(x).movedim(-1, 1), 27).movedim(1, -1)
    assert np.abs(ours - torch_.numpy()).max() > 0.1


def test_adaptive_lp_pool_matches_torch_lp_pool_where_sizes_divide():
    x = np.abs(R.standard_normal((2, 3, 8, 6))).astype(np.float32)
    ref = F.lp_pool2d(torch.from_numpy(x), 3.0, (4, 2)).numpy()
    model = gd.adaptive_lp_pool(gd.input("x", (None, 3, 8, 6)), (2, 3), norm=3,
                                channels="first")
    assert_all(model, x, ref, {"rtol": 2e-5, "atol": 2e-5})


def test_adaptive_pool_over_unknown_sizes_runs_with_the_sizes_given():
    model = gd.adaptive_max_pool(gd.input("x", (None, None, None, 2)), (2, 3), name="am")
    assert model.shape == (None, 2, 3, 2)
    st = gd.build(model)[0]()
    for shape in ((1, 4, 9, 2), (2, 5, 7, 2)):
        x = R.standard_normal(shape).astype(np.float32)
        want = axon_adaptive(x, "max", [2, 3])
        for backend in ("numpy", "torch"):
            np.testing.assert_allclose(np.asarray(gd.predict(model, st, x, backend=backend)),
                                       want, **TOL)
    with pytest.raises(GraphDSLError, match="larger than the input's size 1"):
        gd.predict(model, st, np.zeros((1, 1, 9, 2), np.float32))
    with pytest.raises(GraphDSLError, match="only over known spatial sizes") as e:
        gd.to_onnx(model, st)
    assert "'am'" in str(e.value)
    same = gd.adaptive_avg_pool(gd.input("x", (None, None, 2)))  # no output_size: exports
    x = R.standard_normal((2, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(export_and_run(same, gd.build(same)[0](), {"x": x})[0][0], x)


# -- what a power average refuses ----------------------------------------------------------
@pytest.mark.parametrize("make,what", [
    (lambda x: gd.lp_pool(x, 2, norm=3, name="lp"), "negative window sum"),
    (lambda x: gd.lp_pool(x, 2, norm=1.5, name="lp"), "negative input"),
    (lambda x: gd.global_lp_pool(x, norm=0.5, name="lp"), "negative input"),
    (lambda x: gd.adaptive_lp_pool(x, 2, norm=5, name="lp"), "negative window sum")])
def test_nan_making_inputs_are_refused_on_every_backend(make, what):
    """Axon computes NaN there ((-8) ** (1/3) in Nx); every backend refuses the run."""
    model = make(gd.input("x", (None, 6, 3)))
    st = gd.build(model)[0]()
    x = -np.abs(R.standard_normal((2, 6, 3))).astype(np.float32) - 0.1
    for backend in ("numpy", "torch"):
        with pytest.raises(GraphDSLError, match=what) as e:
            gd.predict(model, st, x, backend=backend)
        assert "'lp'" in str(e.value) and "inputs >= 0" in str(e.value)
    with pytest.raises(Exception, match="out of data bounds"):  # ONNX Runtime refuses it
        export_and_run(model, st, {"x": x})
    for norm in (1, 2, 4):  # no NaN: an even norm, and 1 (the root is the sum)
        ok = gd.lp_pool(gd.input("x", (None, 6, 3)), 2, norm=norm)
        assert np.isfinite(outputs(ok, x)["onnx"]).all()


@pytest.mark.parametrize("make,what", [
    (lambda x: gd.lp_pool(x, 2, norm=0, name="bad"), "norm must be a finite number above 0"),
    (lambda x: gd.lp_pool(x, 2, norm=-2, name="bad"), "norm must be a finite number above 0"),
    (lambda x: gd.global_lp_pool(x, norm=float("inf"), name="bad"), "got inf"),
    (lambda x: gd.adaptive_lp_pool(x, norm="2", name="bad"), "got '2'"),
    (lambda x: gd.max_pool(x, 2, dilations=0, name="bad"), "dilations must be an int"),
    (lambda x: gd.avg_pool(x, 2, dilations=(1, 2, 3), name="bad"), "dilations (1, 2, 3) has 3"),
    (lambda x: gd.lp_pool(x, 3, dilations=4, name="bad"), "larger than the padded input"),
    (lambda x: gd.max_pool(x, 2, strides=1, dilations=3, padding=[(3, 0), (0, 0)],
                           name="bad"), "more than half the window (kernel_size 2, dil"),
    (lambda x: gd.adaptive_avg_pool(x, (7, 2), name="bad"), "output_size 7 on spatial axis 0"),
    (lambda x: gd.adaptive_max_pool(x, 0, name="bad"), "output_size must be an int"),
    (lambda x: gd.adaptive_max_pool(x, (2, 2, 2), name="bad"), "output_size (2, 2, 2) has 3"),
    (lambda x: gd.lp_pool(gd.input("v", (None, 2, 2, 2, 2, 2)), name="bad"),
     "1 to 3 spatial axes, got 4"),
    (lambda x: gd.adaptive_lp_pool(gd.input("v", (None, 4)), name="bad"), "rank 2"),
])
def test_bad_options_are_errors_at_construction(make, what):
    with pytest.raises(GraphDSLError) as e:
        make(gd.input("x", (None, 6, 5, 3)))
    assert what in str(e.value) and "'bad'" in str(e.value) and "fix:" in str(e.value)


def test_max_pool_window_of_padding_only_is_an_error():
    """Size 2, two taps 3 apart, pad 1 each side: the window (pad, pad) holds no input
    (torch returns -inf there)."""
    xt = torch.zeros(1, 1, 2)
    assert torch.isinf(F.max_pool1d(xt, 2, 1, 1, 3)).all()
    with pytest.raises(GraphDSLError, match="window 0 on spatial axis 0 holds padding only"):
        gd.max_pool(gd.input("x", (None, 2, 1)), 2, strides=1, dilations=3,
                    padding=[(1, 1)])
    model = gd.max_pool(gd.input("x", (None, None, 1)), 2, strides=1, dilations=3,
                        padding=[(1, 1)])  # checked when the size is known
    with pytest.raises(GraphDSLError, match="holds padding only"):
        gd.predict(model, gd.ModelState.empty(), np.zeros((1, 2, 1), np.float32))
    out = gd.predict(model, gd.ModelState.empty(), np.ones((1, 5, 1), np.float32))
    assert np.isfinite(out).all() and out.shape == (1, 4, 1)


def test_existing_pools_keep_their_files_and_defaults():
    """A model written before dilations existed loads with dilations 1."""
    doc = gd.to_json(gd.max_pool(gd.input("x", (None, 6, 6, 1)), 2, name="mp"))
    assert '"dilations": 1' in doc
    old = gd.from_json(doc.replace(', "dilations": 1', "").replace('"dilations": 1, ', ""))
    assert "dilations" in old.attrs and old.attrs["dilations"] == 1
    lp = gd.lp_pool(gd.input("x", (None, 6, 6, 1)))
    assert (lp.attrs["kernel_size"], lp.attrs["strides"], lp.attrs["padding"],
            lp.attrs["dilations"], lp.attrs["norm"]) == (1, None, "valid", 1, 2.0)
    assert gd.adaptive_lp_pool(gd.input("x", (None, 6, 6, 1))).attrs == {
        "output_size": None, "channels": "last", "norm": 2.0}


def test_dilated_max_pool_pads_up_to_half_the_dilated_window():
    """torch refuses a pad above kernel_size // 2 even when dilated; graphdsl allows half
    the dilated window (no window is padding only), as Nx computes it."""
    x = R.standard_normal((2, 9, 8, 3)).astype(np.float32)
    model = gd.max_pool(gd.input("x", (None, 9, 8, 3)), 3, strides=1, dilations=2,
                        padding=[(2, 2), (1, 2)])
    want = nx_window(x, "max", [3, 3], [1, 1], [(2, 2), (1, 2)], [2, 2])
    assert np.isfinite(want).all()
    assert_all(model, x, want, {"rtol": 0, "atol": 0})
