"""Regenerate the pictures the README shows (needs Graphviz's `dot`):

    python docs/make_figures.py
"""
from __future__ import annotations

from pathlib import Path

import graphdsl as gd
from graphdsl import dora

HERE = Path(__file__).parent


def mlp() -> gd.Node:
    x = gd.input("x", (None, 784))
    h = gd.dense(x, 512, activation="relu", name="fc1")
    h = gd.dropout(h, 0.1)
    return gd.dense(h, 10, activation="softmax", name="out")


def dora_block() -> gd.Node:
    x = gd.input("x", (None, 64))
    q = gd.dense(x, 32, activation="relu", name="attn_q")
    v = gd.dense(x, 32, name="attn_v")
    h = gd.layer_norm(gd.add(q, v), name="ln")
    y = gd.dense(h, 8, name="head")
    return dora.adapt(y, targets=r"attn_.*", rank=4, alpha=8.0)


if __name__ == "__main__":
    print(gd.display.render(mlp(), HERE / "mlp.svg"))
    print(gd.display.render(dora_block(), HERE / "dora_adapted.svg"))
