"""ONNX Runtime (CPU) running ``gd.to_onnx`` exports vs graphdsl's NumPy backend on the same
models and weights, 2 threads each (ONNX Runtime's intra-op pool; threadpoolctl for
NumPy's BLAS): the MLP of bench_core and the LLaMA of bench_llama (hidden 512, 2 layers,
8 heads / 4 kv heads, intermediate 1376, vocab 1000, batch 4 x 128 tokens); and the MLP
through ``gd.predict(backend="onnxruntime")`` (the ONNX Runtime backend) vs ``gd.predict``.

    python -m benchmarks.bench_onnx
"""
from __future__ import annotations

import statistics
import sys

import numpy as np

import graphdsl as gd
from benchmarks.bench_core import _mlp
from benchmarks.harness import Row, machine, median_time, table
from graphdsl import models

THREADS = 2
BLOCKS = 5


def _session(model, state):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    proto = gd.to_onnx(model, state)
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _llama():
    return models.llama({"vocab_size": 1000, "hidden_size": 512, "intermediate_size": 1376,
                         "num_hidden_layers": 2, "num_attention_heads": 8,
                         "num_key_value_heads": 4})


def _pair(name: str, model, feed: dict, reps: int) -> Row:
    """ONNX Runtime vs the NumPy backend on one model; outputs checked equal first."""
    from threadpoolctl import threadpool_limits

    init, predict = gd.build(model)
    state = init()
    sess = _session(model, state)
    arg = feed if len(feed) > 1 else next(iter(feed.values()))
    with threadpool_limits(THREADS):
        ref = predict(state, arg)
        got = sess.run(None, feed)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        # alternating blocks, not single calls (OpenBLAS's spinning threads slow whatever
        # runs right after them), so both see the same machine noise
        t_np, t_ort = [], []
        for _ in range(BLOCKS):
            t_np.append(median_time(lambda: predict(state, arg), repeat=reps // BLOCKS))
            t_ort.append(median_time(lambda: sess.run(None, feed), repeat=reps // BLOCKS))
    return Row(name, statistics.median(t_ort), statistics.median(t_np),
               "graphdsl NumPy backend")


def _backend_pair(name: str, model, x: np.ndarray, reps: int) -> Row:
    """The user's path, ``gd.predict(..., backend="onnxruntime")`` (input checks, the
    export cached on the state values) vs ``gd.predict`` on the NumPy backend."""
    from threadpoolctl import threadpool_limits

    state = gd.build(model)[0]()
    with threadpool_limits(THREADS):
        np.testing.assert_allclose(gd.predict(model, state, x, backend="onnxruntime",
                                              threads=THREADS),
                                   gd.predict(model, state, x), rtol=1e-4, atol=1e-4)
        t_np, t_ort = [], []
        for _ in range(BLOCKS):
            t_np.append(median_time(lambda: gd.predict(model, state, x), repeat=reps // BLOCKS))
            t_ort.append(median_time(lambda: gd.predict(model, state, x,
                                                        backend="onnxruntime",
                                                        threads=THREADS),
                                     repeat=reps // BLOCKS))
    return Row(name, statistics.median(t_ort), statistics.median(t_np),
               "gd.predict, NumPy backend")


def run(quick: bool = False) -> list[Row]:
    rng = np.random.default_rng(0)
    rows = []
    mlp = _mlp()
    for batch, reps in ((256, 30 if quick else 200), (1, 200 if quick else 2000)):
        x = rng.normal(size=(batch, 784)).astype(np.float32)
        rows.append(_pair(f"MLP 784-512-512-10, batch {batch}: ONNX Runtime", mlp, {"x": x},
                          reps))
        rows.append(_backend_pair(f"MLP 784-512-512-10, batch {batch}: gd.predict(backend="
                                  "'onnxruntime')", mlp, x, reps))
    batch, seq = (1, 32) if quick else (4, 128)
    ids = rng.integers(0, 1000, (batch, seq))
    rows.append(_pair(f"LLaMA 512x2 layers, batch {batch}x{seq}: ONNX Runtime", _llama(),
                      {"input_ids": ids}, 5 if quick else 25))
    return rows


if __name__ == "__main__":
    print(machine())
    print(table(run("--quick" in sys.argv)))
