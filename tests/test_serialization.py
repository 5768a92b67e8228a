"""JSON model definitions: round trips for every op case (tests/op_cases.py), hand-written
files, the schema, and every malformed-definition error."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_outputs
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import CASES, cases_for, scaled_tanh
from strategies import graphs

import graphdsl as gd
from graphdsl.errors import OptionError, SerializationError
from graphdsl.graph import analyze
from graphdsl.io import FORMAT_VERSION, schema


def _x(d=6, name="x"):
    return gd.input(name, (None, d))


def _param_table(model):
    return {k: (v.shape, v.trainable, v.owner, v.kind, v.dtype)
            for k, v in analyze(model).params.items()}


def check_round_trip(model, xs):
    """``model`` through JSON and back: the same text, shapes, parameters, nodes, weights
    for a seed, and predictions for the inputs ``xs`` (if any)."""
    text = gd.to_json(model)
    back = gd.from_json(text)
    assert gd.to_json(back) == text  # identical
    assert gd.get_output_shape(back) == gd.get_output_shape(model)
    assert gd.get_inputs(back) == gd.get_inputs(model)
    assert _param_table(back) == _param_table(model)
    assert gd.get_op_counts(back) == gd.get_op_counts(model)
    g1, g2 = analyze(model), analyze(back)
    assert [g1.name(n) for n in g1.order] == [g2.name(n) for n in g2.order]
    assert [n.frozen for n in g1.order] == [n.frozen for n in g2.order]
    # same seed -> same weights (same names, same specs); same state -> same predictions
    s1 = gd.build(model, seed=3)[0]()
    s2 = gd.build(back, seed=3)[0]()
    assert s1 == s2
    if xs:
        arg = xs if len(xs) != 1 else next(iter(xs.values()))
        assert_same_outputs(gd.predict(model, s1, arg), gd.predict(back, s1, arg))
    return text, back


@pytest.mark.parametrize("case", cases_for("json"))
def test_round_trip_every_op(case, rng):
    model = case.build()
    assert case.op in gd.get_op_counts(model)
    check_round_trip(model, case.feed(model, rng))


def test_default_names_become_explicit_and_tuples_come_back_as_tuples():
    model = gd.transpose(gd.reshape(gd.dense(_x(), 6), (None, 2, 3)), (0, 2, 1))
    doc = json.loads(gd.to_json(model))
    assert [n["name"] for n in doc["nodes"]] == ["dense_0", "reshape_0", "transpose_0"]
    back = gd.from_json(gd.to_json(model))
    assert back.name == "transpose_0"
    assert back.attrs["axes"] == (0, 2, 1) and isinstance(back.attrs["axes"], tuple)
    assert back.inputs[0].attrs["shape"] == (None, 2, 3)
    assert back.shape == model.shape == (None, 3, 2)


def test_constant_array_keeps_dtype_shape_and_exact_values():
    vals = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    model = gd.add(gd.input("x", (None, 2, 3)), gd.constant(vals, name="c"))
    doc = json.loads(gd.to_json(model))
    arr = doc["nodes"][0]["attrs"]["value"]["$array"]
    assert arr["dtype"] == "float32" and arr["shape"] == [2, 3]
    back = gd.from_json(gd.to_json(model))
    c = back.inputs[1].attrs["value"]
    assert c.dtype == np.float32 and c.shape == (2, 3)
    np.testing.assert_array_equal(c, vals)  # float32 -> JSON -> float32 is exact


def test_compact_form_round_trips_to_the_same_model():
    model = CASES["dora/attrs"].build()
    compact = gd.to_json(model, compact=True)
    assert "\n" not in compact
    assert gd.to_json(gd.from_json(compact)) == gd.to_json(model)


def test_every_output_validates_against_the_shipped_schema():
    """The schema is published documentation, not a load-time check: this test keeps it in
    step with what to_json writes (and check_structure accepts)."""
    import jsonschema  # a dev dependency

    sch = schema()
    jsonschema.Draft202012Validator.check_schema(sch)
    for case in CASES.values():
        jsonschema.validate(json.loads(gd.to_json(case.build())), sch)


def test_the_example_definition_validates_against_the_shipped_schema():
    import jsonschema  # a dev dependency

    text = (Path(__file__).resolve().parents[1] / "examples" / "mlp.json").read_text("utf-8")
    sch = schema()
    jsonschema.validate(json.loads(text), sch)
    jsonschema.validate(json.loads(gd.to_json(gd.from_json(text))), sch)


# -- hand-written definitions ----------------------------------------------------------------
def _doc(nodes, outputs="out", inputs=None):
    return {"format_version": 1,
            "inputs": inputs if inputs is not None else [{"name": "x", "shape": [None, 4]}],
            "nodes": nodes, "outputs": outputs}


def test_hand_written_defaults_any_order_and_container_outputs(rng):
    doc = _doc([
        {"op": "softmax", "name": "probs", "inputs": ["out"]},
        {"op": "dense", "name": "out", "inputs": ["h"], "attrs": {"units": 3}},
        {"op": "dense", "name": "h", "inputs": ["x"], "attrs": {"units": 5,
                                                              "activation": "tanh"}},
    ], outputs={"probs": "probs", "logits": "out"})
    model = gd.from_json(json.dumps(doc))
    assert model.op == "container" and model.attrs["keys"] == ("probs", "logits")
    assert gd.get_output_shape(model, {"x": (2, 4)}) == {"probs": (2, 3), "logits": (2, 3)}
    # the reference: the same model built in Python
    x = gd.input("x", (None, 4))
    h = gd.dense(x, 5, activation="tanh", name="h")
    out = gd.dense(h, 3, name="out")
    ref = gd.container({"probs": gd.softmax(out, name="probs"), "logits": out})
    assert gd.to_json(model) == gd.to_json(ref)
    listed = gd.from_json(json.dumps({**doc, "outputs": ["out", "probs"]}))
    assert isinstance(gd.get_output_shape(listed), tuple)


def test_examples_mlp_json_is_a_64_32_10_mlp(rng):
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / "mlp.json"
    model = gd.from_json(path.read_text())
    assert gd.get_inputs(model) == {"x": (None, 64)}
    assert gd.get_output_shape(model, {"x": (7, 64)}) == (7, 10)
    state = gd.build(model, seed=0)[0]()
    assert state.data["fc1"]["kernel"].shape == (64, 32)
    assert state.data["fc2"]["kernel"].shape == (32, 10)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    y = gd.predict(model, state, x)
    # independent reference in NumPy
    h = np.maximum(x @ state.data["fc1"]["kernel"] + state.data["fc1"]["bias"], 0)
    z = h @ state.data["fc2"]["kernel"] + state.data["fc2"]["bias"]
    ref = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(
        1, keepdims=True)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# -- custom functions ------------------------------------------------------------------------------
def test_unregistered_custom_layer_fails_at_save_time():
    model = gd.layer(lambda x, xp: xp.sin(x), _x(), name="sine")
    with pytest.raises(SerializationError, match="not registered.*") as e:
        gd.to_json(model)
    assert "sine" in str(e.value) and "register_function" in str(e.value)


def test_unregistered_initializer_fails_at_save_time():
    model = gd.dense(_x(), 3, kernel_initializer=lambda s, d, r: np.zeros(s, d), name="d")
    with pytest.raises(SerializationError, match="kernel_initializer.*not registered"):
        gd.to_json(model)


def test_function_missing_at_load_time_is_a_clear_error():
    text = gd.to_json(CASES["custom/attrs"].build()).replace("ser_scaled_tanh",
                                                              "nobody_registered_this")
    with pytest.raises(SerializationError, match="nobody_registered_this.*not registered"):
        gd.from_json(text)


def test_custom_layer_without_output_shape_is_probed():
    doc = _doc([{"op": "layer", "name": "out", "inputs": ["x"],
                 "attrs": {"fn": "ser_scaled_tanh", "opts": {"k": 3.0}}}])
    model = gd.from_json(json.dumps(doc))
    assert model.shape == (None, 4) and model.attrs["opts"] == {"k": 3.0}


# -- malformed definitions ----------------------------------------------------------------
BAD = {
    "unknown op": (_doc([{"op": "conv9d", "name": "out", "inputs": ["x"]}]),
                   "unknown op 'conv9d'"),
    "cycle": (_doc([{"op": "relu", "name": "a", "inputs": ["out"]},
                    {"op": "add", "name": "out", "inputs": ["x", "a"]}]), "cycle"),
    "self loop": (_doc([{"op": "relu", "name": "out", "inputs": ["out"]}]), "cycle"),
    "dangling": (_doc([{"op": "relu", "name": "out", "inputs": ["ghost"]}]),
                 "reads 'ghost', which is not defined"),
    "dangling output": (_doc([{"op": "relu", "name": "a", "inputs": ["x"]}], outputs="zz"),
                        "'outputs' names 'zz'"),
    "duplicate name": (_doc([{"op": "relu", "name": "out", "inputs": ["x"]},
                             {"op": "tanh", "name": "out", "inputs": ["x"]}]),
                       "used twice"),
    "duplicate input name": (_doc([{"op": "relu", "name": "x", "inputs": ["x"]}],
                                  outputs="x"), "used twice"),
    "unused node": (_doc([{"op": "relu", "name": "out", "inputs": ["x"]},
                          {"op": "tanh", "name": "dead", "inputs": ["x"]}]),
                    "do not feed the outputs"),
    "shape mismatch": (_doc([{"op": "dense", "name": "out", "inputs": ["x"],
                              "attrs": {"units": 3}, "shape": [None, 4]}]),
                       "declares shape"),
    "input as node": (_doc([{"op": "input", "name": "out", "inputs": []}]), "op 'input'"),
    "bad reserved key": (_doc([{"op": "relu", "name": "out", "inputs": ["x"],
                                "attrs": {"q": {"$eval": "1"}}}]), "reserved"),
    "bad array": (_doc([{"op": "constant", "name": "c", "attrs": {"value": {"$array": {
        "dtype": "float32", "shape": [3], "data": [1.0, 2.0]}}}},
        {"op": "add", "name": "out", "inputs": ["x", "c"]}]), "does not match its shape"),
    "bad array dtype": (_doc([{"op": "constant", "name": "out", "attrs": {"value": {
        "$array": {"dtype": "object", "shape": [1], "data": [1]}}}}], inputs=[]), "dtype"),
    "int array float data": (_doc([{"op": "constant", "name": "out", "attrs": {"value": {
        "$array": {"dtype": "int64", "shape": [1], "data": [1.5]}}}}], inputs=[]),
        "does not fit"),
    "wrong version": ({**_doc([]), "format_version": 3}, "format_version 3"),
    "no version": ({k: v for k, v in _doc([]).items() if k != "format_version"},
                   "format_version"),
    "top-level typo": ({**_doc([{"op": "relu", "name": "out", "inputs": ["x"]}]),
                        "nodez": []}, "unknown top-level key"),
    "not an object": ([1, 2, 3], "not an object"),
    "node not an object": (_doc(["relu"]), "nodes\\[0\\] is not an object"),
    "empty outputs": (_doc([], outputs=[]), "'outputs'"),
    "bad input shape": (_doc([], inputs=[{"name": "x", "shape": "big"}], outputs="x"),
                        "shape"),
    "wrong format": ({**_doc([]), "format": "keras"}, "'format' is 'keras'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_definition_is_a_serialization_error(case):
    doc, msg = BAD[case]
    with pytest.raises(SerializationError, match=msg):
        gd.from_json(json.dumps(doc))


@pytest.mark.parametrize("case", ["unknown op", "cycle", "dangling", "bad array",
                                  "top-level typo"])
def test_structural_checks_hold_without_jsonschema(case, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import fails
    doc, msg = BAD[case]
    with pytest.raises(SerializationError, match=msg):
        gd.from_json(json.dumps(doc))


@pytest.mark.parametrize("attrs,msg", [
    ({"units": 3, "activatoin": "relu"}, r"no option\(s\) \['activatoin'\]"),
    ({"units": 3, "activation": {"a": 1}}, "unknown activation"),
])
def test_unknown_or_mistyped_attribute_is_the_usual_attribute_error(attrs, msg):
    doc = _doc([{"op": "dense", "name": "out", "inputs": ["x"], "attrs": attrs}])
    with pytest.raises(OptionError, match=msg) as e:
        gd.from_json(json.dumps(doc))
    assert "node 'out'" in str(e.value) and "fix:" in str(e.value)


def test_bad_attribute_value_is_the_usual_attribute_error():
    doc = _doc([{"op": "dense", "name": "out", "inputs": ["x"], "attrs": {"units": -3}}])
    with pytest.raises(gd.GraphDSLError, match="units") as e:
        gd.from_json(json.dumps(doc))
    assert "node 'out'" in str(e.value)  # where: the node in the file


def test_bad_shapes_are_the_usual_shape_error():
    doc = _doc([{"op": "reshape", "name": "out", "inputs": ["x"],
                 "attrs": {"shape": [None, 3]}}])
    with pytest.raises(gd.GraphDSLError, match="cannot reshape"):
        gd.from_json(json.dumps(doc))


@pytest.mark.parametrize("text,msg", [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ('{"format_version": 1, "format_version": 1}', "twice"),
    ('{"format_version": NaN}', "NaN"),
    ("[" * 100_000 + "]" * 100_000, "parsed|not an object|JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (12, "must be a str"),
])
def test_unparseable_text_is_a_serialization_error(text, msg):
    with pytest.raises(SerializationError, match=msg):
        gd.from_json(text)


def test_json_cannot_hold_infinite_attributes():
    # an infinite value inside a custom layer's opts is caught at save time
    m = gd.layer(scaled_tanh, _x(), name="t", output_shape=(None, 6), k=float("inf"))
    with pytest.raises(SerializationError, match="JSON cannot hold"):
        gd.to_json(m)


def test_format_version_constant():
    assert json.loads(gd.to_json(_x()))["format_version"] == FORMAT_VERSION == 2


# -- random graphs ------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(graphs(), st.booleans(), st.integers(0, 2**16))
def test_random_graphs_round_trip(g, freeze_some, seed):
    model, shapes, nodes = g
    if freeze_some:
        model = gd.freeze(model, lambda n: n.op == "dense")
    text = gd.to_json(model)
    back = gd.from_json(text)
    assert gd.to_json(back) == text
    assert gd.get_output_shape(back, shapes) == gd.get_output_shape(model, shapes)
    state = gd.build(model, seed=seed)[0]()
    assert gd.build(back, seed=seed)[0]() == state
    rng = np.random.default_rng(seed)
    xs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    assert_same_outputs(gd.predict(model, state, xs), gd.predict(back, state, xs))


def test_bytes_with_a_utf8_bom_are_accepted():
    model = CASES["dense/attrs"].build()
    text = gd.to_json(model)
    assert gd.to_json(gd.from_json(b"\xef\xbb\xbf" + text.encode("utf-8"))) == text
