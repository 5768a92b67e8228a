"""Model files (.gdsl zips with safetensors weights) and adapter files: round trips,
save-time checks, and every hostile file named in the issue."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
from helpers import assert_same_outputs
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import cases_for
from strategies import graphs

import graphdsl as gd
from graphdsl import dora, lora
from graphdsl.errors import SerializationError, StateError
from graphdsl.io import LoadLimits

pytest.importorskip("safetensors")


def _state(model, seed=0):
    state = gd.build(model, seed=seed)[0]()
    # make every value distinct from a fresh init, so a load that re-initialized would fail
    rng = np.random.default_rng(seed + 1)
    for layer, params in state.data.items():
        for p, a in params.items():
            if not state.is_state(layer, p) and a.dtype.kind == "f":
                params[p] = (a + rng.standard_normal(a.shape)).astype(a.dtype)
    return state


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _rezip(path, out, members, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(out, "w") as zf:
        for name, blob in members.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), blob, method)
    return out


@pytest.fixture
def saved(tmp_path):
    x = gd.input("x", (None, 6))
    h = gd.dense(x, 5, activation="relu", name="attn")
    y = gd.dropout(gd.dense(h, 3, name="out"), 0.2)
    state = _state(y).freeze("attn")
    path = gd.save(tmp_path / "m.gdsl", y, state)
    return path, y, state


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases_for("file"))
def test_save_load_round_trip(case, tmp_path, rng):
    model = case.build()
    state = _state(model)
    path = gd.save(tmp_path / "m.gdsl", model, state)
    m2, s2 = gd.load(path)
    assert gd.to_json(m2) == gd.to_json(model)
    assert s2 == state  # values, dtypes, frozen flags, state entries
    xs = case.feed(model, rng)
    if xs:
        arg = xs if len(xs) != 1 else next(iter(xs.values()))
        assert_same_outputs(gd.predict(model, state, arg), gd.predict(m2, s2, arg))
    # loading a saved file and saving it again gives the same bytes
    again = gd.save(tmp_path / "again.gdsl", m2, s2)
    assert open(again, "rb").read() == open(path, "rb").read()


def test_file_layout_and_frozen_flags(saved):
    path, model, state = saved
    members = _members(path)
    assert sorted(members) == ["model.json", "state.json", "weights.safetensors"]
    flags = json.loads(members["state.json"])
    assert flags["frozen"] == [["attn", "bias"], ["attn", "kernel"]]
    assert flags["state"] == {"dropout_0": ["key"]}
    from safetensors.numpy import load as st_load

    w = st_load(members["weights.safetensors"])
    assert sorted(w) == ["attn.bias", "attn.kernel", "dropout_0.key", "out.bias", "out.kernel"]
    np.testing.assert_array_equal(w["attn.kernel"], state.data["attn"]["kernel"])
    _, s2 = gd.load(path)
    assert s2.frozen == {("attn", "kernel"), ("attn", "bias")}
    assert s2.entries == {"dropout_0": ["key"]}


def test_float64_state_round_trips(tmp_path):
    model = gd.dense(gd.input("x", (None, 3)), 2, name="d")
    state = gd.build(model, dtype="float64")[0]()
    m2, s2 = gd.load(gd.save(tmp_path / "m.gdsl", model, state))
    assert s2.data["d"]["kernel"].dtype == np.float64 and s2 == state


@settings(max_examples=15, deadline=None)
@given(graphs(max_layers=6), st.integers(0, 2**16))
def test_random_graphs_save_load(tmp_path_factory, g, seed):
    model, shapes, _ = g
    state = _state(model, seed)
    path = gd.save(tmp_path_factory.mktemp("r") / "m.gdsl", model, state)
    m2, s2 = gd.load(path)
    assert gd.to_json(m2) == gd.to_json(model) and s2 == state
    rng = np.random.default_rng(seed)
    xs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    assert_same_outputs(gd.predict(model, state, xs), gd.predict(m2, s2, xs))


# -- save-time checks (nothing is written) -------------------------------------------------------
@pytest.mark.parametrize("change,msg", [
    (lambda s: s.data["out"].pop("kernel"), "lacks 1 value"),
    (lambda s: s.data.setdefault("ghost", {}).update(w=np.zeros(2, np.float32)),
     "does not use: ghost.w"),
    (lambda s: s.data["out"].update(kernel=np.zeros((2, 2), np.float32)), "has shape"),
    (lambda s: s.data["out"].update(bias=np.zeros(3, np.int32)), "dtype int32"),
    (lambda s: s.frozen.add(("nobody", "kernel")), "marks nobody.kernel frozen"),
])
def test_save_refuses_a_state_that_does_not_fit(saved, tmp_path, change, msg):
    _, model, state = saved
    bad = state.deepcopy()
    change(bad)
    with pytest.raises(StateError, match=msg):
        gd.save(tmp_path / "bad.gdsl", model, bad)
    assert not (tmp_path / "bad.gdsl").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_save_refuses_unregistered_functions_before_writing(tmp_path):
    model = gd.layer(lambda x, xp: x * 2, gd.input("x", (None, 2)), name="twice")
    with pytest.raises(SerializationError, match="not registered"):
        gd.save(tmp_path / "m.gdsl", model, gd.ModelState.empty())
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder(tmp_path, saved):
    _, model, state = saved
    with pytest.raises(SerializationError, match="does not exist"):
        gd.save(tmp_path / "no" / "m.gdsl", model, state)


# -- adapter files ------------------------------------------------------------------------
def _base_and_adapted():
    x = gd.input("x", (None, 8))
    h = gd.dense(x, 6, activation="relu", name="attn_q")
    base = gd.dense(gd.dense(h, 6, name="attn_v"), 3, name="head")
    adapted = dora.adapt(base, targets=r"attn_.*", rank=2, alpha=4.0)
    base_state = _state(base)
    init = gd.build(adapted)[0]
    state = init(None, base_state)
    rng = np.random.default_rng(5)
    for layer in ("attn_q_dora", "attn_v_dora"):
        for p in ("A", "B", "magnitude"):
            a = state.data[layer][p]
            state.data[layer][p] = (a + rng.standard_normal(a.shape)).astype(a.dtype)
    return base, adapted, base_state, state


def test_adapter_file_round_trip_and_attach(tmp_path, rng):
    base, adapted, base_state, state = _base_and_adapted()
    path = gd.save_adapters(tmp_path / "a.gdsl", adapted, state)
    members = _members(path)
    assert sorted(members) == ["adapters.json", "weights.safetensors"]
    from safetensors.numpy import load as st_load

    keys = sorted(st_load(members["weights.safetensors"]))
    assert keys == ["attn_q_dora.A", "attn_q_dora.B", "attn_q_dora.magnitude",
                    "attn_v_dora.A", "attn_v_dora.B", "attn_v_dora.magnitude"]
    full = gd.load_adapters(path, adapted, base_state)
    assert full == state
    x = rng.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(gd.predict(adapted, full, x), gd.predict(adapted, state, x))
    assert gd.adapter_state(adapted, full) == gd.adapter_state(adapted, state)


def test_adapter_file_must_match_the_adapted_model(tmp_path):
    base, adapted, base_state, state = _base_and_adapted()
    path = gd.save_adapters(tmp_path / "a.gdsl", adapted, state)
    other_rank = dora.adapt(base, targets=r"attn_.*", rank=3, alpha=4.0)
    with pytest.raises(SerializationError, match="has rank=2 in the file but rank=3"):
        gd.load_adapters(path, other_rank, base_state)
    other_alpha = dora.adapt(base, targets=r"attn_.*", rank=2, alpha=8.0)
    with pytest.raises(SerializationError, match="alpha=4.0 in the file"):
        gd.load_adapters(path, other_alpha, base_state)
    fewer = dora.adapt(base, targets=["attn_q"], rank=2, alpha=4.0)
    with pytest.raises(SerializationError, match="adapter layers"):
        gd.load_adapters(path, fewer, base_state)
    as_lora = lora.adapt(base, targets=r"attn_.*", rank=2, alpha=4.0)
    with pytest.raises(SerializationError, match="adapter layers"):
        gd.load_adapters(path, as_lora, base_state)
    with pytest.raises(gd.GraphDSLError, match="no adapter layers"):
        gd.save_adapters(tmp_path / "b.gdsl", base, base_state)
    with pytest.raises(SerializationError, match="this is an adapter file"):
        gd.load(path)
    model_file = gd.save(tmp_path / "m.gdsl", adapted, state)
    with pytest.raises(SerializationError, match="this is a model file"):
        gd.load_adapters(model_file, adapted, base_state)


# -- hostile files --------------------------------------------------------------------------------
def _write(tmp_path, blob, name="bad.gdsl"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


@pytest.mark.parametrize("blob,msg", [
    (b"", "empty"),
    (b"\x00" * 100, "not a zip archive"),
    (os.urandom(4096), "not a zip archive|corrupt"),
    (pickle.dumps({"a": 1}, protocol=2), "pickle"),
    (pickle.dumps([1, 2], protocol=5), "pickle"),
    (b'{"format_version": 1}', "JSON text"),
    (b"PK\x03\x04" + b"\x00" * 30, "corrupt or truncated"),
    (b"PK\x05\x06" + b"\x00" * 18, "lacks"),  # an empty zip
])
def test_junk_files(tmp_path, blob, msg):
    with pytest.raises(SerializationError, match=msg):
        gd.load(_write(tmp_path, blob))


def test_truncated_files(saved, tmp_path):
    path, _, _ = saved
    blob = open(path, "rb").read()
    for cut in (1, 10, 100, len(blob) // 2, len(blob) - 22, len(blob) - 1):
        with pytest.raises(SerializationError):
            gd.load(_write(tmp_path, blob[:cut], f"cut{cut}.gdsl"))


def test_torch_checkpoint_is_refused_as_a_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2)}, p)
    with pytest.raises(SerializationError, match="pickle"):
        gd.load(p)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(SerializationError, match="no such file"):
        gd.load(tmp_path / "nope.gdsl")
    with pytest.raises(SerializationError, match="not a file"):
        gd.load(tmp_path)


@pytest.mark.parametrize("path", [None, 42, b"", ""])
def test_read_archive_checks_the_path_first(path):
    with pytest.raises(SerializationError, match="read_archive needs a file path"):
        gd.io.read_archive(path, ["model.json"])


def test_from_json_never_modifies_a_parsed_dict():
    import copy

    @gd.register_function("t_io_twice")
    def twice(x, xp):
        return x * 2

    model = gd.layer(twice, gd.input("x", (None, 3)), name="out")
    doc = json.loads(gd.to_json(model))
    doc["nodes"][-1]["op"] = "layer"  # the op's name in earlier files
    before = copy.deepcopy(doc)
    gd.from_json(doc)
    assert doc == before


@pytest.mark.parametrize("name", ["../evil.json", "/etc/passwd", "a/../../b", "..\\x",
                                  "C:/x", "./model.json"])
def test_path_traversal_names(saved, tmp_path, name):
    path, _, _ = saved
    members = _members(path)
    members[name] = b"{}"
    bad = _rezip(path, tmp_path / "t.gdsl", members)
    with pytest.raises(SerializationError, match="path-traversal"):
        gd.load(bad)


def test_member_set_problems(saved, tmp_path):
    path, _, _ = saved
    members = _members(path)
    with pytest.raises(SerializationError, match="unexpected archive member 'notes.txt'"):
        gd.load(_rezip(path, tmp_path / "a.gdsl", {**members, "notes.txt": b"hi"}))
    with pytest.raises(SerializationError, match="lacks \\['weights.safetensors'\\]"):
        gd.load(_rezip(path, tmp_path / "b.gdsl", {k: v for k, v in members.items()
                                                    if k != "weights.safetensors"}))
    with pytest.raises(SerializationError, match="never unpickles"):
        gd.load(_rezip(path, tmp_path / "c.gdsl", {**members, "archive/data.pkl": b"x"}))
    many = {**members, **{f"m{i}.json": b"" for i in range(20)}}
    with pytest.raises(SerializationError, match="members"):
        gd.load(_rezip(path, tmp_path / "d.gdsl", many))
    dup = tmp_path / "e.gdsl"
    with zipfile.ZipFile(dup, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
        with pytest.warns(UserWarning):
            zf.writestr("model.json", members["model.json"])
    with pytest.raises(SerializationError, match="twice"):
        gd.load(dup)
    with pytest.raises(SerializationError, match="compression method"):
        gd.load(_rezip(path, tmp_path / "f.gdsl", members, zipfile.ZIP_BZIP2))


def test_zip_bombs(saved, tmp_path):
    path, _, _ = saved
    members = _members(path)
    # 70 MiB of JSON whitespace deflates to ~70 KiB: over the member size limit
    bomb = {**members, "model.json": members["model.json"] + b" " * (70 << 20)}
    p = _rezip(path, tmp_path / "bomb.gdsl", bomb)
    assert os.path.getsize(p) < 1 << 20
    with pytest.raises(SerializationError, match="declares .* over the limit"):
        gd.load(p)
    # a high compression ratio
    lim = LoadLimits(ratio_floor=1 << 10, max_ratio=50)
    padded = {**members, "model.json": members["model.json"] + b" " * (1 << 20)}
    p = _rezip(path, tmp_path / "ratio.gdsl", padded)
    with pytest.raises(SerializationError, match="ratio"):
        gd.load(p, limits=lim)
    # the total of all members
    with pytest.raises(SerializationError, match="in total"):
        gd.load(path, limits=LoadLimits(max_total_bytes=100))
    with pytest.raises(SerializationError, match="over the limit"):
        gd.load(path, limits=LoadLimits(max_file_bytes=100))


def test_lying_size_headers(saved, tmp_path):
    """A member whose declared size is smaller than its real content is caught (bounded
    read + CRC), never read past its declared size."""
    path, _, _ = saved
    blob = bytearray(open(path, "rb").read())
    cd = blob.rfind(b"PK\x01\x02")  # the last central-directory entry
    while cd >= 0:
        (usize,) = struct.unpack_from("<I", blob, cd + 24)
        if usize > 4:
            struct.pack_into("<I", blob, cd + 24, usize - 3)
        cd = blob.rfind(b"PK\x01\x02", 0, cd)
    with pytest.raises(SerializationError):
        gd.load(_write(tmp_path, bytes(blob)))


def _swap_json(path, tmp_path, member, fn, name="j.gdsl"):
    members = _members(path)
    doc = json.loads(members[member])
    fn(doc)
    members[member] = json.dumps(doc).encode()
    return _rezip(path, tmp_path / name, members)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.update(format_version=99), "format_version 99"),
    (lambda d: d["nodes"][0].update(op="sparse_moe"), "unknown op 'sparse_moe'"),
    (lambda d: d["nodes"][0].update(inputs=["dropout_0"]), "cycle"),
    (lambda d: d["nodes"][1].update(inputs=["ghost"]), "not defined"),
    (lambda d: d["nodes"][1].update(name="attn"), "used twice"),
    (lambda d: d["nodes"][2]["attrs"].update(units=4), "declares shape|has shape"),
])
def test_bad_model_json_in_a_file(saved, tmp_path, edit, msg):
    path, _, _ = saved
    with pytest.raises(gd.GraphDSLError, match=msg):
        gd.load(_swap_json(path, tmp_path, "model.json", edit))


def test_weights_that_do_not_fit_the_graph(saved, tmp_path):
    path, model, state = saved
    members = _members(path)
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    w = st_load(members["weights.safetensors"])

    def with_weights(ws, name):
        return _rezip(path, tmp_path / name, {**members, "weights.safetensors": st_save(ws)})

    with pytest.raises(SerializationError, match="out.kernel has shape \\(5, 4\\)"):
        gd.load(with_weights({**w, "out.kernel": np.zeros((5, 4), np.float32)}, "a.gdsl"))
    with pytest.raises(SerializationError, match="out.bias has dtype int32"):
        gd.load(with_weights({**w, "out.bias": np.zeros(3, np.int32)}, "b.gdsl"))
    with pytest.raises(SerializationError, match="dropout_0.key has dtype float32"):
        gd.load(with_weights({**w, "dropout_0.key": np.zeros((), np.float32)}, "c.gdsl"))
    with pytest.raises(SerializationError, match="lacks 1 value.*out.bias"):
        gd.load(with_weights({k: v for k, v in w.items() if k != "out.bias"}, "d.gdsl"))
    with pytest.raises(SerializationError, match="does not use: extra.w"):
        gd.load(with_weights({**w, "extra.w": np.zeros(1, np.float32)}, "e.gdsl"))
    with pytest.raises(SerializationError, match="not 'layer.param'"):
        gd.load(with_weights({**w, "nodot": np.zeros(1, np.float32)}, "f.gdsl"))
    raw = members["weights.safetensors"]
    for i, blob in enumerate([raw[:7], raw[:-4], b"\xff" * 8 + raw[8:],
                              raw.replace(b'"F32"', b'"Q32"', 1)]):
        with pytest.raises(SerializationError):
            gd.load(_rezip(path, tmp_path / f"g{i}.gdsl",
                           {**members, "weights.safetensors": blob}))


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.update(format_version=0), "format_version 0"),
    (lambda d: d.update(frozen=[["ghost", "kernel"]]), "not parameters"),
    (lambda d: d.update(frozen=[["dropout_0", "key"]]), "not parameters"),
    (lambda d: d.update(state={}), "state entries"),
    (lambda d: d.update(frozen="all"), "pairs"),
])
def test_bad_state_json(saved, tmp_path, edit, msg):
    path, _, _ = saved
    with pytest.raises(SerializationError, match=msg):
        gd.load(_swap_json(path, tmp_path, "state.json", edit))


def test_loading_never_resolves_dotted_names(saved, tmp_path):
    """A function reference is a registry key, never an import path."""
    path, _, _ = saved

    def edit(d):
        d["nodes"].append({"op": "layer", "name": "evil", "inputs": ["dropout_0"],
                           "attrs": {"fn": "os.system", "opts": {},
                                     "output_shape": [None, 3]}})
        d["outputs"] = "evil"

    with pytest.raises(SerializationError, match="'os.system', which is not registered"):
        gd.load(_swap_json(path, tmp_path, "model.json", edit))


def test_load_reads_from_memory_not_disk(saved, tmp_path, monkeypatch):
    """Loading writes nothing: the folder listing is unchanged."""
    path, _, _ = saved
    before = sorted(os.listdir(tmp_path))
    gd.load(path)
    assert sorted(os.listdir(tmp_path)) == before
    assert isinstance(io.BytesIO, type)  # (io imported for the reader-side helpers)
