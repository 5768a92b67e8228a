"""Issue 21 point 8: a model is analyzed once per node, and a new input-shape signature
is checked without running every shape rule of the graph again."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import graph, models
from graphdsl.node import rebuild
from graphdsl.registry import OPS


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


def _llama():
    return models.llama(dict(vocab_size=11, hidden_size=16, intermediate_size=24,
                             num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2))


@pytest.fixture
def rule_calls(monkeypatch):
    """A list that gets one op name per shape-rule call (every op in the registry)."""
    calls: list[str] = []
    for name, opdef in list(OPS.items()):
        def counting(shapes, attrs, _rule=opdef.infer_shape, _name=name):
            calls.append(_name)
            return _rule(shapes, attrs)
        monkeypatch.setitem(OPS, name, dataclasses.replace(opdef, infer_shape=counting))
    return calls


def test_a_new_sequence_length_runs_few_shape_rules(rule_calls):
    model = _llama()
    n_layers = len(graph.analyze(model).order)
    init, predict = gd.build(model)
    state = init()
    for seq in (3, 4):  # the first size of a kind is checked in full (and learnt)
        predict(state, {"input_ids": np.zeros((2, seq), np.int64)})
    rule_calls.clear()
    for seq in range(5, 12):
        predict(state, {"input_ids": np.zeros((2, seq), np.int64)})
    assert len(rule_calls) < n_layers  # in all, for seven new signatures


def test_a_bad_new_signature_gives_the_same_error_as_a_full_check(rule_calls):
    """Sizes of one pattern (here: two distinct sizes >= 2) share the rules learnt from the
    first; only the rule that reads a size (the reshape's -1 divides by 2) runs again, and
    the rules after it."""
    x = gd.input("x", (None, None))
    y = gd.relu(gd.reshape(x, (None, 2, -1)))
    init, predict = gd.build(y)
    state = init()
    predict(state, np.zeros((3, 4), np.float32))  # learns the pattern
    rule_calls.clear()
    predict(state, np.zeros((3, 6), np.float32))
    assert rule_calls == ["reshape", "relu"]
    rule_calls.clear()
    with pytest.raises(gd.GraphDSLError) as fast:
        predict(state, np.zeros((3, 5), np.float32))
    assert rule_calls == ["reshape"]
    with pytest.raises(gd.GraphDSLError) as full:
        graph.infer_shapes(graph.analyze(y), {"x": (3, 5)})
    assert str(fast.value) == str(full.value) and "cannot reshape" in str(full.value)


def _outcome(check, sig):
    try:
        check(sig)
    except gd.GraphDSLError as e:
        return str(e)
    return None


def test_signature_checks_agree_with_full_inference_on_every_size():
    """Every signature of small sizes (0 to 5: the special 0 and 1, equal and unequal
    sizes), in turn, against graph.infer_shapes on its own: same error or none."""
    from graphdsl.signatures import SignatureChecker

    x = gd.input("x", (None, None, 4))
    m = gd.input("m", (None, None))
    h = gd.multiply(x, gd.reshape(m, (None, None, 1)))
    h = gd.concatenate([h, gd.transpose(h, (0, 2, 1))], axis=1)  # seq + 4 rows
    h = gd.reshape(h, (None, 2, -1))
    model = gd.container([gd.relu(h), gd.add(x, gd.reshape(m, (None, -1, 1)))])
    g = graph.analyze(model)
    check = SignatureChecker(g)
    sizes = range(6)
    for b in sizes:
        for s in sizes:
            for t in (s, 1, 2, 5):
                sig = ((b, s, 4), (b, t))
                want = _outcome(lambda q: graph.infer_shapes(g, {"x": q[0], "m": q[1]}), sig)
                assert _outcome(check, sig) == want, sig
    assert check.patterns  # something was learnt
