"""gd.save / gd.save_adapters keep what they overwrite intact (issue 10, item 3): a failed
or interrupted save leaves no temp file and the old file; an overwritten file keeps its
mode; a symlink keeps pointing to the file it names; a directory, None or a wrong
argument is a GraphDSLError."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora
from graphdsl.errors import GraphDSLError, SerializationError, StateError

pytest.importorskip("safetensors")


@pytest.fixture
def mm():
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 6, activation="relu", name="attn_q")
    base = gd.dense(h, 3, name="head")
    model = dora.adapt(base, targets=["attn_q"], rank=2)
    return model, gd.build(model, seed=4)[0]()


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, RuntimeError, OSError])
@pytest.mark.parametrize("func", ["save", "save_adapters"])
def test_an_interrupted_save_leaves_the_old_file_and_no_temp(tmp_path, mm, monkeypatch,
                                                             exc, func):
    model, state = mm
    path = tmp_path / "m.gdsl"
    path.write_bytes(b"old contents")
    real = zipfile.ZipFile.writestr
    calls = []

    def writestr(self, info, data, *a, **k):
        calls.append(info)
        if len(calls) == 2:  # after the first member is on disk
            raise exc("killed")
        return real(self, info, data, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)
    with pytest.raises(exc):
        getattr(gd, func)(path, model, state)
    assert len(calls) == 2
    assert path.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_overwriting_keeps_the_mode(tmp_path, mm, umask_022):
    model, state = mm
    for mode in (0o644, 0o640, 0o664):
        path = tmp_path / f"m{mode:o}.gdsl"
        path.write_bytes(b"old")
        os.chmod(path, mode)
        gd.save(path, model, state)
        assert os.stat(path).st_mode & 0o777 == mode
        gd.load(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_open_would_give(tmp_path, mm, umask):
    model, state = mm
    old = os.umask(umask)
    try:
        gd.save(tmp_path / "new.gdsl", model, state)
        gd.save_adapters(tmp_path / "ad.gdsl", model, state)
        with open(tmp_path / "ref", "w"):
            pass
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert os.stat(tmp_path / "ref").st_mode & 0o777 == want
    assert os.stat(tmp_path / "new.gdsl").st_mode & 0o777 == want
    assert os.stat(tmp_path / "ad.gdsl").st_mode & 0o777 == want


def test_saving_through_a_symlink_keeps_the_link(tmp_path, mm, umask_022):
    model, state = mm
    os.mkdir(tmp_path / "store")
    real = tmp_path / "store" / "real.gdsl"
    real.write_bytes(b"old")
    os.chmod(real, 0o644)
    link = tmp_path / "link.gdsl"
    os.symlink(os.path.join("store", "real.gdsl"), link)  # relative, in another folder
    chain = tmp_path / "chain.gdsl"
    os.symlink("link.gdsl", chain)
    gd.save(chain, model, state)
    assert os.path.islink(link) and os.path.islink(chain)
    assert os.readlink(link) == os.path.join("store", "real.gdsl")
    assert os.stat(real).st_mode & 0o777 == 0o644
    m2, s2 = gd.load(real)
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(gd.predict(m2, s2, x), gd.predict(model, state, x))
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "store") == []


def test_a_dangling_symlink_creates_its_target(tmp_path, mm):
    model, state = mm
    os.symlink("target.gdsl", tmp_path / "link.gdsl")
    gd.save(tmp_path / "link.gdsl", model, state)
    assert os.path.islink(tmp_path / "link.gdsl")
    assert (tmp_path / "target.gdsl").is_file()


def test_saving_to_a_directory(tmp_path, mm):
    model, state = mm
    for func in (gd.save, gd.save_adapters):
        with pytest.raises(SerializationError, match="is a directory") as e:
            func(tmp_path, model, state)
        assert "model.gdsl" in e.value.fix and ".tmp" not in str(e.value)
    os.symlink(tmp_path, tmp_path / "dirlink")
    with pytest.raises(SerializationError, match="is a directory"):
        gd.save(tmp_path / "dirlink", model, state)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path.parent) == []


def test_a_path_is_needed(tmp_path, mm):
    model, state = mm
    calls = [
        ("gd.save", lambda p: gd.save(p, model, state)),
        ("gd.load", lambda p: gd.load(p)),
        ("gd.save_adapters", lambda p: gd.save_adapters(p, model, state)),
        ("gd.load_adapters", lambda p: gd.load_adapters(p, model, state)),
    ]
    for name, call in calls:
        for bad, what in ((None, "got None"), ("", "empty string"), (3, "got int")):
            with pytest.raises(SerializationError, match=f"{name} needs a file path.*{what}"):
                call(bad)
    assert os.listdir(tmp_path) == []


def test_wrong_model_or_state_is_a_graphdsl_error(tmp_path, mm):
    model, state = mm
    for func in (gd.save, gd.save_adapters):
        with pytest.raises(GraphDSLError, match="must be a graph node"):
            func(tmp_path / "m.gdsl", state, model)  # swapped
        with pytest.raises(GraphDSLError, match="must be a graph node"):
            func(tmp_path / "m.gdsl", None, state)
        with pytest.raises(StateError, match="must be a ModelState, got dict"):
            func(tmp_path / "m.gdsl", model, {"attn_q": {}})
    with pytest.raises(GraphDSLError, match="must be a graph node"):
        gd.load_adapters(tmp_path / "m.gdsl", "model", state)
    assert os.listdir(tmp_path) == []
