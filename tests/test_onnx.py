"""ONNX export: every op, the random graphs, adapted models and the transformer families,
each checked by ``onnx.checker`` (full check) and run by ONNX Runtime (CPU) against the
NumPy backend to 1e-5."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from graphdsl.backends.onnx_backend import RULES, output_names  # noqa: E402
from helpers import TOL, check_onnx  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from op_cases import cases_for  # noqa: E402
from strategies import graphs  # noqa: E402

import graphdsl as gd  # noqa: E402
from graphdsl import dora, lora, models  # noqa: E402
from graphdsl.cli import main  # noqa: E402
from graphdsl.compiler import make_plan  # noqa: E402
from graphdsl.graph import analyze  # noqa: E402

R = np.random.default_rng(11)


def test_every_op_has_an_onnx_rule():
    # blocks and their calls' outputs: inlined by the compiler
    missing = sorted(set(gd.OPS) - set(RULES) - {"block", "block_output"})
    assert not missing, f"ops without an ONNX rule: {missing} (add them to onnx_backend.rules)"
    assert not sorted(set(RULES) - set(gd.OPS))


@pytest.mark.parametrize("opset", [None, 20])
@pytest.mark.parametrize("case", cases_for("onnx"))
def test_every_op_matches_numpy(case, opset):
    model, inputs, st = case.setup()
    # the optional inputs a case gives are exported as graph inputs, the others left out
    kept = [k for k in inputs if k in analyze(model).optional]
    proto = check_onnx(model, st, inputs, case.tol, opset=opset, optional_inputs=kept)
    assert proto.opset_import[0].version == (opset or case.min_opset)
    if case.min_opset > 13 and opset is None:  # attention: an empty sequence needs
        with pytest.raises(gd.GraphDSLError,   # Reshape's allowzero
                           match=rf"needs opset >= {case.min_opset}"):
            gd.to_onnx(model, st, opset=case.min_opset - 1, optional_inputs=kept)
    if case.merged:  # exported merged: one kernel, no A/B
        kernel, adapter = case.merged
        names = {t.name for t in proto.graph.initializer}
        assert kernel in names and not any(n.startswith(adapter) for n in names)


def test_newer_operators_at_a_newer_opset():
    x = gd.input("x", (None, 6))
    model = gd.gelu(gd.layer_norm(x, name="ln"), name="act")
    st = gd.build(model)[0]({"x": np.zeros((1, 6), np.float32)})
    low = {n.op_type for n in gd.to_onnx(model, st).graph.node}
    high = {n.op_type for n in gd.to_onnx(model, st, opset=20).graph.node}
    assert "Erf" in low and "LayerNormalization" not in low
    assert {"Gelu", "LayerNormalization"} <= high


def test_names_dtypes_and_dynamic_axes():
    ids = gd.input("ids", (None, 5), dtype="int64")
    x = gd.input("x", (None, 3))
    e = gd.embedding(ids, 11, 3, name="emb")
    model = gd.container({"mixed": gd.add(e, gd.reshape(x, (None, 1, 3))),
                          "pos": gd.positions(ids), "pair": gd.container([x, gd.relu(x)])})
    st = gd.build(model)[0]()
    proto = gd.to_onnx(model, st)
    ins = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert list(ins) == ["ids", "x"]
    assert ins["ids"].elem_type == onnx.TensorProto.INT64
    assert ins["x"].elem_type == onnx.TensorProto.FLOAT
    assert ins["x"].shape.dim[0].dim_param and ins["x"].shape.dim[1].dim_value == 3
    outs = [o.name for o in proto.graph.output]
    assert outs == ["mixed", "pos", "pair.x", "pair.relu_0"]
    assert [n for n, _ in output_names(make_plan(model))] == outs
    assert proto.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert {t.name for t in proto.graph.initializer} >= {"emb.kernel"}
    for batch in (1, 7):  # not the batch size the model was initialized with
        feed = {"ids": R.integers(0, 11, (batch, 5)), "x": R.normal(size=(batch, 3))
                .astype(np.float32)}
        check_onnx(model, st, feed)


def test_custom_layer_without_a_rule_names_the_layer():
    def unexported(x, xp):
        return xp.tanh(x) * 2

    model = gd.layer(unexported, gd.input("x", (None, 4)), name="mine")
    st = gd.build(model)[0]()
    with pytest.raises(gd.GraphDSLError, match="mine") as e:
        gd.to_onnx(model, st)
    assert "register_onnx_rule" in str(e.value) and "unexported" in str(e.value)


def test_custom_rule_min_opset_sets_the_default_and_a_low_opset_is_an_error():
    def gelu_ish(x, xp):
        return x * 0.5

    gd.register_onnx_rule(gelu_ish, lambda b, x: b.op("Mul", [x, b.const(0.5)]),
                          min_opset=18)
    model = gd.relu(gd.layer(gelu_ish, gd.input("x", (None, 4)), name="half"))
    st = gd.build(model)[0]()
    assert gd.to_onnx(model, st).opset_import[0].version == 18
    with pytest.raises(gd.GraphDSLError, match=r"'half'.*needs opset >= 18"):
        gd.to_onnx(model, st, opset=17)
    with pytest.raises(gd.GraphDSLError, match="needs opset >= 13"):
        gd.to_onnx(gd.relu(gd.input("x", (None, 4))), st, opset=12)
    with pytest.raises(gd.GraphDSLError, match="opset"):
        gd.to_onnx(model, st, opset=10_000)
    with pytest.raises(gd.GraphDSLError, match="not optional inputs"):
        gd.to_onnx(model, st, optional_inputs=["x"])


def test_missing_weight_is_a_graphdsl_error():
    model = gd.dense(gd.input("x", (None, 4)), 2, name="fc")
    with pytest.raises(gd.GraphDSLError, match="fc"):
        gd.to_onnx(model, gd.ModelState({}))


def _train_adapters(st):
    """Move B off zero and the magnitudes off their init, as training would."""
    for params in st.data.values():
        if "B" in params:
            params["B"] = (R.normal(size=params["B"].shape) * 0.1).astype(np.float32)
        if "magnitude" in params:
            params["magnitude"] = params["magnitude"] * 1.3


@pytest.mark.parametrize("mod", [dora, lora])
def test_adapted_mlp_exports_merged(mod, tmp_path):
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 16, activation="gelu", name="attn_in")
    model = gd.dense(h, 4, name="attn_out")
    adapted = mod.adapt(model, targets=r"attn_.*", rank=2, alpha=4.0)
    st = gd.build(adapted)[0]({"x": np.zeros((1, 8), np.float32)})
    _train_adapters(st)
    path = tmp_path / "m.onnx"
    proto = check_onnx(adapted, st, {"x": R.normal(size=(5, 8)).astype(np.float32)}, path=path)
    assert onnx.load(str(path)) == proto
    assert {n.op_type for n in proto.graph.node} <= {"MatMul", "Add", "Mul", "Erf", "Identity"}


@pytest.mark.parametrize("mod", [None, lora, dora])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_token_ids_outside_the_vocabulary_fail_in_onnx_runtime_too(mod, dtype):
    """Gather alone reads row -1 as the last one: the export must refuse every id outside
    [0, vocab) at run time, as NumPy and torch do, and give NumPy's rows for the others."""
    model = gd.embedding(gd.input("ids", (None, 3), dtype=dtype), 7, 4, name="emb",
                         kernel_initializer="normal")
    if mod is not None:
        model = mod.adapt(model, targets="emb", rank=2, alpha=4.0)
    st = gd.build(model)[0]({"ids": np.zeros((1, 3), dtype)})
    _train_adapters(st)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the refusals below would each log an error line
    sess = ort.InferenceSession(gd.to_onnx(model, st).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    good = np.array([[0, 6, 3], [5, 1, 2]], dtype)
    np.testing.assert_allclose(sess.run(None, {"ids": good})[0],
                               gd.predict(model, st, good), **TOL)
    for bad in (-1, -7, -8, 7, np.iinfo(dtype).min, np.iinfo(dtype).max):
        ids = np.array([[0, bad, 3]], dtype)
        for backend in ("numpy", "torch"):
            with pytest.raises(gd.GraphDSLError):
                gd.predict(model, st, ids, backend=backend)
        with pytest.raises(Exception, match="out of data bounds"):
            sess.run(None, {"ids": ids})


@pytest.mark.parametrize("relative", [True, False])
def test_exporting_twice_with_a_side_file_replaces_it(relative, tmp_path, monkeypatch):
    """Above the side-file threshold (lowered here), a second export to the same path
    writes the same files again: no error, no .data grown by appending; ONNX Runtime
    reads the result. A smaller export then drops the stale side file."""
    from graphdsl.backends import onnx_backend
    monkeypatch.setattr(onnx_backend, "_LARGE", 1000)
    monkeypatch.chdir(tmp_path)
    model = gd.dense(gd.input("x", (None, 32)), 24, name="fc")
    st = gd.build(model)[0]({"x": np.zeros((1, 32), np.float32)})
    path = "m.onnx" if relative else str(tmp_path / "m.onnx")
    x = R.normal(size=(3, 32)).astype(np.float32)
    sizes = []
    for scale in (1.0, 2.0):  # the second export's weights differ: it must be read back
        st.data["fc"]["kernel"] = st.data["fc"]["kernel"] * scale
        gd.to_onnx(model, st, path)
        sizes.append((tmp_path / "m.onnx.data").stat().st_size)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], gd.predict(model, st, x),
                                   **TOL)
    assert sizes == [32 * 24 * 4] * 2
    monkeypatch.setattr(onnx_backend, "_LARGE", 10**9)
    gd.to_onnx(model, st, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], gd.predict(model, st, x), **TOL)
    with pytest.raises(gd.GraphDSLError, match="does not exist"):
        gd.to_onnx(model, st, tmp_path / "no" / "m.onnx")


@given(graphs())
@settings(max_examples=15, deadline=None)
def test_random_graphs_match_numpy(case):
    model, concrete, _ = case
    st = gd.build(model, seed=0)[0]()
    rng = np.random.default_rng(0)
    feed = {k: rng.normal(size=s).astype(np.float32) for k, s in concrete.items()}
    check_onnx(model, st, feed)


IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1], [2, 4, 6, 8, 10, 1]])
PAD = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
_TINY = dict(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4)


def _family(kind):
    if kind == "gpt2":
        return models.gpt2(dict(vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4))
    if kind == "bert":
        return models.bert(dict(_TINY, max_position_embeddings=8))
    return models.llama(dict(_TINY, model_type=kind, num_key_value_heads=2,
                             tie_word_embeddings=kind == "llama",
                             **({"sliding_window": 3} if kind == "mistral" else {})))


def _random_state(model):
    st = gd.build(model, seed=0)[0]()
    for layer, params in st.data.items():  # non-trivial norms and biases
        for k, v in params.items():
            if v.dtype.kind == "f":
                st.data[layer][k] = (R.normal(size=v.shape) * 0.2 + (v.ndim == 1)).astype(
                    np.float32)
    return st


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2", "bert"])
def test_transformer_families_match_numpy(kind):
    model = _family(kind)
    st = _random_state(model)
    opt = sorted(analyze(model).optional)
    # only the required input (defaults exported), then with every optional input given
    check_onnx(model, st, {"input_ids": IDS[:2]})
    proto = check_onnx(model, st, {"input_ids": IDS[:2]}, opset=20)
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    feed = {"input_ids": IDS, "attention_mask": PAD,
            "position_ids": np.tile(np.arange(6), (3, 1)), "token_type_ids": IDS % 2}
    feed = {k: v for k, v in feed.items() if k == "input_ids" or k in opt}
    proto = check_onnx(model, st, feed, optional_inputs=True)
    assert [i.name for i in proto.graph.input] == ["input_ids", *opt]
    # a DoRA-adapted transformer exports merged
    targets = ["q_proj", "v_proj"] if kind in ("llama", "mistral") else (
        ["c_attn"] if kind == "gpt2" else ["query", "value"])
    adapted = dora.adapt(model, targets=targets, rank=2, alpha=4.0)
    ast = gd.build(adapted)[0](None, st)
    _train_adapters(ast)
    check_onnx(adapted, ast, {"input_ids": IDS[:, :4]})


def test_import_graphdsl_does_not_import_onnx():
    code = "import sys, graphdsl; assert 'onnx' not in sys.modules and " \
           "'onnxruntime' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def _cli(*args):
    env = {**__import__("os").environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "graphdsl", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_export_of_a_saved_adapted_model(tmp_path):
    x = gd.input("x", (None, 8))
    model = lora.adapt(gd.dense(gd.dense(x, 6, activation="relu", name="attn_q"), 3,
                                name="head"), targets=["attn_q"], rank=2)
    st = gd.build(model, seed=4)[0]()
    _train_adapters(st)
    src = gd.save(tmp_path / "adapted.gdsl", model, st)
    out = tmp_path / "model.onnx"
    p = _cli("export", src, "-o", out)
    assert p.returncode == 0, p.stderr
    assert "opset 13" in p.stdout and "outputs head" in p.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = R.normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": feed})[0], gd.predict(model, st, feed),
                               **TOL)
    assert main(["export", str(src), "-o", str(tmp_path / "m20.onnx"), "--opset", "20"]) == 0
    assert onnx.load(str(tmp_path / "m20.onnx")).opset_import[0].version == 20


def test_cli_export_replaces_a_stale_side_file(tmp_path):
    src = tmp_path / "m.json"
    src.write_text(gd.to_json(gd.dense(gd.input("x", (None, 4)), 2, name="fc")))
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_bytes(b"weights of an earlier, larger export")
    assert main(["export", str(src), "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_cli_export_of_a_transformer_keeps_the_optional_inputs_asked(tmp_path, capsys):
    src = tmp_path / "llama.json"
    src.write_text(gd.to_json(_family("llama")))
    out = tmp_path / "llama.onnx"
    assert main(["export", str(src), "-o", str(out), "--optional-inputs",
                 "attention_mask"]) == 0
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["input_ids",
                                                                 "attention_mask"]
    assert "outputs lm_head" in capsys.readouterr().out


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "m.json"
    src.write_text(gd.to_json(gd.dense(gd.input("x", (None, 4)), 2, name="fc")))
    for args, pattern in [(["--opset", "9"], "needs opset >= 13"),
                          (["--optional-inputs", "mask"], "not optional inputs"),
                          ([], "destroy the input")]:
        target = src if not args else tmp_path / "m.onnx"
        assert main(["export", str(src), "-o", str(target), *args]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and pattern in err, err


def test_outputs_named_by_their_producers_without_copies():
    """Each graph output is written by the node making it (an Identity would copy it on
    every run, a decoder's whole cache among them); an input, a weight, or one value
    given as two outputs still goes through an Identity, and every case runs in ONNX
    Runtime with the NumPy backend's values."""
    x = gd.input("x", (None, 3))
    h = gd.dense(x, 4, name="h")
    model = gd.container({"h": h, "again": h, "x": x, "relu": gd.relu(h)})
    st = gd.build(model)[0]({"x": np.zeros((1, 3), np.float32)})
    proto = check_onnx(model, st, {"x": R.standard_normal((2, 3)).astype(np.float32)})
    made = {o: n.op_type for n in proto.graph.node for o in n.output}
    outs = [o.name for o in proto.graph.output]
    assert [made[o] for o in outs] == ["Add", "Identity", "Identity", "Relu"]
    ident = [n for n in proto.graph.node if n.op_type == "Identity"]
    assert sorted(n.input[0] for n in ident) == sorted([outs[0], "x"])
    # the renamed value still feeds the layers after it
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    assert list(relu.input) == [outs[0]]
