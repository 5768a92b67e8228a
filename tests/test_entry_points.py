"""Bad or unusual input at every entry point is converted or refused with a GraphDSLError
(issue 10, items 4, 5 and 7)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, lora

torch = pytest.importorskip("torch")


def _adapted(kind, n=6):
    x = gd.input("x", (None, n))
    return (dora if kind == "dora" else lora).wrap(x, gd.dense(x, 4, name="fc"), rank=2,
                                                   dropout=0.1, name="ad")


# -- item 5: empty batches -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dora", "lora"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_an_empty_batch_runs_every_adapter_on_every_backend(kind, backend, mode):
    model = _adapted(kind)
    init_fn, predict_fn = gd.build(model, backend=backend, mode=mode)
    st = init_fn(np.zeros((1, 6), np.float32))
    out = predict_fn(st, np.zeros((0, 6), np.float32))
    y = out["prediction"] if mode == "train" else out
    assert tuple(y.shape) == (0, 4)


@pytest.mark.parametrize("kind", ["dora", "lora"])
@pytest.mark.parametrize("train", [False, True])
def test_an_empty_batch_runs_in_a_module(kind, train):
    model = _adapted(kind)
    m = gd.to_torch(model, gd.build(model)[0](np.zeros((1, 6), np.float32))).train(train)
    assert tuple(m(torch.zeros(0, 6)).shape) == (0, 4)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_reshape_with_minus_one_on_an_empty_batch(backend):
    model = gd.reshape(gd.input("x", (None, 2, 3)), (None, -1))
    assert gd.get_output_shape(model, (0, 2, 3)) == (0, 6)
    y = gd.predict(model, gd.ModelState(), np.zeros((0, 2, 3), np.float32), backend=backend)
    assert tuple(y.shape) == (0, 6)
    m = gd.to_torch(model, gd.ModelState())
    assert tuple(m(torch.zeros(0, 2, 3)).shape) == (0, 6)


def test_an_unexpected_kernel_failure_in_a_module_names_the_layer():
    def picky(x, xp):
        if x.shape[0] == 5:
            raise RuntimeError("five is right out")
        return x * 2

    model = gd.layer(picky, [gd.input("x", (None, 3))], name="picky_layer")
    m = gd.to_torch(model, gd.ModelState())
    with pytest.raises(gd.GraphDSLError, match=r"five is right out\n.*picky_layer") as e:
        m(torch.zeros(5, 3))
    assert isinstance(e.value.__cause__, RuntimeError)
    assert tuple(m(torch.zeros(4, 3)).shape) == (4, 3)


def test_a_module_kernel_failure_names_the_layer():
    model = gd.embedding(gd.input("ids", (None,), dtype="int64"), 5, 3, name="emb")
    m = gd.to_torch(model, gd.build(model)[0]())
    with pytest.raises(gd.GraphDSLError, match="emb"):
        m(torch.tensor([7]))


# -- item 5: names -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["fc1\n", "fc1\r", " fc1", "fc 1", ""])
def test_a_name_with_trailing_newline_or_space_is_refused_everywhere(bad):
    x = gd.input("x", (None, 3))
    with pytest.raises(gd.GraphDSLError, match="invalid layer name"):
        gd.dense(x, 2, name=bad)
    with pytest.raises(gd.GraphDSLError):
        gd.input(bad, (None, 3))
    doc = json.loads(gd.to_json(gd.dense(x, 2, name="fc1")))
    doc["nodes"][-1]["name"] = bad
    doc["outputs"] = bad
    with pytest.raises(gd.GraphDSLError):
        gd.from_json(json.dumps(doc))


# -- item 5: entry points that raised internal errors ------------------------------------------
def _mlp():
    return gd.dense(gd.input("x", (None, 3)), 2, name="fc")


def test_backend_options_and_seed_are_checked_at_build():
    with pytest.raises(gd.GraphDSLError, match="numpy backend"):
        gd.build(_mlp(), device="cuda")
    for seed in (1.5, "0", None, -1):
        with pytest.raises(gd.GraphDSLError, match="seed"):
            gd.build(_mlp(), seed=seed)
    assert gd.build(_mlp(), seed=np.int64(3))[0]().parameter_count() == 8


@pytest.mark.parametrize("template", [{"x": None}, 4, "x", {"x": (2, "a")}, {"x": (2, -3)}])
def test_bad_templates_are_graphdsl_errors(template):
    init_fn = gd.build(_mlp())[0]
    with pytest.raises(gd.GraphDSLError):
        init_fn(template)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_bfloat16_and_big_endian_inputs_are_converted(backend):
    model = _mlp()
    st = gd.build(model)[0]()
    ref = gd.predict(model, st, np.ones((2, 3), np.float32))
    be = gd.predict(model, st, np.ones((2, 3), ">f4"), backend=backend)
    bf = gd.predict(model, st, torch.ones(2, 3, dtype=torch.bfloat16), backend=backend)
    for y in (be, bf):
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6)


def test_huge_sizes_are_attribute_errors():
    doc = json.loads(gd.to_json(_mlp()))
    doc["nodes"][-1]["attrs"]["units"] = 10**30
    with pytest.raises(gd.GraphDSLError, match="units"):
        gd.from_json(json.dumps(doc))
    with pytest.raises(gd.GraphDSLError, match="units"):
        gd.dense(gd.input("x", (None, 3)), 10**30)


# -- item 4: checks live in the op, so loaded graphs get them too -----------------------------
def test_container_keys_must_match_its_inputs_when_loaded():
    x = gd.input("x", (None, 3))
    doc = json.loads(gd.to_json(gd.container({"a": gd.relu(x), "b": gd.tanh(x)})))
    doc["nodes"][-1]["attrs"]["keys"] = ["a"]
    with pytest.raises(gd.GraphDSLError, match="keys"):
        gd.from_json(json.dumps(doc))
    doc["nodes"][-1]["attrs"]["keys"] = ["a", "a"]
    with pytest.raises(gd.GraphDSLError, match="keys"):
        gd.from_json(json.dumps(doc))


def test_embedding_on_a_float_input_is_refused_when_loaded():
    ids = gd.input("ids", (None,), dtype="int64")
    doc = json.loads(gd.to_json(gd.embedding(ids, 5, 3, name="emb")))
    doc["inputs"][0]["dtype"] = "float32"
    with pytest.raises(gd.GraphDSLError, match="integer"):
        gd.from_json(json.dumps(doc))


# -- item 7: behaviours no test guarded --------------------------------------------------------
def test_same_shaped_layers_get_different_weights():
    x = gd.input("x", (None, 8))
    y = gd.dense(gd.dense(x, 8, name="a"), 8, name="b")
    st = gd.build(y, seed=0)[0]()
    assert not np.allclose(st.data["a"]["kernel"], st.data["b"]["kernel"])
    # and the same name with the same seed gives the same weights in another model
    other = gd.build(gd.dense(x, 8, name="a"), seed=0)[0]()
    np.testing.assert_array_equal(other.data["a"]["kernel"], st.data["a"]["kernel"])


@pytest.mark.parametrize("adapter", [dora, lora])
def test_regex_targets_full_match_the_layer_name(adapter):
    x = gd.input("x", (None, 4))
    y = gd.dense(gd.dense(x, 4, name="attn_q"), 4, name="cross_attn_q_proj")
    adapted = adapter.adapt(y, targets="attn_q", rank=2)
    ops = {n.name: n.op for n in gd.topo_order(adapted) if n.name}
    assert ops.get("attn_q_" + adapter.__name__.rsplit(".", 1)[-1]) == adapter.__name__.rsplit(
        ".", 1)[-1]
    assert not any(k.startswith("cross_attn_q_proj_") for k in ops)


def test_a_file_from_before_the_custom_op_rename_still_loads():
    @gd.register_function("entry_points_double")
    def double(x, xp):
        return x * 2

    model = gd.layer(double, gd.input("x", (None, 3)), name="twice")
    doc = json.loads(gd.to_json(model))
    assert doc["nodes"][-1]["op"] == "custom"
    doc["nodes"][-1]["op"] = "layer"  # what graphdsl 0.1 wrote
    old = gd.from_json(json.dumps(doc))
    assert old.op == "custom"
    np.testing.assert_array_equal(gd.predict(old, gd.ModelState(), np.ones((2, 3))),
                                  np.full((2, 3), 2.0))
    from graphdsl.errors import AttributeError_, LayerNameError, NameError_, OptionError
    assert AttributeError_ is OptionError and NameError_ is LayerNameError
