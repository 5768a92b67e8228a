"""Graph-level properties on random graphs: inferred shapes equal computed shapes."""
import numpy as np
from hypothesis import given, settings
from strategies import graphs

import graphdsl as gd


@given(graphs())
@settings(max_examples=60)
def test_inferred_shapes_match_numpy(case):
    model, concrete, nodes = case
    init, pred = gd.build(model, seed=0)
    rng = np.random.default_rng(0)
    feed = {k: rng.normal(size=s).astype(np.float32) for k, s in concrete.items()}
    outs = pred(init(), feed)
    inferred = gd.get_output_shape(model, concrete)
    assert len(outs) == len(nodes)
    for out, shape, node in zip(outs, inferred, nodes):
        assert out.shape == shape, node.op
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
        sym = node.shape  # the symbolic shape agrees wherever it is known
        assert len(sym) == len(shape) and all(s is None or s == c for s, c in zip(sym, shape))


@given(graphs())
@settings(max_examples=30)
def test_train_mode_matches_inference_without_dropout(case):
    model, concrete, _ = case
    if "dropout" in gd.get_op_counts(model):
        return
    init, pred = gd.build(model, seed=1)
    _, pred_train = gd.build(model, seed=1, mode="train")
    st = init()
    feed = {k: np.ones(s, np.float32) for k, s in concrete.items()}
    for a, b in zip(pred(st, feed), pred_train(st, feed)["prediction"]):
        np.testing.assert_array_equal(a, b)
