"""Forward of an MLP lowered by ``gd.to_torch`` vs the same MLP hand-written as an
``nn.Module`` (same weights), timed interleaved in one process (medians).

    python benchmarks/bench_torch_module.py
"""
from __future__ import annotations

import os
import sys

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Row, interleaved, table  # noqa: E402

SIZES = (512, 1024, 1024, 256)
BATCH = 64
THREADS = int(os.environ.get("GRAPHDSL_BENCH_THREADS", "1"))  # 0: torch default


def _models(device: str):
    import torch

    import graphdsl as gd

    x = gd.input("x", (None, SIZES[0]))
    h = x
    for i, n in enumerate(SIZES[1:]):
        last = i == len(SIZES) - 2
        h = gd.dense(h, n, activation=None if last else "relu", name=f"fc{i}")
    init, _ = gd.build(h)
    st = init({"x": np.zeros((1, SIZES[0]), np.float32)})
    ours = gd.to_torch(h, st, device=device).eval()

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:]))

        def forward(self, x):
            n = len(self.layers)
            for i, lin in enumerate(self.layers):
                x = lin(x)
                if i < n - 1:
                    x = torch.relu(x)
            return x

    ref = MLP().to(device).eval()
    with torch.no_grad():
        for i, lin in enumerate(ref.layers):
            lin.weight.copy_(torch.tensor(st.data[f"fc{i}"]["kernel"].T))
            lin.bias.copy_(torch.tensor(st.data[f"fc{i}"]["bias"]))
    return ours, ref


def run(quick: bool = False, device: str | None = None) -> list[Row]:
    import torch

    if THREADS:
        torch.set_num_threads(THREADS)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ours, ref = _models(device)
    x = torch.randn(BATCH, SIZES[0], device=device)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def fwd(m):
        def f():
            with torch.no_grad():
                m(x)
            sync()
        return f

    def train(m):
        def f():
            m(x).square().mean().backward()
            sync()
        return f

    n = 30 if quick else 200
    t = interleaved({"ours": fwd(ours), "ref": fwd(ref)}, repeat=n, warmup=5)
    tb = interleaved({"ours": train(ours), "ref": train(ref)}, repeat=n // 2, warmup=3)
    shape = "-".join(map(str, SIZES))
    return [
        Row(f"module forward MLP {shape} b={BATCH} ({device})", t["ours"], t["ref"],
            "hand-written nn.Module", 1.05),
        Row(f"module forward+backward MLP {shape} ({device})", tb["ours"], tb["ref"],
            "hand-written nn.Module", None),
    ]


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
