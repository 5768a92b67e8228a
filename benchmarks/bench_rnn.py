"""lstm and gru on the NumPy backend vs ``torch.nn.LSTM`` / ``torch.nn.GRU`` (same threads).

Batch 32, 64 steps, 256 features, 256 units, inference, the state from init_fn (the
user's path). The NumPy loop projects the inputs of every step in one GEMM and does
one ``h @ hidden_kernel`` GEMM per step. Medians, interleaved.

    python benchmarks/bench_rnn.py
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
B, T, F, U = 32, 64, 256, 256


def _torch_layer(op: str, p: dict):
    """torch's layer holding graphdsl's parameters (weight_ih = input_kernel.T, ...)."""
    import torch

    ref = (torch.nn.LSTM if op == "lstm" else torch.nn.GRU)(F, U, batch_first=True).eval()
    b = torch.tensor(np.asarray(p["bias"]))
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.tensor(np.asarray(p["input_kernel"]).T))
        ref.weight_hh_l0.copy_(torch.tensor(np.asarray(p["hidden_kernel"]).T))
        ref.bias_ih_l0.copy_(b[:4 * U] if op == "lstm" else b[:3 * U])
        ref.bias_hh_l0.zero_()
        if op == "gru":
            ref.bias_hh_l0[2 * U:] = b[3 * U:]
    return ref


def run(quick: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(THREADS)
    n = 5 if quick else 30
    x = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    xt = torch.from_numpy(x)
    rows = []
    for op in ("lstm", "gru"):
        # torch starts from zeros; Axon (and graphdsl) by default from a random draw
        seq, _ = getattr(gd, op)(gd.input("x", (None, T, F)), U, name="rnn",
                                 recurrent_initializer="zeros")
        init, pred = gd.build(seq)
        st = init()
        st.data["rnn"]["bias"] = np.linspace(-1, 1, 4 * U, dtype=np.float32)
        ref = _torch_layer(op, st.data["rnn"])

        def torch_fwd(m=ref):
            with torch.no_grad():
                m(xt)

        with torch.no_grad():
            assert np.allclose(pred(st, x), ref(xt)[0].numpy(), atol=1e-4)
        t = interleaved({"ours": lambda p=pred, s=st: p(s, x), "ref": torch_fwd}, repeat=n,
                        warmup=2)
        rows.append(Row(f"{op} b={B} seq={T} {F}->{U}, inference, state from init_fn: NumPy "
                        "backend", t["ours"], t["ref"],
                        f"torch.nn.{op.upper()}, {THREADS} threads", 2.0))
    return rows


if __name__ == "__main__":
    print(table(run(quick="--quick" in sys.argv)))
