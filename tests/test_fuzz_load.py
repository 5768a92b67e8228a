"""Fuzz the loaders: thousands of mutated valid files (byte flips, truncations, insertions,
zip member swaps/renames, JSON and safetensors-header mutations). Loading each one either
succeeds or raises a GraphDSLError: no other exception, no hang, no file written."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import tempfile
import zipfile

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora

pytest.importorskip("safetensors")

N_MUTANTS = int(os.environ.get("GRAPHDSL_FUZZ_N", "2400"))
HANG_SECONDS = 20  # a watchdog, not a timing assertion: one load never takes this long


class Hang(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds: int):
    if not hasattr(signal, "setitimer"):  # pragma: no cover - non-Unix
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"a load ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _model():
    x = gd.input("x", (None, 6))
    ids = gd.input("ids", (None, 3), dtype="int64")
    e = gd.flatten(gd.embedding(ids, 7, 2, name="emb"))
    h = gd.dense(gd.concatenate([x, e], axis=-1), 8, activation="relu", name="attn_q")
    h = gd.layer_norm(gd.dropout(h, 0.1), name="ln")
    h = gd.add(h, gd.constant(np.linspace(0, 1, 8), name="shift"))
    out = gd.dense(h, 4, name="head")
    base = gd.container({"logits": out, "probs": gd.softmax(out)})
    adapted = dora.adapt(base, targets=["attn_q"], rank=2)
    state = gd.build(adapted, seed=1)[0]()
    return adapted, state


def _members(blob: bytes) -> list[tuple[str, bytes]]:
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a mutation
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, method)
    return buf.getvalue()


JUNK = [None, True, -1, 0, 2**70, 1e308, -0.5, "", "x", "../../etc", [], {}, [None],
        {"$array": {"dtype": "float32", "shape": [2**40], "data": []}},
        {"$function": "os.system"}, [[[[[[[[1]]]]]]]], "dense", {"a": {"b": {"c": [1]}}}]


def _paths(obj, prefix=()):
    """Every (container, key) location in a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield obj, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield obj, i
            yield from _paths(v, prefix + (i,))


def _names(doc) -> list[str]:
    out = []
    if isinstance(doc, dict):
        for section in ("inputs", "nodes", "adapters"):
            for e in doc.get(section, []) if isinstance(doc.get(section), list) else []:
                if isinstance(e, dict) and isinstance(e.get("name"), str):
                    out.append(e["name"])
    return out or ["x"]


def mutate_json(rnd: random.Random, data: bytes) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    doc = copy.deepcopy(doc)
    for _ in range(rnd.randint(1, 3)):
        locs = list(_paths(doc))
        if not locs:
            break
        parent, key = rnd.choice(locs)
        kind = rnd.randrange(7)
        if kind == 0 and isinstance(parent, dict):
            del parent[key]
        elif kind == 1:
            parent[key] = copy.deepcopy(rnd.choice(JUNK))
        elif kind == 2:  # point a reference at another (or the same) name: cycles, danglers
            parent[key] = rnd.choice(_names(doc) + ["ghost"])
        elif kind == 3 and isinstance(parent, list):
            parent.insert(rnd.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
        elif kind == 4 and isinstance(parent[key], list):
            rnd.shuffle(parent[key])
        elif kind == 5 and isinstance(parent[key], (int, float)) and not isinstance(
                parent[key], bool):
            parent[key] = rnd.choice([parent[key] + 1, -parent[key], parent[key] * 1000, 0])
        elif kind == 6 and isinstance(parent, dict):
            parent[rnd.choice(["zz", "$array", "format_version", "frozen"])] = \
                copy.deepcopy(rnd.choice(JUNK))
    return json.dumps(doc).encode()


def mutate_safetensors(rnd: random.Random, data: bytes) -> bytes:
    if len(data) < 9:
        return data
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n]
    choice = rnd.randrange(4)
    if choice == 0:
        new = mutate_json(rnd, header)
        return len(new).to_bytes(8, "little") + new + data[8 + n:]
    if choice == 1:  # lie about the header length
        return (n + rnd.randint(-20, 20)).to_bytes(8, "little", signed=True) + data[8:]
    if choice == 2:
        for a, b in ((b'"F32"', b'"F16"'), (b'"F32"', b'"I64"'), (b'"U64"', b'"F64"'),
                     (b"[", b"[9,"), (b'"shape":[', b'"shape":[0,')):
            if a in header and rnd.random() < 0.5:
                header = header.replace(a, b, 1)
        return len(header).to_bytes(8, "little") + header + data[8 + n:]
    cut = rnd.randrange(len(data))
    return data[:cut] + data[cut + rnd.randint(1, 16):]


def mutate(rnd: random.Random, blob: bytes) -> bytes:
    kind = rnd.randrange(8)
    if kind == 0:  # flip bytes
        b = bytearray(blob)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        return bytes(b)
    if kind == 1:  # truncate
        return blob[:rnd.randrange(len(blob))]
    if kind == 2:  # insert junk
        i = rnd.randrange(len(blob))
        return blob[:i] + os.urandom(rnd.randint(1, 64)) + blob[i:]
    members = _members(blob)
    if kind == 3:  # swap contents between members
        i, j = rnd.randrange(len(members)), rnd.randrange(len(members))
        (a, da), (b, db) = members[i], members[j]
        members[i], members[j] = (a, db), (b, da)
        return _zip(members)
    if kind == 4:  # rename / duplicate / drop members, other compression
        op = rnd.randrange(4)
        i = rnd.randrange(len(members))
        if op == 0:
            members[i] = (rnd.choice(["../model.json", "/abs.json", "x/../../y", "a\\b",
                                      "weights.safetensors", "model.json", "data.pkl",
                                      "README", ""]), members[i][1])
        elif op == 1:
            members.append(members[i])
        elif op == 2:
            members.pop(i)
        method = rnd.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                             zipfile.ZIP_LZMA])
        return _zip(members, method)
    if kind in (5, 6):  # JSON members
        js = [i for i, (n, _) in enumerate(members) if n.endswith(".json")]
        i = rnd.choice(js)
        members[i] = (members[i][0], mutate_json(rnd, members[i][1]))
        return _zip(members)
    ws = [i for i, (n, _) in enumerate(members) if n.endswith(".safetensors")]
    i = rnd.choice(ws)
    members[i] = (members[i][0], mutate_safetensors(rnd, members[i][1]))
    return _zip(members, zipfile.ZIP_STORED)


def _listing(*dirs):
    return {d: sorted(os.listdir(d)) for d in dirs}


def test_fuzz_load(tmp_path, monkeypatch):
    model, state = _model()
    model_file = gd.save(tmp_path / "model.gdsl", model, state)
    adapter_file = gd.save_adapters(tmp_path / "adapters.gdsl", model, state)
    base_state = state.copy()
    for layer in ("attn_q_dora",):
        base_state.data.pop(layer)
    blobs = {"model": open(model_file, "rb").read(), "adapters": open(adapter_file, "rb").read()}
    gd.load(model_file)  # sanity: the originals load
    gd.load_adapters(adapter_file, model, base_state)

    work = tmp_path / "work"
    work.mkdir()
    private_tmp = tmp_path / "tmp"  # anything using tempfile would land here
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.chdir(work)
    target = str(work / "mutant.gdsl")
    watched = [str(work), str(private_tmp), str(tmp_path)]
    assert tempfile.gettempdir() == str(private_tmp)
    before = _listing(*watched)
    rnd = random.Random(20240601)
    outcomes = {"error": 0, "loaded": 0}
    failures = []
    for i in range(N_MUTANTS):
        which = "model" if i % 4 else "adapters"
        blob = mutate(rnd, blobs[which])
        with open(target, "wb") as f:
            f.write(blob)
        try:
            with watchdog(HANG_SECONDS):
                if which == "model":
                    m, s = gd.load(target)
                    gd.to_json(m)  # a loaded mutant is a usable model
                else:
                    gd.load_adapters(target, model, base_state)
            outcomes["loaded"] += 1
        except gd.GraphDSLError as e:
            assert str(e).strip(), "an error needs a message"
            outcomes["error"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            failures.append((i, which, f"{type(e).__name__}: {e}"[:300]))
            if len(failures) > 5:
                break
    os.unlink(target)
    assert not failures, failures
    assert _listing(*watched) == before, "loading wrote a file"
    assert outcomes["error"] + outcomes["loaded"] == N_MUTANTS >= 2000
    assert outcomes["error"] > N_MUTANTS // 2  # the mutations do reach the checks
