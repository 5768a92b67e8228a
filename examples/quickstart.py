"""Quickstart (NumPy only): define an MLP, inspect it, initialize it, predict.

    python examples/quickstart.py

Run time: under a second (0.5 s on the 2-core development machine); it is quick
already, so ``--quick`` runs the same.
"""
import argparse

import numpy as np

import graphdsl as gd

ap = argparse.ArgumentParser(description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--quick", action="store_true", help="the same run (it is quick already)")
ap.parse_args()

# 1. Define: a lazy, immutable graph. Nothing runs yet.
x = gd.input("x", shape=(None, 16))  # None = any batch size
h = gd.dense(x, 32, activation="relu", name="fc1")
h = gd.dropout(h, rate=0.1, name="drop")
y = gd.dense(h, 4, activation="softmax", name="out")

# 2. Inspect: shapes are known before anything runs.
print("model:       ", y)
print("inputs:      ", gd.get_inputs(y))
print("output shape:", gd.get_output_shape(y, {"x": (8, 16)}))
print("ops:         ", gd.get_op_counts(y))

# 3. Build and initialize (deterministic from the seed).
init_fn, predict_fn = gd.build(y, backend="numpy", seed=0)
state = init_fn({"x": np.zeros((1, 16), np.float32)})
print("state:       ", state)
print("fc1 kernel:  ", state.data["fc1"]["kernel"].shape, "(Axon layout: [in, out])")

# 4. Predict.
batch = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
probs = predict_fn(state, batch)
print("predictions: ", probs.shape, probs.dtype, "rows sum to", probs.sum(axis=1).round(4))

# 5. Mistakes are caught with a message that says where and how to fix them.
try:
    predict_fn(state, np.zeros((8, 15), np.float32))
except gd.GraphDSLError as e:
    print("\nA wrong input shape gives:\n" + str(e))
