"""Convolution on the NumPy backend (im2col + one matmul) vs ``torch.nn.functional.conv2d``
on the same threads, conv_transpose (one GEMM + a scatter-add per tap) vs
``conv_transpose2d``, and a ResNet-style block end to end (NumPy backend and the
``to_torch`` module vs the same block hand-written in torch, NCHW). Medians, interleaved.

    python benchmarks/bench_conv.py
"""
from __future__ import annotations

import os
import sys

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphdsl as gd  # noqa: E402
from benchmarks.harness import Row, interleaved, table  # noqa: E402

THREADS = int(os.environ.get("GRAPHDSL_BENCH_THREADS", "2"))  # NumPy's BLAS uses the cores


def _block(c: int) -> gd.Node:
    x = gd.input("x", (None, None, None, c))
    h = gd.conv(x, c, 3, padding="same", use_bias=False, name="c1")
    h = gd.relu(gd.batch_norm(h, name="bn1"))
    h = gd.batch_norm(gd.conv(h, c, 3, padding="same", use_bias=False, name="c2"), name="bn2")
    return gd.relu(gd.add(h, x))


def _torch_block(st: gd.ModelState, c: int):
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.c2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1, self.bn2 = torch.nn.BatchNorm2d(c), torch.nn.BatchNorm2d(c)

        def forward(self, x):
            h = torch.relu(self.bn1(self.c1(x)))
            return torch.relu(self.bn2(self.c2(h)) + x)

    m = Block().eval()
    with torch.no_grad():
        for n in ("c1", "c2"):
            getattr(m, n).weight.copy_(torch.tensor(st.data[n]["kernel"]).permute(3, 2, 0, 1))
        for n in ("bn1", "bn2"):
            bn = getattr(m, n)
            for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"),
                                 ("var", "running_var")):
                getattr(bn, theirs).copy_(torch.tensor(st.data[n][ours]))
    return m


def _conv_transpose(x: np.ndarray, n: int) -> list[Row]:
    """Axon's conv_transpose 3x3, stride 2, "same" (32x32 -> 64x64, pads (2, 1) of the
    dilated input) against torch's stride-2 upsampling conv_transpose2d of the same size
    (padding=1, output_padding=1) with the flipped kernel, NCHW (the goal, as the conv row)
    and channels_last (our layout; informational)."""
    import torch
    import torch.nn.functional as F

    model = gd.conv_transpose(gd.input("x", (None, 32, 32, 64)), 64, 3, strides=2,
                              padding="same", name="ct")
    init, pred = gd.build(model)
    st = init()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    W = torch.tensor(st.data["ct"]["kernel"][::-1, ::-1].transpose(2, 3, 0, 1).copy())
    b = torch.tensor(st.data["ct"]["bias"])
    with torch.no_grad():
        ref = F.conv_transpose2d(xt, W, b, stride=2)[:, :, :64, :64].permute(0, 2, 3, 1)
    assert np.allclose(pred(st, x), ref.numpy(), atol=1e-3)
    xcl = xt.contiguous(memory_format=torch.channels_last)
    t = interleaved({"ours": lambda: pred(st, x),
                     "ref": lambda: F.conv_transpose2d(xt, W, b, stride=2, padding=1,
                                                       output_padding=1),
                     "cl": lambda: F.conv_transpose2d(xcl, W, b, stride=2, padding=1,
                                                      output_padding=1)},
                    repeat=n, warmup=2)
    name = "conv_transpose 3x3 s2 same 32x32x64->64x64x64 b=32: NumPy backend"
    return [Row(name, t["ours"], t["ref"], f"torch F.conv_transpose2d NCHW, {THREADS} threads",
                2.0),
            Row(name, t["ours"], t["cl"], "the same, torch channels_last input", None)]


def run(quick: bool = False) -> list[Row]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    n = 5 if quick else 30
    # one conv: 32x32x64 -> 64, 3x3, batch 32
    x = rng.standard_normal((32, 32, 32, 64)).astype(np.float32)
    conv = gd.conv(gd.input("x", (None, 32, 32, 64)), 64, 3, padding="same", name="c")
    st = gd.build(conv)[0]()
    pred = gd.build(conv)[1]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    W = torch.tensor(st.data["c"]["kernel"]).permute(3, 2, 0, 1).contiguous()
    b = torch.tensor(st.data["c"]["bias"])
    with torch.no_grad():
        ref = F.conv2d(xt, W, b, padding=1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(pred(st, x), ref, atol=1e-3)
    t = interleaved({"ours": lambda: pred(st, x),
                     "ref": lambda: F.conv2d(xt, W, b, padding=1)}, repeat=n, warmup=2)
    rows = [Row("conv 3x3 32x32x64->64 b=32: NumPy backend", t["ours"], t["ref"],
                f"torch F.conv2d NCHW, {THREADS} threads", 2.0)]
    rows += _conv_transpose(x, n)
    # ResNet-style basic block, 16x16x64, batch 32, inference (running statistics)
    block = _block(64)
    init, bpred = gd.build(block)
    bst = init({"x": (1, 16, 16, 64)})
    for name in ("bn1", "bn2"):
        bst.data[name] = {"gamma": rng.uniform(0.5, 1.5, 64).astype(np.float32),
                          "beta": rng.normal(size=64).astype(np.float32) * 0.1,
                          "mean": rng.normal(size=64).astype(np.float32) * 0.1,
                          "var": rng.uniform(0.5, 2, 64).astype(np.float32)}
    xb = rng.standard_normal((32, 16, 16, 64)).astype(np.float32)
    tm = _torch_block(bst, 64)
    mod = gd.to_torch(block, bst).eval()
    xbt = torch.from_numpy(xb)
    xbt_cf = xbt.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ref = tm(xbt_cf).permute(0, 2, 3, 1).numpy()
        assert np.allclose(bpred(bst, xb), ref, atol=1e-3)
        assert np.allclose(mod(xbt).numpy(), ref, atol=1e-3)

    def torch_fwd(m, inp):
        def f():
            with torch.no_grad():
                m(inp)
        return f

    tb = interleaved({"np": lambda: bpred(bst, xb), "mod": torch_fwd(mod, xbt),
                      "ref": torch_fwd(tm, xbt_cf)}, repeat=n, warmup=2)
    rows += [Row("ResNet block 16x16x64 b=32 (conv-bn-relu-conv-bn-add-relu): NumPy",
                 tb["np"], tb["ref"], "hand-written torch block, NCHW", 2.0),
             Row("ResNet block 16x16x64 b=32: to_torch module (channels last)", tb["mod"],
                 tb["ref"], "hand-written torch block, NCHW", None)]
    return rows


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
