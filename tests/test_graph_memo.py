"""Issue 21 point 8: a model is analyzed once per node, and a new input-shape signature
is checked without running every shape rule of the graph again."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import graph
from graphdsl.node import rebuild


def _mlp():
    x = gd.input("x", (None, 6))
    return gd.dense(gd.dense(x, 8, activation="relu", name="fc1"), 3, name="out")


def test_analyze_is_memoized_per_node():
    y = _mlp()
    g = graph.analyze(y)
    assert graph.analyze(y) is g
    again = rebuild(y, list(y.inputs), name="out")  # equal, but a new output node
    g2 = graph.analyze(again)
    assert g2 is not g and g2.output is again
    assert [n.op for n in g2.order] == [n.op for n in g.order]


def test_a_graph_cannot_be_reassigned():
    g = graph.analyze(_mlp())
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.order = []


def test_an_input_error_does_not_hand_out_the_graphs_dict():
    y = _mlp()
    with pytest.raises(gd.GraphDSLError) as e:
        gd.build(y)[1](gd.build(y)[0](), {"z": np.zeros((1, 6), np.float32)})
    e.value.shapes["x"] = (1, 2)
    assert graph.analyze(y).inputs == {"x": (None, 6)}
