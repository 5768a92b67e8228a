"""Core robustness: wrong types where a node is expected, and deepcopy/pickle of graphs
far deeper than the recursion limit."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import graphdsl as gd

X = gd.input("x", (None, 4))


@pytest.mark.parametrize("value", [None, 3, "x", {"a": 1}.keys(), np.zeros(3)])
@pytest.mark.parametrize("call", [
    gd.container, lambda v: gd.layer(lambda a, xp: a, v), gd.topo_order, gd.get_op_counts,
    gd.freeze, lambda v: gd.map_nodes(v, lambda n: n), gd.get_parameters,
], ids=["container", "layer", "topo_order", "get_op_counts", "freeze", "map_nodes",
        "get_parameters"])
def test_wrong_type_where_a_node_is_expected(call, value):
    with pytest.raises(gd.GraphDSLError) as e:
        call(value)
    msg = str(e.value)
    assert "node" in msg and "fix:" in msg


def test_container_none_names_the_argument():
    with pytest.raises(gd.GraphDSLError, match=r"outputs of container .* got NoneType"):
        gd.container(None)
    with pytest.raises(gd.GraphDSLError, match="input 1 of container is a NoneType"):
        gd.container([X, None])
    with pytest.raises(gd.GraphDSLError, match=r"list \(or tuple\) of nodes, got Node"):
        gd.container(X)  # ambiguous: a one-output tuple is container([x])


N = 30_000  # far beyond the recursion limit (1000)


@pytest.fixture(scope="module")
def chain():
    h = gd.dense(gd.input("x", (None, 4), meta={"source": "test"}), 4, name="fc")
    one = gd.constant(np.ones(4, np.float32), name="one")
    for i in range(N):
        h = h + one if i % 2 == 0 else gd.relu(h)
    return h


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deep_chain_copies_and_pickles(chain, how):
    c = copy.deepcopy(chain) if how == "deepcopy" else pickle.loads(pickle.dumps(chain))
    a, b = gd.topo_order(chain), gd.topo_order(c)
    assert len(b) == len(a) == N + 3
    assert all(x is not y and (x.op, x.name, x.shape, x.dtype, x.params, x.where, x.frozen)
               == (y.op, y.name, y.shape, y.dtype, y.params, y.where, y.frozen)
               for x, y in zip(a, b))
    assert [[b.index(i) for i in n.inputs] for n in b[-3:]] == \
        [[a.index(i) for i in n.inputs] for n in a[-3:]]
    assert len({n.id for n in b} | {n.id for n in a}) == 2 * len(a)  # fresh ids
    assert dict(b[0].attrs["meta"]) == {"source": "test"}
    const = next(n for n in b if n.op == "constant")
    assert not const.attrs["value"].flags.writeable  # still immutable
    st = gd.build(gd.topo_order(c)[1])[0]()  # the chain's only parameters: fc's
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    fc = x @ st.data["fc"]["kernel"] + st.data["fc"]["bias"]
    # relu(h + 1) N/2 times: relu(fc + 1) + (N/2 - 1)
    np.testing.assert_allclose(gd.predict(c, st, x), np.maximum(fc + 1, 0) + N // 2 - 1,
                               rtol=1e-6)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_nodes_shared_between_objects(how):
    a = gd.dense(X, 3, name="a")
    b = gd.dense(a, 2, name="b")
    f = copy.deepcopy if how == "deepcopy" else (lambda o: pickle.loads(pickle.dumps(o)))
    for obj, (first, second) in [({"b": b, "a": a}, ("b", "a")), ([a, b], (1, 0))]:
        r = f(obj)
        assert r[first].inputs[0] is r[second] if first == "b" else r[1].inputs[0] is r[0]
    assert copy.copy(b) is b  # immutable
    both = f((b, a))
    st = gd.build(gd.container(list(both)))[0]()  # one graph again: no duplicate layers
    assert set(st.data) == {"a", "b"}
