"""Core NumPy backend: predict overhead vs hand-written NumPy, and build-time scaling.

    python -m benchmarks.bench_core
"""
from __future__ import annotations

import gc
import statistics
import time

import numpy as np

import graphdsl as gd
from benchmarks.harness import Row, interleaved, table


def _mlp():
    x = gd.input("x", (None, 784))
    h = gd.dense(x, 512, activation="relu", name="fc1")
    h = gd.dense(h, 512, activation="relu", name="fc2")
    return gd.dense(h, 10, name="out")


def _hand_written(state):
    (k1, b1), (k2, b2), (k3, b3) = (
        (state.data[n]["kernel"], state.data[n]["bias"]) for n in ("fc1", "fc2", "out"))

    def f(x):
        h = np.maximum(x @ k1 + b1, 0)
        h = np.maximum(h @ k2 + b2, 0)
        return h @ k3 + b3

    return f


def _keras_predict(state):
    """Keras 3's NumPy backend on the same MLP, or None when keras is not installed."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "numpy")
    try:
        import keras
    except Exception:
        return None
    if keras.backend.backend() != "numpy":
        return None
    m = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                          keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)])
    for layer, name in zip(m.layers, ("fc1", "fc2", "out")):
        layer.set_weights([state.data[name]["kernel"], state.data[name]["bias"]])
    return m


def _chain(n: int) -> float:
    # A full collection scans the whole heap (torch, keras...), whatever our code does:
    # freeze what exists so the timing measures graphdsl's own work.
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    y = gd.input("x", (None, 8))
    for i in range(n):
        y = gd.relu(y) if i % 2 else gd.add(y, y)
    init, pred = gd.build(y)
    pred(init(), np.zeros((2, 8), np.float32))
    elapsed = time.perf_counter() - t0
    del y, init, pred
    gc.unfreeze()
    return elapsed


def run(quick: bool = False) -> list[Row]:
    model = _mlp()
    init, pred = gd.build(model)
    state = init()
    hand = _hand_written(state)
    keras_model = _keras_predict(state)
    rows = []
    cases = ((256, 1.05, 30 if quick else 200), (1, 1.5, 200 if quick else 2000))
    for batch, target, reps in cases:
        x = np.random.default_rng(0).normal(size=(batch, 784)).astype(np.float32)
        np.testing.assert_allclose(pred(state, x), hand(x), rtol=1e-5, atol=1e-5)
        t = interleaved({"ours": lambda x=x: pred(state, x), "hand": lambda x=x: hand(x)},
                        repeat=reps)
        rows.append(Row(f"MLP 784-512-512-10 predict, batch {batch}", t["ours"], t["hand"],
                        "hand-written NumPy", target))
        if keras_model is not None:  # its own pairing: a slow neighbour evicts caches
            k = interleaved({"keras": lambda x=x: keras_model(x), "hand": lambda x=x: hand(x)},
                            repeat=max(20, reps // 10))
            rows.append(Row(f"Keras 3 NumPy backend model(x), same MLP, batch {batch}",
                            k["keras"], k["hand"], "hand-written NumPy"))
    small, big = (2500, 5000) if quick else (5000, 10000)
    ts = {n: statistics.median(_chain(n) for _ in range(5)) for n in (small, big)}
    rows.append(Row(f"build+init+first predict, {big}-node vs {small}-node chain",
                    ts[big], ts[small], f"{small}-node chain", 2.3))
    return rows


if __name__ == "__main__":
    print(table(run()))
