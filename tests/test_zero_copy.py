"""Zero-copy loading (issue 24.4): gd.load and hf.from_pretrained map the safetensors
data read-only instead of reading it into new buffers; a save over the file (a new file
renamed into place) leaves an already loaded state as it was."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import hf
from graphdsl.errors import SerializationError, StateError


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a read-only map of a file (the end of its base chain)."""
    while isinstance(a, np.ndarray):
        a = a.base
    a = a.obj if isinstance(a, memoryview) else a
    return isinstance(a, mmap.mmap)


def _mlp():
    return gd.dense(gd.dense(gd.input("x", (None, 6)), 8, name="a", activation="relu"), 3,
                    name="b")


def test_load_maps_the_weights_read_only(tmp_path):
    model = _mlp()
    st = gd.build(model)[0]()
    gd.save(tmp_path / "m.gdsl", model, st)
    _, st2 = gd.load(tmp_path / "m.gdsl")
    k = st2.data["a"]["kernel"]
    assert _mapped(k) and not k.flags.writeable
    with pytest.raises(StateError):
        k[0, 0] = 1.0
    assert st2 == st


def test_a_save_over_the_loaded_file_leaves_the_loaded_state_as_it_was(tmp_path):
    model = _mlp()
    path = tmp_path / "m.gdsl"
    st = gd.build(model, seed=1)[0]()
    gd.save(path, model, st)
    _, loaded = gd.load(path)
    before = loaded.deepcopy()  # plain copies, independent of the file
    other = gd.build(model, seed=2)[0]()
    gd.save(path, model, other)  # temp file renamed over path: the mapped inode stays
    assert loaded == before and loaded != other
    x = np.ones((2, 6), np.float32)
    np.testing.assert_array_equal(gd.predict(model, loaded, x), gd.predict(model, before, x))
    assert gd.load(path)[1] == other


def test_a_damaged_mapped_member_fails_its_crc(tmp_path):
    model = _mlp()
    path = tmp_path / "m.gdsl"
    st = gd.build(model)[0]()
    gd.save(path, model, st)
    raw = bytearray(path.read_bytes())
    k = np.asarray(st.data["a"]["kernel"]).tobytes()
    at = raw.find(k[:16])  # inside the stored weights: a bit flip the header cannot see
    assert at > 0
    raw[at + 3] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(SerializationError, match="CRC"):
        gd.load(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    out = {}
    for name in ("float32", "bfloat16"):
        path = tmp_path_factory.mktemp(name)
        ref.to(getattr(torch, name)).save_pretrained(path)
        out[name] = str(path)
    return out


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_from_pretrained_maps_the_checkpoint(name, checkpoints, tmp_path):
    if name == "bfloat16":
        pytest.importorskip("ml_dtypes")
    model, st = hf.from_pretrained(checkpoints[name])
    values = [a for v in st.data.values() for q, a in v.items() if q != "key"]
    assert all(_mapped(a) and not a.flags.writeable for a in values)
    # a transposed Linear kernel is a view of the mapped weight, not a copy
    assert not st.data["model.layers.0.self_attn.q_proj"]["kernel"].flags.c_contiguous
    before = st.deepcopy()
    hf.save_pretrained(checkpoints[name], model, st.astype("float16"))  # over the same file
    assert st == before
    _, widened = hf.from_pretrained(checkpoints[name], dtype="float32")
    assert not _mapped(widened.data["model.norm"]["gamma"])  # float16 -> float32: new arrays


_MEASURE = textwrap.dedent("""
    import sys, gc, re, numpy as np
    import graphdsl as gd
    sys.path.insert(0, {root!r})
    from benchmarks.harness import peak_rss_growth
    model = gd.dense(gd.input("x", (None, 2048)), 4096, name="fc")
    st = gd.build(model)[0]()
    gd.save({path!r}, model, st)
    del st; gc.collect()
    out = {{}}
    def load():
        out["st"] = gd.load({path!r})[1]
        return sum(float(a.reshape(-1)[::1024].sum()) for a in out["st"].data["fc"].values())
    grown = peak_rss_growth(load)
    print(grown / (2048 * 4096 * 4 + 4096 * 4))
""")


def test_loading_costs_about_the_weights_bytes(tmp_path):
    """Peak RSS growth of gd.load of a 32 MiB model, every page of the kernel touched,
    in a fresh process: the mapped pages count once (the goal: <= 1.15x the weights'
    bytes; reading into new buffers, as before, cost about 2x)."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _MEASURE.format(root=root, path=str(tmp_path / "big.gdsl"))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    ratio = float(res.stdout.split()[-1])
    assert 0.9 < ratio <= 1.15, ratio


def _file_mapped(address: int, path) -> bool:
    """Whether ``address`` lies in a map of the file ``path`` (/proc/self/maps)."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc/self/maps here")
    with open("/proc/self/maps") as fh:
        for line in fh:
            span, *_, name = line.split(maxsplit=5)
            lo, hi = (int(v, 16) for v in span.split("-"))
            if lo <= address < hi and name.strip() == str(path):
                return True
    return False


def test_to_torch_of_a_loaded_state_maps_the_file_copy_on_write(tmp_path):
    """The module's parameters over a loaded state are copy-on-write maps of the weights
    file (no second copy of the weights until written); training writes stay in the
    module: the state, the file and a second module never see them."""
    torch = pytest.importorskip("torch")
    model = _mlp()
    st = gd.build(model)[0]()
    gd.save(tmp_path / "m.gdsl", model, st)
    before = (tmp_path / "m.gdsl").read_bytes()
    _, st2 = gd.load(tmp_path / "m.gdsl")
    m1, m2 = gd.to_torch(model, st2), gd.to_torch(model, st2)
    k1 = dict(m1.named_parameters())["a.kernel"]
    assert _file_mapped(k1.data_ptr(), tmp_path / "m.gdsl")  # not an anonymous copy
    x = torch.randn(4, 6)
    want = m2(x).detach().clone()
    opt = torch.optim.SGD(m1.parameters(), lr=0.5)
    m1(x).square().sum().backward()
    opt.step()  # writes every parameter of m1 in place
    assert not torch.equal(m1(x), want)
    torch.testing.assert_close(m2(x), want, rtol=0, atol=0)
    np.testing.assert_array_equal(st2.data["a"]["kernel"], st.data["a"]["kernel"])
    assert (tmp_path / "m.gdsl").read_bytes() == before
    np.testing.assert_array_equal(gd.from_torch(m2).data["a"]["kernel"], st.data["a"]["kernel"])


def test_to_torch_after_a_save_over_the_file_copies_from_the_state(tmp_path):
    """A file renamed over the mapped one is not the mapped bytes any more: the module
    then copies the state's values (the ones it was asked for), never the new file's."""
    pytest.importorskip("torch")
    model = _mlp()
    st = gd.build(model)[0]()
    gd.save(tmp_path / "m.gdsl", model, st)
    _, loaded = gd.load(tmp_path / "m.gdsl")
    gd.save(tmp_path / "m.gdsl", model, gd.build(model, seed=1)[0]())
    m = gd.to_torch(model, loaded)
    k = dict(m.named_parameters())["a.kernel"]
    assert not _file_mapped(k.data_ptr(), tmp_path / "m.gdsl")
    np.testing.assert_array_equal(k.detach().numpy(), st.data["a"]["kernel"])
