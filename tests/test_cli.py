"""The graphdsl command end to end, through subprocess (``python -m graphdsl`` and the
``graphdsl`` console script)."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from launch import console_script

import graphdsl as gd
from graphdsl import dora

ROOT = pathlib.Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp.json"


def run(*args, cwd=None, script=False):
    cmd = [console_script()] if script else [sys.executable, "-m", "graphdsl"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("GRAPHDSL_DEBUG", None)
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def assert_one_line_error(proc, pattern):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("graphdsl: error:"), err
    import re

    assert re.search(pattern, err), err


@pytest.fixture
def adapted_file(tmp_path):
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 6, activation="relu", name="attn_q")
    base = gd.dense(h, 3, name="head")
    model = dora.adapt(base, targets=["attn_q"], rank=2)
    state = gd.build(model, seed=4)[0]()
    rng = np.random.default_rng(0)
    for p in ("A", "B", "magnitude"):
        a = state.data["attn_q_dora"][p]
        state.data["attn_q_dora"][p] = (a + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
    return gd.save(tmp_path / "adapted.gdsl", model, state), model, state


def test_summary_of_a_json_definition():
    p = run("summary", MLP)
    assert p.returncode == 0, p.stderr
    for text in ("fc1 ( dense )", "fc2 ( dense )", "log_probs ( log_softmax )", "2,410"):
        assert text in p.stdout
    assert "no weights created" in p.stdout


def test_summary_of_a_saved_model_with_the_console_script(adapted_file):
    path, model, state = adapted_file
    p = run("summary", path, script=True)
    assert p.returncode == 0, p.stderr
    assert "attn_q_dora ( dora )" in p.stdout and "saved model" in p.stdout
    assert f"{state.frozen_parameter_count():,}" in p.stdout


@pytest.mark.parametrize("fmt,marker", [("mermaid", "graph TD"), ("dot", "digraph")])
def test_graph_text_formats(tmp_path, fmt, marker):
    p = run("graph", MLP, "--format", fmt)
    assert p.returncode == 0 and p.stdout.startswith(marker), p.stderr
    out = tmp_path / f"g.{fmt}"
    p = run("graph", MLP, "--format", fmt, "-o", out)
    assert p.returncode == 0 and out.read_text().startswith(marker)
    assert "fc1" in out.read_text()


def test_graph_svg(tmp_path):
    out = tmp_path / "g.svg"
    p = run("graph", MLP, "--format", "svg", "-o", out)
    if shutil.which("dot") is None:
        assert_one_line_error(p, "Graphviz")
        return
    assert p.returncode == 0, p.stderr
    assert "<svg" in out.read_text()
    assert_one_line_error(run("graph", MLP, "--format", "svg"), "needs -o")


def test_predict_json_definition_matches_the_library(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 64))  # float64: cast to the input dtype
    np.save(tmp_path / "x.npy", x)
    p = run("predict", MLP, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npy",
            "--seed", "7")
    assert p.returncode == 0, p.stderr
    y = np.load(tmp_path / "y.npy")
    model = gd.from_json(MLP.read_text())
    state = gd.build(model, seed=7)[0]()
    np.testing.assert_array_equal(y, gd.predict(model, state, x.astype(np.float32)))
    assert y.shape == (5, 10)
    np.testing.assert_allclose(np.exp(y).sum(1), 1.0, rtol=1e-5)
    # a bare path for a one-input model; printed when there is no -o
    p = run("predict", MLP, "--input", tmp_path / "x.npy")
    assert p.returncode == 0 and "output: float32[5, 10]" in p.stdout


def test_predict_saved_model_numpy_and_torch(adapted_file, tmp_path):
    path, model, state = adapted_file
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ref = gd.predict(model, state, x)
    p = run("predict", path, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npy")
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), ref)
    pytest.importorskip("torch")
    p = run("predict", path, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "t.npy",
            "--backend", "torch")
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), ref, rtol=1e-5, atol=1e-5)


def test_predict_several_outputs_go_to_npz(tmp_path):
    x = gd.input("x", (None, 3))
    model = gd.container({"a": gd.relu(x), "b": gd.tanh(x)})
    (tmp_path / "m.json").write_text(gd.to_json(model))
    arr = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", arr)
    p = run("predict", tmp_path / "m.json", "--input", f"x={tmp_path / 'x.npy'}",
            "-o", tmp_path / "y.npz")
    assert p.returncode == 0, p.stderr
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["a"], np.maximum(arr, 0))
        np.testing.assert_allclose(z["b"], np.tanh(arr), rtol=1e-6)
    p = run("predict", tmp_path / "m.json", "--input", f"x={tmp_path / 'x.npy'}",
            "-o", tmp_path / "y.npy")
    assert_one_line_error(p, "several outputs")


def test_merge(adapted_file, tmp_path):
    path, model, state = adapted_file
    out = tmp_path / "merged.gdsl"
    p = run("merge", path, "-o", out)
    assert p.returncode == 0, p.stderr
    merged, mstate = gd.load(out)
    assert "dora" not in gd.get_op_counts(merged)
    x = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    np.testing.assert_allclose(gd.predict(merged, mstate, x), gd.predict(model, state, x),
                               rtol=1e-5, atol=1e-5)


def test_errors_are_one_line_without_traceback(tmp_path, adapted_file):
    path, _, _ = adapted_file
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.gdsl").write_bytes(b"\x80\x04junk")
    (tmp_path / "cyc.json").write_text(
        '{"format_version": 1, "inputs": [{"name": "x", "shape": [null, 2]}], "nodes": ['
        '{"op": "relu", "name": "a", "inputs": ["b"]}, {"op": "relu", "name": "b", '
        '"inputs": ["a"]}], "outputs": "a"}')
    cases = [
        (("summary", tmp_path / "missing.gdsl"), "no such file"),
        (("summary", tmp_path / "junk.gdsl"), "pickle"),
        (("summary", tmp_path / "cyc.json"), "cycle"),
        (("predict", MLP, "--input", f"y={tmp_path / 'bad.npy'}"), "missing \\['x'\\]"),
        (("predict", MLP, "--input", f"x={tmp_path / 'bad.npy'}"), "expects shape"),
        (("predict", MLP, "--input", f"x={tmp_path / 'obj.npy'}"), "not a readable .npy"),
        (("predict", MLP, "--input", f"x={tmp_path / 'nope.npy'}"), "no such file"),
        (("merge", MLP, "-o", tmp_path / "m.gdsl"), "no dora or lora"),
        (("merge", path, "-o", tmp_path / "nodir" / "m.gdsl"), "does not exist"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run(*args), pattern)
    assert not (tmp_path / "m.gdsl").exists()


def test_usage_errors_exit_2_with_one_line():
    for args in ((), ("frobnicate",), ("graph", MLP, "--format", "png"), ("merge", MLP)):
        p = run(*args)
        assert p.returncode == 2
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr
    assert run("--help").returncode == 0


def test_main_in_process_returns_status(tmp_path, capsys):
    from graphdsl.cli import main

    assert main(["summary", str(MLP)]) == 0
    assert "fc1" in capsys.readouterr().out
    assert main(["summary", str(tmp_path / "none.json")]) == 1
    assert "no such file" in capsys.readouterr().err
