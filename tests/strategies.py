"""Hypothesis strategies: random valid graphs built from the core ops."""
from __future__ import annotations

from hypothesis import strategies as st

import graphdsl as gd

ACTS = ["relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "silu", "elu",
        "leaky_relu", "softplus"]


@st.composite
def graphs(draw, max_layers: int = 8):
    """Returns (model, {input: concrete shape}, nodes): a container of every node built."""
    n_inputs = draw(st.integers(1, 2))
    rank = draw(st.integers(2, 3))
    feat = draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))
    batch = draw(st.integers(1, 3))
    inputs, concrete = [], {}
    for i in range(n_inputs):
        x = gd.input(f"in{i}", (None, *feat))
        inputs.append(x)
        concrete[f"in{i}"] = (batch, *feat)
    pool = list(inputs)
    for _ in range(draw(st.integers(1, max_layers))):
        x = draw(st.sampled_from(pool))
        r = len(x.shape)
        kind = draw(st.sampled_from(
            ["dense", "act", "add", "mul", "sub", "concat", "dropout", "ln", "transpose",
             "matmul", "flatten", "reshape"]))
        if kind == "dense":
            y = gd.dense(x, draw(st.integers(1, 5)),
                         activation=draw(st.sampled_from([None, *ACTS])))
        elif kind == "act":
            y = gd.activation(x, draw(st.sampled_from(ACTS)))
        elif kind in ("add", "mul", "sub"):
            same = [p for p in pool if p.shape == x.shape]
            other = draw(st.sampled_from(same))
            y = {"add": gd.add, "mul": gd.multiply, "sub": gd.subtract}[kind](x, other)
        elif kind == "concat":
            axis = draw(st.integers(1, r - 1)) * draw(st.sampled_from([1, -1]))
            y = gd.concatenate([x, x], axis=axis if axis > 0 else axis)
        elif kind == "dropout":
            y = gd.dropout(x, draw(st.floats(0.0, 0.9)))
        elif kind == "ln":
            y = gd.layer_norm(x, axis=-1)
        elif kind == "transpose":
            perm = [0, *draw(st.permutations(list(range(1, r))))]
            y = gd.transpose(x, perm)
        elif kind == "matmul":
            y = gd.matmul(x, gd.transpose(x, [*range(r - 2), r - 1, r - 2])) if r >= 3 \
                else gd.matmul(x, gd.param(f"p{len(pool)}", (x.shape[-1], 2)))
        elif kind == "flatten":
            y = gd.flatten(x)
        else:
            y = gd.reshape(x, (None, -1))
        pool.append(y)
    nodes = pool[len(inputs):]
    model = gd.container(nodes)
    used = gd.get_inputs(model)
    return model, {k: v for k, v in concrete.items() if k in used}, nodes
