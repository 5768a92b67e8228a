"""Dotted layer names (Hugging Face module paths) everywhere: construction, JSON, files,
display, CLI and to_torch's nested submodules."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora

PATHS = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]


def _model():
    x = gd.input("x", (None, 6))
    h = gd.dense(x, 6, activation="relu", name=PATHS[0])
    h = gd.dense(h, 6, name=PATHS[1])
    return gd.dense(h, 3, name=PATHS[2])


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj", "a.0", "a.0.b_1",
                                  "transformer.h.11.attn.c_attn", "_x.y"])
def test_valid_dotted_names(name):
    assert gd.dense(gd.input("x", (None, 2)), 2, name=name).name == name


@pytest.mark.parametrize("name", ["a..b", "a.", ".a", "0.a", "a.b c", "a.b\n", "a.-1"])
def test_invalid_dotted_names(name):
    with pytest.raises(gd.GraphDSLError, match="invalid layer name"):
        gd.dense(gd.input("x", (None, 2)), 2, name=name)


def test_input_names_stay_identifiers():
    with pytest.raises(gd.GraphDSLError, match="input names are identifiers"):
        gd.input("model.x", (None, 2))
    doc = json.loads(gd.to_json(_model()))
    doc["inputs"][0]["name"] = "a.b"
    doc["nodes"][0]["inputs"] = ["a.b"]
    with pytest.raises(gd.GraphDSLError):
        gd.from_json(json.dumps(doc))


def test_json_files_and_display_keep_dotted_names(tmp_path):
    model = _model()
    st = gd.build(model)[0](np.zeros((1, 6), np.float32))
    assert sorted(st.data) == sorted(PATHS)
    again = gd.from_json(gd.to_json(model))
    assert [n.name for n in gd.topo_order(again)][1:] == [PATHS[0], "relu_0", *PATHS[1:]]
    gd.save(tmp_path / "m.gdsl", model, st)
    m2, s2 = gd.load(tmp_path / "m.gdsl")
    assert s2 == st and gd.to_json(m2) == gd.to_json(model)
    table = gd.display.as_table(model, {"x": (2, 6)})
    assert all(p in table for p in PATHS)
    mermaid = gd.display.as_graph(model)
    for line in mermaid.splitlines()[1:]:  # node ids are n0, n1, ...: never the dotted name
        assert line.split("[")[0].split(" ")[0].replace(";", "").startswith("n")
    dot = gd.display.to_dot(model)
    assert '"model.layers' not in dot.split("label=")[0]
    assert gd.to_networkx(model).has_edge(PATHS[0], "relu_0")
    assert gd.to_networkx(model).has_edge("relu_0", PATHS[1])
    r = subprocess.run([sys.executable, "-m", "graphdsl", "summary", str(tmp_path / "m.gdsl")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and PATHS[1] in r.stdout


def test_to_torch_nests_submodules_along_the_dots():
    torch = pytest.importorskip("torch")
    model = dora.adapt(_model(), targets=[PATHS[0]], rank=2)
    st = gd.build(model)[0](np.zeros((1, 6), np.float32))
    m = gd.to_torch(model, st)
    keys = list(m.state_dict())
    assert keys[:2] == [f"{PATHS[0]}.kernel", f"{PATHS[0]}.bias"]
    assert f"{PATHS[0]}_dora.A" in keys and f"{PATHS[2]}.kernel" in keys
    assert isinstance(m.get_submodule("model.layers.0.self_attn"), torch.nn.Module)
    fully = dict(m.named_parameters())
    assert set(fully) == {k for k in keys}
    x = torch.randn(4, 6)
    np.testing.assert_allclose(m(x).detach().numpy(), gd.predict(model, st, x.numpy()),
                               rtol=1e-5, atol=1e-6)
    assert gd.from_torch(m) == st
    m2 = gd.to_torch(model, st)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))


def test_a_layer_path_through_a_parameter_is_a_clear_error():
    pytest.importorskip("torch")
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dense(x, 4, name="a"), 4, name="a.kernel")
    with pytest.raises(gd.GraphDSLError, match="both a parameter and a layer path"):
        gd.to_torch(y, gd.build(y)[0]())


def test_a_list_target_matches_the_name_or_its_last_segments_like_peft():
    x = gd.input("x", (None, 4))
    h = x
    for i in range(2):
        h = gd.dense(h, 4, name=f"model.layers.{i}.self_attn.q_proj")
        h = gd.dense(h, 4, name=f"model.layers.{i}.self_attn.v_proj")
        h = gd.dense(h, 4, name=f"model.layers.{i}.self_attn.xq_proj")
    adapted = dora.adapt(h, targets=["q_proj", "layers.1.self_attn.v_proj"], rank=2)
    ops = {n.name: n.op for n in gd.topo_order(adapted)}
    assert sorted(k for k, v in ops.items() if v == "dora") == [
        "model.layers.0.self_attn.q_proj_dora", "model.layers.1.self_attn.q_proj_dora",
        "model.layers.1.self_attn.v_proj_dora"]
    with pytest.raises(gd.GraphDSLError, match="matches no adaptable layer"):
        dora.adapt(h, targets=["k_proj"], rank=2)
    with pytest.raises(gd.GraphDSLError, match="matches no adaptable layer"):
        dora.adapt(h, targets=["proj"], rank=2)  # a partial segment is no match
