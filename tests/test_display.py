"""Inspection views: Axon's table, Mermaid, DOT, SVG rendering, networkx, repr.

Golden files live in tests/golden/. After an intended change to a view, regenerate
them with ``GRAPHDSL_REGEN_GOLDEN=1 python -m pytest -q tests/test_display.py`` and
read the diff (counts, bytes, shapes) before committing.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphdsl as gd
from graphdsl import display
from graphdsl.errors import GraphDSLError

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("GRAPHDSL_REGEN_GOLDEN") == "1"
HAS_DOT = shutil.which("dot") is not None


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"golden file {path} is missing; run with GRAPHDSL_REGEN_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def footer(table: str) -> dict[str, tuple[int, int]]:
    """{"Total": (count, bytes), ...} parsed from the table footer."""
    out = {}
    for m in re.finditer(r"^(\w+(?: \w+)?) (?:parameters|entries):\s+([\d,]+)\s+\(([\d,]+) bytes",
                         table, re.M):
        out[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
    return out


# -- models ------------------------------------------------------------------------------
def mlp() -> gd.Node:
    x = gd.input("x", (None, 784))
    h = gd.dense(x, 512, activation="relu", name="fc1")
    h = gd.dropout(h, 0.1)
    return gd.dense(h, 10, activation="softmax", name="out")


def branching() -> gd.Node:
    """Two inputs (one int), a fork, a join, a constant, a custom layer, unnamed
    layers and a dict container output."""
    x = gd.input("x", (None, 16))
    ids = gd.input("ids", (None, 4), dtype="int64")
    e = gd.flatten(gd.embedding(ids, 100, 8, name="emb"))
    a = gd.dense(x, 32, name="branch_a")
    b = gd.dense(x, 32, activation="tanh", use_bias=False)
    s = gd.layer_norm(gd.add(a, b), name="ln")
    s = gd.layer(lambda t, xp, k=2.0: t * k, s, name="scale", k=0.5)
    h = gd.concatenate([s, e], axis=-1)
    logits = gd.dense(h, 3, name="head")
    off = gd.constant(np.array([0.5, -0.5, 0.0], np.float32), name="offset")
    return gd.container({"logits": gd.subtract(logits, off), "hidden": s})


def chain(n: int) -> gd.Node:
    y = gd.input("x", (None, 4))
    for _ in range(n):
        y = gd.relu(y)
    return y


# -- MLP --------------------------------------------------------------------------------
def test_mlp_table_counts_and_golden():
    t = display.as_table(mlp(), {"x": (1, 784)})
    f = footer(t)
    # 784*512 + 512 + 512*10 + 10, float32
    assert f["Total"] == (407_050, 407_050 * 4)
    assert f["Trainable"] == (407_050, 1_628_200)
    assert f["Frozen"] == (0, 0)
    assert f["Adapter"] == (0, 0)
    assert f["State"] == (1, 8)  # dropout's uint64 RNG key: not a parameter
    assert "| fc1 ( dense )" in t and "kernel: f32[784][512] (trainable)" in t
    assert "(1, 512)" in t and "(None" not in t  # concrete shapes everywhere
    check_golden("mlp_table.txt", t)


def test_mlp_table_symbolic_and_bare_shape():
    t = display.as_table(mlp())
    assert "(None, 784)" in t and "(None, 10)" in t
    check_golden("mlp_table_symbolic.txt", t)
    # a bare shape works for a one-input model and equals the dict form
    assert display.as_table(mlp(), (7, 784)) == display.as_table(mlp(), {"x": (7, 784)})


def test_mlp_mermaid_golden():
    m = display.as_graph(mlp())
    assert m.splitlines()[0] == "graph TD;"
    assert 'n0[/"x (input) (None, 784)"/];' in m
    check_golden("mlp_mermaid.txt", m)
    assert display.as_graph(mlp(), "LR").startswith("graph LR;")
    assert display.as_graph(mlp(), "left_right").startswith("graph LR;")
    concrete = display.as_graph(mlp(), inputs={"x": (2, 784)})
    assert '"out (dense) (2, 10)"' in concrete


# -- branching graph --------------------------------------------------------------------
def test_branching_table_and_mermaid_golden():
    model = branching()
    t = display.as_table(model, {"x": (2, 16), "ids": (2, 4)})
    # emb 100*8; branch_a 16*32+32; dense_0 16*32; ln 2*32; head (32+32)*3+3
    total = 800 + 544 + 512 + 64 + 195
    assert footer(t)["Total"] == (total, total * 4)
    assert "ids: (2, 4) int64" in t
    assert "| logits: (2, 3)" not in t  # input column names parents, not keys
    check_golden("branching_table.txt", t)
    m = display.as_graph(model)
    # one edge per input, in order: the add reads branch_a then dense_0
    check_golden("branching_mermaid.txt", m)
    assert m.count(" --> ") == sum(len(n.inputs) for n in gd.topo_order(model))


def test_table_counts_match_parameter_specs():
    model = branching()
    specs = [s for layer in gd.get_parameters(model).values() for s in layer.values()
             if s.kind == "param"]
    f = footer(display.as_table(model))
    assert f["Total"][0] == sum(math.prod(s.shape) for s in specs)


# -- frozen flags ------------------------------------------------------------------------
def test_frozen_from_graph_and_from_state():
    model = gd.freeze(mlp(), lambda n: n.name == "fc1")
    t = display.as_table(model)
    assert "kernel: f32[784][512] (frozen)" in t
    f = footer(t)
    assert f["Frozen"] == (401_920, 401_920 * 4)
    assert f["Trainable"] == (5_130, 5_130 * 4)
    assert f["Total"] == (407_050, 1_628_200)
    assert 'fillcolor="#e5e7eb"' in display.to_dot(model)  # muted grey base layer
    assert "class n1 frozen;" in display.as_graph(model)

    init_fn, _ = gd.build(mlp())
    state = init_fn({"x": np.zeros((1, 784), np.float32)})
    assert footer(display.as_table(mlp(), state=state))["Frozen"] == (0, 0)
    state = state.freeze(lambda layer, p: layer == "out")
    f = footer(display.as_table(mlp(), state=state))
    assert f["Frozen"] == (5_130, 5_130 * 4) and f["Trainable"] == (401_920, 401_920 * 4)
    G = gd.to_networkx(mlp(), state=state)
    assert G.nodes["out"]["trainable"] is False and G.nodes["fc1"]["trainable"] is True


def test_float64_state_bytes():
    init_fn, _ = gd.build(mlp(), dtype="float64")
    state = init_fn({"x": np.zeros((1, 784))})
    assert footer(display.as_table(mlp(), state=state))["Total"] == (407_050, 407_050 * 8)


# -- adapters ------------------------------------------------------------------------------
def dora_adapted() -> gd.Node:
    from graphdsl import dora

    x = gd.input("x", (None, 64))
    q = gd.dense(x, 32, activation="relu", name="attn_q")
    v = gd.dense(x, 32, name="attn_v")
    h = gd.layer_norm(gd.add(q, v), name="ln")
    y = gd.dense(h, 8, name="head")
    return dora.adapt(y, targets=r"attn_.*", rank=4, alpha=8.0)


def test_dora_adapted_golden():
    adapted = dora_adapted()
    t = display.as_table(adapted, {"x": (1, 64)})
    f = footer(t)
    base = 2 * (64 * 32 + 32)  # attn_q, attn_v kernel + bias: frozen, under their names
    adapter = 2 * (64 * 4 + 4 * 32 + 32)  # A, B, magnitude per wrapped layer
    rest = 2 * 32 + 32 * 8 + 8  # ln, head: frozen by adapt (PEFT: only adapters train)
    assert f["Adapter"] == (adapter, adapter * 4)
    assert f["Trainable"] == (adapter, adapter * 4)
    assert f["Frozen"] == (base + rest, (base + rest) * 4)
    assert f["Total"] == (base + adapter + rest, (base + adapter + rest) * 4)
    assert "attn_q.kernel: f32[64][32] (frozen)" in t
    assert "magnitude: f32[32] (trainable, adapter)" in t
    check_golden("dora_table.txt", t)
    m = display.as_graph(adapted)
    assert "class n1,n3 adapter;" in m and "class n5,n6 frozen;" in m
    check_golden("dora_mermaid.txt", m)
    dot = display.to_dot(adapted)
    assert dot.count('fillcolor="#fde68a"') == 2 and dot.count('fillcolor="#e5e7eb"') == 2
    G = gd.to_networkx(adapted)
    assert G.nodes["attn_q_dora"]["adapter"] and G.nodes["attn_q_dora"]["category"] == "adapter"
    assert [p["param"] for p in G.nodes["attn_q_dora"]["params"]] == [
        "kernel", "bias", "A", "B", "magnitude"]


def test_dora_wrap_shares_the_base_kernel_once():
    from graphdsl import dora

    x = gd.input("x", (None, 16))
    orig = gd.dense(x, 8, name="attn")
    model = gd.add(orig, dora.wrap(x, orig, rank=2, alpha=4.0))
    t = display.as_table(model)
    f = footer(t)
    base, adapter = 16 * 8 + 8, 16 * 2 + 2 * 8 + 8
    assert f["Total"] == (base + adapter, (base + adapter) * 4)
    assert f["Adapter"][0] == adapter and f["Frozen"][0] == base
    assert "attn.kernel: f32[16][8] (frozen, shared)" in t
    assert "kernel: f32[16][8] (frozen, shared)" in t  # on attn's own row
    assert 'style=dashed' in display.to_dot(model)  # attn -> attn_dora "shares"


def test_dora_layer_base_weight_is_not_an_adapter_parameter():
    from graphdsl import dora, lora

    x = gd.input("x", (None, 12))
    y = dora.dora_layer(x, 12, 6, rank=2, name="d")
    y = lora.lora_layer(y, 6, 4, rank=2, name="l")
    f = footer(display.as_table(y))
    frozen = 12 * 6 + 6 * 4  # base weights
    adapter = (12 * 2 + 2 * 6 + 6) + (6 * 2 + 2 * 4)
    assert f["Frozen"][0] == frozen and f["Adapter"][0] == adapter
    assert f["Trainable"][0] == adapter and f["Total"][0] == frozen + adapter


# -- shared parameters (an adapter-like op reading another layer's kernel) ---------------
@pytest.fixture
def fake_adapter():
    """A throwaway op with category "adapter" sharing the kernel/bias of a base layer, as
    the dora/lora ops do (owner=base, frozen); removed from the registry afterwards."""
    from graphdsl.registry import OPS, OpDef, ParamSpec, register_op

    def params(s, a):
        n_in = s[0][-1]
        return [ParamSpec("kernel", (n_in, a["units"]), trainable=False, owner=a["base"]),
                ParamSpec("bias", (a["units"],), trainable=False, owner=a["base"]),
                ParamSpec("A", (n_in, a["rank"])), ParamSpec("B", (a["rank"], a["units"])),
                ParamSpec("magnitude", (a["units"],), "ones")]

    def lazy_params(s, a):  # a parameter whose size follows an unknown input dim
        return [ParamSpec("w", (s[0][-1], 3))]

    register_op(OpDef("_test_adapter", lambda s, a: s[0][:-1] + (a["units"],),
                      params=params, category="adapter", check_attrs=dict))
    register_op(OpDef("_test_lazy", lambda s, a: s[0][:-1] + (3,), params=lazy_params))
    try:
        yield
    finally:
        OPS.pop("_test_adapter", None)
        OPS.pop("_test_lazy", None)


def adapted_model():
    from graphdsl.node import make_node

    x = gd.input("x", (None, 16))
    base = gd.dense(x, 8, name="attn")
    ad = make_node("_test_adapter", [x], {"units": 8, "rank": 2, "base": "attn"},
                   "attn_adapter")
    return gd.add(base, ad, name="sum")


def test_shared_parameter_counted_once_and_marked(fake_adapter):
    model = adapted_model()
    t = display.as_table(model)
    f = footer(t)
    base, adapter = 16 * 8 + 8, 16 * 2 + 2 * 8 + 8
    assert f["Total"] == (base + adapter, (base + adapter) * 4)
    assert f["Adapter"] == (adapter, adapter * 4)
    # the adapter declares the shared kernel frozen: the merged spec is frozen
    assert f["Frozen"] == (base, base * 4)
    assert f["Trainable"] == (adapter, adapter * 4)
    assert "attn.kernel: f32[16][8] (frozen, shared)" in t
    assert "A: f32[16][2] (trainable, adapter)" in t
    dot = display.to_dot(model)
    assert 'fillcolor="#fde68a"' in dot and "style=dashed" in dot and "uses attn.kernel" in dot
    m = display.as_graph(model)
    assert "class n2 adapter;" in m and "class n1 frozen;" in m
    G = gd.to_networkx(model)
    assert G.nodes["attn_adapter"]["adapter"] is True
    shared = [p for p in G.nodes["attn_adapter"]["params"] if p["owner"] == "attn"]
    assert {p["param"] for p in shared} == {"kernel", "bias"}
    assert all(p["shared"] and not p["trainable"] for p in shared)


def test_unknown_parameter_size_is_reported_not_guessed(fake_adapter):
    from graphdsl.node import make_node

    x = gd.input("x", (None, None))
    y = make_node("_test_lazy", [x], {}, "lazy")
    t = display.as_table(y)
    assert "w: f32[?][3] (trainable)" in t
    assert "+ parameters of unknown size" in t
    assert "+? params" in display.to_dot(y)
    assert gd.to_networkx(y).nodes["lazy"]["params"][0]["size"] is None


# -- robustness --------------------------------------------------------------------------
def test_5k_chain_every_view():
    model = chain(5000)
    t = display.as_table(model, (2, 4))
    assert "relu_4999 ( relu )" in t and footer(t)["Total"] == (0, 0)
    m = display.as_graph(model)
    assert m.count(" --> ") == 5000
    d = display.to_dot(model)
    assert d.count(" -> ") == 5000
    G = gd.to_networkx(model)
    assert G.number_of_nodes() == 5001 and nx.is_directed_acyclic_graph(G)
    assert repr(model) == "#Node<relu inputs: {x: (None, 4)} outputs: (None, 4) nodes: 5001>"


def test_huge_shapes():
    x = gd.input("x", (None, 100_000))
    y = gd.dense(x, 200_000, name="wide")
    big = gd.param("big", (10**7, 10**7))
    model = gd.container((y, big))
    n = 100_000 * 200_000 + 200_000 + 10**14
    f = footer(display.as_table(model))
    assert f["Total"] == (n, 4 * n)
    assert "TB" in display.as_table(model)
    assert "f32[10000000][10000000]" in display.as_table(model)
    assert gd.to_networkx(model).nodes["big"]["params"][0]["size"] == 10**14


def test_repr_mentions_inputs_outputs_nodes():
    r = repr(branching())
    assert r.startswith("#Node<") and "inputs: {x: (None, 16), ids: (None, 4)}" in r
    assert "'logits': (None, 3)" in r and "nodes: 15" in r


def test_tuple_container_same_parent_twice_and_edge_order():
    x = gd.input("x", (None, 3))
    y = gd.input("y", (None, 3))
    d = gd.subtract(y, x)  # order matters
    sq = gd.multiply(x, x)
    model = gd.container((d, sq))
    G = gd.to_networkx(model)
    assert G.edges["y", "subtract_0"]["index"] == 0 and G.edges["x", "subtract_0"]["index"] == 1
    assert G.edges["x", "multiply_0"]["indices"] == [0, 1]
    m = display.as_graph(model)
    assert m.count(" --> ") == 6
    assert "(None, 3), (None, 3)" in display.as_table(model)
    dot = display.to_dot(model)
    assert dot.count("-> n") == 6


def test_networkx_attributes_are_json_friendly():
    G = gd.to_networkx(branching(), {"x": (2, 16), "ids": (2, 4)})
    for name, data in G.nodes(data=True):
        json.dumps(data)
        assert data["name"] == name
    assert G.nodes["head"]["shape"] == (2, 3)
    assert G.nodes["ids"]["dtype"] == "int64"
    assert G.nodes["offset"]["attrs"]["value"] == {"array": [3], "dtype": "float32",
                                                   "value": [0.5, -0.5, 0.0]}
    assert G.nodes["scale"]["attrs"]["opts"] == {"k": 0.5}
    kernel = G.nodes["head"]["params"][0]
    assert kernel["name"] == "kernel" and kernel["shape"] == (64, 3) and kernel["trainable"]
    assert G.graph["output_shape"] == {"logits": (2, 3), "hidden": (2, 32)}  # custom layer probed
    assert list(nx.topological_sort(G))[0] == "x"
    # networkx agrees with the graph's own order and op counts
    assert [d["order"] for _, d in G.nodes(data=True)] == list(range(15))
    ops = {}
    for _, d in G.nodes(data=True):
        ops[d["op"]] = ops.get(d["op"], 0) + 1
    assert ops == gd.get_op_counts(branching())


NASTY_KEYS = ['a"b', "x#quot;", "<br>", "back\\slash", "new\nline", "é ü"]


def test_labels_are_escaped():
    x = gd.input("x", (None, 2))
    model = gd.container({k: gd.relu(x) for k in NASTY_KEYS})
    m = display.as_graph(model)
    for line in m.splitlines()[1:]:
        if line.startswith("n") and "-->" not in line:
            label = re.fullmatch(r'n\d+(?:\[/"|\["|\[\("|\{\{")(.*?)(?:"/\]|"\]|"\)\]|"\}\});',
                                 line).group(1)
            assert '"' not in label and "<" not in label and ">" not in label
    assert "a#quot;b" in m and "x#35;quot;" in m and "#lt;br#gt;" in m
    dot = display.to_dot(model)
    assert "'a\\\"b'" in dot and "back\\\\\\\\slash" in dot
    if HAS_DOT:
        svg = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True,
                             check=True).stdout
        text = " ".join("".join(e.itertext()) for e in ET.fromstring(svg).iter()
                        if e.tag.endswith("text"))
        assert "'a\"b'" in text and "'<br>'" in text and "'back\\\\slash'" in text
        assert "'new\\nline'" in text and "é ü" in text


def test_user_mistakes_raise_graphdsl_errors(tmp_path, monkeypatch):
    with pytest.raises(GraphDSLError, match="direction"):
        display.as_graph(mlp(), "sideways")
    with pytest.raises(GraphDSLError, match="ModelState"):
        display.as_table(mlp(), state={"fc1": {}})
    with pytest.raises(GraphDSLError, match="784"):
        display.as_table(mlp(), {"x": (1, 783)})
    with pytest.raises(GraphDSLError, match="model"):
        display.as_table("not a model")
    with pytest.raises(GraphDSLError, match="unknown format"):
        display.render(mlp(), tmp_path / "m.jpeg2000")
    monkeypatch.setattr(display, "graphviz_binary", lambda: None)
    with pytest.raises(GraphDSLError, match="apt-get install graphviz"):
        display.render(mlp(), tmp_path / "m.svg")
    # .dot needs no Graphviz
    p = display.render(mlp(), tmp_path / "m.dot")
    assert Path(p).read_text() == display.to_dot(mlp())


# -- rendering ----------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
@pytest.mark.parametrize("make", [mlp, branching, lambda: chain(30)])
def test_render_svg_is_xml_with_every_layer_name(tmp_path, make):
    model = make()
    path = display.render(model, tmp_path / "model.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    texts = ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("text")]
    for name in gd.graph.analyze(model).names.values():
        assert any(t.startswith(f"{name} (") for t in texts), name


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
def test_render_png(tmp_path):
    path = display.render(mlp(), str(tmp_path / "model.png"))
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GraphDSLError, match="could not render"):
        display.render(mlp(), tmp_path / "no_such_dir" / "m.svg")


# -- random valid graphs --------------------------------------------------------------------
@gd.register_function("display_test_double")
def _double(t, xp):
    return t * 2


UNARY = ["relu", "gelu", "sigmoid", "tanh", "softmax", "silu", "elu", "leaky_relu",
         "softplus", "log_softmax"]


@st.composite
def random_models(draw):
    """Random valid DAGs from the core ops: several inputs (one maybe int for an
    embedding), forks, joins, constants, params, custom layers, named and unnamed
    layers, and a node or container output."""
    dims = st.integers(1, 4)
    pool: list[gd.Node] = []
    n_in = draw(st.integers(1, 3))
    for i in range(n_in):
        pool.append(gd.input(f"in{i}", (None, draw(dims))))
    if draw(st.booleans()):
        ids = gd.input("ids", (None, draw(dims)), dtype="int64")
        pool.append(gd.embedding(ids, 10, draw(dims)))
    used_names: set[str] = set()

    def name():
        if draw(st.booleans()):
            return None
        n = draw(st.sampled_from(["a", "b", "c", "d", "enc", "dec", "h"]))
        k = draw(st.integers(0, 3))
        nm = f"{n}{k}"
        if nm in used_names:
            return None
        used_names.add(nm)
        return nm

    for _ in range(draw(st.integers(1, 15))):
        x = draw(st.sampled_from(pool[-2:] if draw(st.booleans()) else pool))
        kind = draw(st.sampled_from(["dense", "unary", "dropout", "ln", "binary", "concat",
                                     "flatten", "const", "param", "custom", "reshape"]))
        last = x.shape[-1]
        if kind == "dense":
            y = gd.dense(x, draw(dims), activation=draw(st.sampled_from([None, "relu"])),
                         use_bias=draw(st.booleans()), name=name())
        elif kind == "unary":
            y = gd.activation(x, draw(st.sampled_from(UNARY)), name=name())
        elif kind == "dropout":
            y = gd.dropout(x, 0.25, name=name())
        elif kind == "ln":
            y = gd.layer_norm(x, name=name())
        elif kind == "binary":
            same = [p for p in pool if p.shape == x.shape]
            other = draw(st.sampled_from(same))
            op = draw(st.sampled_from([gd.add, gd.subtract, gd.multiply]))
            y = op(x, other, name=name())
        elif kind == "concat":
            same = [p for p in pool if len(p.shape) == len(x.shape)
                    and p.shape[:-1] == x.shape[:-1]]
            y = gd.concatenate([x, draw(st.sampled_from(same))], name=name())
        elif kind == "flatten":
            y = gd.flatten(x, name=name()) if len(x.shape) >= 2 else gd.relu(x)
        elif kind == "reshape":
            y = gd.reshape(x, (None, -1), name=name()) if len(x.shape) >= 2 else gd.tanh(x)
        elif kind == "const":
            c = gd.constant(np.ones((last,), np.float32), name=name())
            y = gd.add(x, c)
        elif kind == "param":
            w = gd.param(name() or f"w{len(pool)}", (last, draw(dims)))
            y = gd.matmul(x, w)
        else:
            y = gd.layer("display_test_double", x, name=name())
        pool.append(y)
    extra = draw(st.lists(st.sampled_from(pool[:-1] or pool), max_size=2, unique_by=id))
    outs = [o for o in extra if o is not pool[-1]] + [pool[-1]]
    shape = draw(st.sampled_from(["node", "tuple", "dict"]))
    if shape == "node" or len(outs) == 1:
        model = outs[-1]
    elif shape == "tuple":
        model = gd.container(outs)
    else:
        model = gd.container({f"out{i}": o for i, o in enumerate(outs)})
    # sometimes freeze some layers, or put DoRA/LoRA adapters on some dense layers
    how = draw(st.sampled_from(["plain", "freeze", "dora", "lora"]))
    if how == "freeze":
        model = gd.freeze(model, lambda n: n.op in ("dense", "layer_norm"))
    elif how in ("dora", "lora"):
        g = gd.graph.analyze(model)
        dense = [g.names[n.id] for n in g.order if n.op == "dense"]
        if dense:
            chosen = draw(st.lists(st.sampled_from(dense), min_size=1, unique=True))
            mod = gd.dora if how == "dora" else gd.lora
            model = mod.adapt(model, targets=chosen, rank=draw(st.integers(1, 3)))
    return model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models(), st.integers(1, 3))
def test_every_view_on_random_graphs(model, batch):
    g = gd.graph.analyze(model)
    names = list(g.names.values())
    n_edges = sum(len(n.inputs) for n in g.order)
    concrete = {k: tuple(batch if d is None else d for d in s) for k, s in g.inputs.items()}
    for inputs in (None, concrete):
        t = display.as_table(model, inputs)
        for name in names:
            assert f"| {name} ( " in t
        specs = [s for layer in gd.get_parameters(model).values() for s in layer.values()
                 if s.kind == "param"]
        f = footer(t)
        assert f["Total"][0] == sum(math.prod(s.shape) for s in specs)
        assert f["Total"] == tuple(a + b for a, b in zip(f["Trainable"], f["Frozen"]))
        adapter_ops = sum(1 for n in g.order if gd.OPS[n.op].category == "adapter")
        assert (f["Adapter"][0] > 0) == (adapter_ops > 0)
        m = display.as_graph(model, inputs=inputs)
        assert m.count(" --> ") == n_edges
        assert len(m.splitlines()) - 1 - n_edges - 2 * sum(
            1 for ln in m.splitlines() if ln.startswith("classDef")) == len(names)
        d = display.to_dot(model, inputs=inputs)
        assert len(re.findall(r"^  n\d+ \[label=", d, re.M)) == len(names)
        G = gd.to_networkx(model, inputs)
        assert set(G.nodes) == set(names) and nx.is_directed_acyclic_graph(G)
        assert sum(len(e["indices"]) for *_, e in G.edges(data=True)) == n_edges
        json.dumps(dict(G.nodes(data=True)))
    repr(model)
    if HAS_DOT and batch == 1:
        svg = subprocess.run(["dot", "-Tsvg"], input=d.encode(), capture_output=True,
                             check=True).stdout
        ET.fromstring(svg)
