"""The graphdsl command never destroys files: an output that is one of the inputs is
refused, outputs are written atomically, ``-o -`` is stdout for every subcommand, and
summary/graph create no weights (issue 10, items 2 and 5)."""
from __future__ import annotations

import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from launch import console_script

import graphdsl as gd
from graphdsl import dora
from graphdsl.errors import GraphDSLError, OptionError

pytest.importorskip("safetensors")

ROOT = pathlib.Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp.json"


def run(*args, cwd=None, script=False):
    """The command's (returncode, stdout bytes, stderr text)."""
    cmd = [console_script()] if script else [sys.executable, "-m", "graphdsl"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("GRAPHDSL_DEBUG", None)
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, cwd=cwd, env=env,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def assert_one_line_error(rc, err, pattern, status=1):
    assert rc == status, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("graphdsl: error:"), err
    assert re.search(pattern, err), err


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


@pytest.fixture
def files(tmp_path):
    """An adapted model file, a plain model file, a JSON definition and an input array."""
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 6, activation="relu", name="attn_q")
    base = gd.dense(h, 3, name="head")
    model = dora.adapt(base, targets=["attn_q"], rank=2)
    gd.save(tmp_path / "a.gdsl", model, gd.build(model, seed=4)[0]())
    gd.save(tmp_path / "plain.gdsl", base, gd.build(base, seed=4)[0]())
    (tmp_path / "m.json").write_text(gd.to_json(base))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 8)))
    return tmp_path


# -- an output that is one of the inputs ---------------------------------------------------
@pytest.mark.parametrize("args,victim", [
    (("graph", "a.gdsl", "--format", "dot", "-o", "a.gdsl"), "a.gdsl"),
    (("graph", "m.json", "--format", "mermaid", "-o", "m.json"), "m.json"),
    (("merge", "a.gdsl", "-o", "a.gdsl"), "a.gdsl"),
    (("predict", "a.gdsl", "--input", "x=x.npy", "-o", "x.npy"), "x.npy"),
    (("predict", "a.gdsl", "--input", "x.npy", "-o", "x.npy"), "x.npy"),
    (("predict", "a.gdsl", "--input", "x=x.npy", "-o", "a.gdsl"), "a.gdsl"),
])
def test_output_that_is_an_input_is_refused(files, args, victim):
    before = (files / victim).read_bytes()
    rc, out, err = run(*args, cwd=files)
    assert_one_line_error(rc, err, rf"-o {re.escape(victim)} is the input file .*another "
                                   "output path")
    assert (files / victim).read_bytes() == before
    assert leftovers(files) == []


@pytest.mark.parametrize("link", ["symlink", "hardlink", "spelling"])
def test_output_that_is_an_input_through_a_link_is_refused(files, link):
    before = (files / "a.gdsl").read_bytes()
    if link == "symlink":
        os.symlink("a.gdsl", files / "alias.gdsl")
        out = "alias.gdsl"
    elif link == "hardlink":
        os.link(files / "a.gdsl", files / "alias.gdsl")
        out = "alias.gdsl"
    else:
        os.mkdir(files / "sub")
        out = "sub/../a.gdsl"
    rc, _, err = run("merge", "a.gdsl", "-o", out, cwd=files)
    assert_one_line_error(rc, err, "is the input file")
    rc, _, err = run("graph", out, "--format", "dot", "-o", "a.gdsl", cwd=files)
    assert_one_line_error(rc, err, "is the input file")
    assert (files / "a.gdsl").read_bytes() == before
    gd.load(files / "a.gdsl")  # still a model file


# -- -o - is stdout, for every subcommand -------------------------------------------------
def test_dash_is_stdout_for_merge(files):
    rc, out, err = run("merge", "a.gdsl", "-o", "-", cwd=files)
    assert rc == 0, err
    assert not (files / "-").exists()
    assert out.startswith(b"PK\x03\x04")
    (files / "piped.gdsl").write_bytes(out)
    merged, mstate = gd.load(files / "piped.gdsl")
    assert "dora" not in gd.get_op_counts(merged)
    rc, _, err = run("merge", "a.gdsl", "-o", "file.gdsl", cwd=files)
    assert rc == 0, err
    assert (files / "file.gdsl").read_bytes() == out  # the same bytes either way


def test_dash_is_stdout_for_predict(files):
    rc, out, err = run("predict", "a.gdsl", "--input", "x=x.npy", "-o", "-", cwd=files)
    assert rc == 0, err
    assert not (files / "-").exists()
    model, state = gd.load(files / "a.gdsl")
    x = np.load(files / "x.npy").astype(np.float32)
    np.testing.assert_array_equal(np.load(io.BytesIO(out)), gd.predict(model, state, x))


def test_dash_is_stdout_for_predict_with_several_outputs(tmp_path):
    x = gd.input("x", (None, 3))
    (tmp_path / "c.json").write_text(gd.to_json(gd.container({"a": gd.relu(x),
                                                              "b": gd.tanh(x)})))
    arr = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", arr)
    rc, out, err = run("predict", "c.json", "--input", "x.npy", "-o", "-", cwd=tmp_path)
    assert rc == 0, err
    with np.load(io.BytesIO(out)) as z:
        np.testing.assert_array_equal(z["a"], np.maximum(arr, 0))
    assert not (tmp_path / "-").exists()


def test_dash_is_stdout_for_graph(files):
    rc, out, err = run("graph", "a.gdsl", "--format", "dot", "-o", "-", cwd=files)
    assert rc == 0, err
    assert out.decode().startswith("digraph") and b"attn_q_dora" in out
    assert not (files / "-").exists()
    if shutil.which("dot") is not None:
        rc, out, err = run("graph", "a.gdsl", "--format", "svg", "-o", "-", cwd=files)
        assert rc == 0 and b"<svg" in out, err
        assert not (files / "-").exists()


# -- atomic outputs ------------------------------------------------------------------------
def test_a_failed_output_leaves_the_old_file_and_no_temp(files, monkeypatch, capsys):
    from graphdsl import cli

    (files / "old.gdsl").write_bytes(b"old contents")
    (files / "old.npy").write_bytes(b"old contents")

    def boom(fh, *a, **k):
        fh.write(b"half of it")
        raise KeyboardInterrupt

    monkeypatch.setattr("graphdsl.io.model_file.zip_to", boom)
    assert cli.main(["merge", str(files / "a.gdsl"), "-o", str(files / "old.gdsl")]) == 130
    monkeypatch.setattr(np, "save", boom)
    assert cli.main(["predict", str(files / "a.gdsl"), "--input", str(files / "x.npy"),
                     "-o", str(files / "old.npy")]) == 130
    assert (files / "old.gdsl").read_bytes() == b"old contents"
    assert (files / "old.npy").read_bytes() == b"old contents"
    assert leftovers(files) == []
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_during_an_output_removes_the_temp_file(files):
    """A `kill` (SIGTERM) while the output is written: no temp file, old file intact."""
    (files / "old.gdsl").write_bytes(b"old contents")
    code = textwrap.dedent("""
        import os, signal, sys, time
        import graphdsl.io.model_file
        from graphdsl import cli
        real = graphdsl.io.model_file.zip_to
        def slow(fh, members):
            fh.write(b"partial")
            fh.flush()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
            real(fh, members)
        graphdsl.io.model_file.zip_to = slow
        sys.exit(cli.main(["merge", "a.gdsl", "-o", "old.gdsl"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=files, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 143, p.stderr
    assert p.stderr.strip() == "graphdsl: terminated"
    assert (files / "old.gdsl").read_bytes() == b"old contents"
    assert leftovers(files) == []


def test_outputs_keep_mode_and_links(files):
    out = files / "g.dot"
    out.write_text("old")
    os.chmod(out, 0o640)
    os.symlink("g.dot", files / "link.dot")
    rc, _, err = run("graph", "m.json", "--format", "dot", "-o", "link.dot", cwd=files)
    assert rc == 0, err
    assert os.path.islink(files / "link.dot")
    assert out.read_text().startswith("digraph")
    assert os.stat(out).st_mode & 0o777 == 0o640


def test_an_output_that_is_a_directory(files):
    os.mkdir(files / "out")
    rc, _, err = run("graph", "m.json", "--format", "dot", "-o", "out", cwd=files)
    assert_one_line_error(rc, err, r"cannot write out: it is a directory.*out/model\.dot")
    rc, _, err = run("merge", "a.gdsl", "-o", "out", cwd=files)
    assert_one_line_error(rc, err, "cannot write out: it is a directory")
    assert os.listdir(files / "out") == [] and leftovers(files) == []


# -- summary and graph create no weights -------------------------------------------------
HUGE = {"format_version": 1, "inputs": [{"name": "x", "shape": [None, 10**9]}],
        "nodes": [{"op": "dense", "name": "big", "inputs": ["x"],
                   "attrs": {"units": 10**9}}], "outputs": "big"}


def test_summary_and_graph_of_a_huge_json_create_no_weights(tmp_path):
    import json

    (tmp_path / "huge.json").write_text(json.dumps(HUGE))
    rc, out, err = run("summary", "huge.json", cwd=tmp_path)
    assert rc == 0, err
    text = out.decode()
    assert "1,000,000,001,000,000,000" in text  # 10^18 + 10^9 parameters, counted only
    assert "no weights created" in text
    for fmt, marker in (("dot", "digraph"), ("mermaid", "graph TD")):
        rc, out, err = run("graph", "huge.json", "--format", fmt, cwd=tmp_path)
        assert rc == 0 and out.decode().startswith(marker), err


def test_summary_and_graph_never_build_weights(monkeypatch, capsys):
    from graphdsl import cli

    def no_weights(*a, **k):
        raise AssertionError("summary/graph must not create weights")

    monkeypatch.setattr("graphdsl.compiler.build", no_weights)
    assert cli.main(["summary", str(MLP)]) == 0
    assert cli.main(["graph", str(MLP), "--format", "dot"]) == 0
    assert "fc1" in capsys.readouterr().out


def test_a_huge_units_value_is_not_an_internal_error(tmp_path):
    import json

    doc = json.loads(MLP.read_text())
    doc["nodes"][0]["attrs"]["units"] = 10**30
    (tmp_path / "u.json").write_text(json.dumps(doc))
    rc, out, err = run("summary", "u.json", cwd=tmp_path)
    assert rc in (0, 1), err
    assert "internal error" not in err and "Traceback" not in err


# -- what FILE really is ---------------------------------------------------------------------
def test_input_that_is_not_a_regular_file(files):
    (files / "empty.gdsl").write_bytes(b"")
    os.mkdir(files / "d")
    cases = [
        (("summary", "d"), r"d is a directory, not a file; fix: pass a saved model"),
        (("summary", "empty.gdsl"), r"empty\.gdsl is empty \(0 bytes\)"),
        (("predict", "a.gdsl", "--input", "x=d"), r"input 'x': d is a directory"),
    ]
    if os.path.exists("/dev/null"):
        cases.append((("summary", "/dev/null"), "/dev/null is not a regular file"))
    for args, pattern in cases:
        rc, _, err = run(*args, cwd=files)
        assert_one_line_error(rc, err, pattern)
        assert "no such file" not in err


@pytest.mark.parametrize("script", [False, True])
def test_merge_of_a_plain_model(files, script):
    rc, _, err = run("merge", "plain.gdsl", "-o", "m.gdsl", cwd=files, script=script)
    assert_one_line_error(rc, err, r"plain\.gdsl has no dora or lora layers to merge; fix:")
    assert "defined at" not in err and "bin/graphdsl" not in err and "runpy" not in err
    assert not (files / "m.gdsl").exists()


def test_every_graphdsl_error_exits_1_without_a_bogus_location(monkeypatch, capsys):
    from graphdsl import cli

    def fail(*a, **k):
        # the location a layer made by the command itself gets: this test's own frame
        raise OptionError("units must be at most 2**31", layer="fc1", op="dense",
                              where=f"{__file__}:1", fix="use fewer units")

    monkeypatch.setattr(cli, "load_any", fail)
    assert cli.main(["summary", str(MLP)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("graphdsl: error: units must be at most 2**31; in layer 'fc1' "
                           "(op dense); fix: use fewer units")
    assert issubclass(OptionError, GraphDSLError)
