"""graphdsl.hf checkpoint folders as transformers writes and reads them: which file wins,
keys with or without the base model's prefix, old buffers, configs that do not fit the
weights, damaged files and misuse. Each load is compared with transformers' own."""
from __future__ import annotations

import json
import struct
import sys
import time

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import hf, lora, models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st_torch = pytest.importorskip("safetensors.torch")

IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
LLAMA = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
             max_position_embeddings=32, rms_norm_eps=1e-6)
GPT2 = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4)
BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=24, max_position_embeddings=16)


def _randomized(cls, config_cls, seed=0, model_kw=None, **kw):
    m = cls(config_cls(**kw, attn_implementation="eager"), **(model_kw or {})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return m


def _llama(seed=0):
    return _randomized(transformers.LlamaForCausalLM, transformers.LlamaConfig, seed, **LLAMA)


def _out(m, ids=IDS):
    with torch.no_grad():
        r = m(torch.from_numpy(ids))
    return (r.logits if hasattr(r, "logits") else r.last_hidden_state).numpy()


def _ours(folder, ids=IDS):
    model, state = hf.from_pretrained(folder)
    return gd.predict(model, state, ids)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _rewrite(folder, edit):
    """Rewrite model.safetensors as ``edit(tensors)`` returns it (keys, extra buffers)."""
    path = str(folder / "model.safetensors")
    st_torch.save_file(edit(st_torch.load_file(path)), path, metadata={"format": "pt"})


# -- point 3: after a save the folder means one thing; reading follows transformers ----
def test_saving_over_a_sharded_checkpoint_leaves_only_the_new_one(tmp_path):
    old, new = _llama(seed=0), _llama(seed=1)
    old.save_pretrained(tmp_path, max_shard_size="2KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    hf.save_pretrained(tmp_path, *hf.from_transformers(new))
    assert not [p.name for p in tmp_path.iterdir() if "index" in p.name or "-of-" in p.name]
    want = _out(new)
    _close(_out(transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()), want)
    _close(_ours(tmp_path), want)


def test_model_safetensors_wins_over_an_index_as_in_transformers(tmp_path):
    single, sharded = _llama(seed=0), _llama(seed=1)
    sharded.save_pretrained(tmp_path, max_shard_size="2KB")
    single.save_pretrained(tmp_path / "one")
    (tmp_path / "one" / "model.safetensors").rename(tmp_path / "model.safetensors")
    ref = _out(transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval())
    _close(ref, _out(single))  # transformers reads model.safetensors, not the index
    _close(_ours(tmp_path), ref)


# -- point 14 and the ignored buffers: keys as transformers accepts them ----------------
def _gpt2_canonical(t):
    """The published gpt2 layout: no ``transformer.`` prefix, no ``lm_head`` (tied), and
    the ``attn.bias`` / ``attn.masked_bias`` buffers older transformers saved."""
    out = {k.removeprefix("transformer."): v for k, v in t.items() if k != "lm_head.weight"}
    n = GPT2["n_positions"]
    for i in range(GPT2["n_layer"]):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def _with_buffers(t):
    """Prefixed keys plus the buffers older GPT-2 / LLaMA checkpoints carry."""
    t = dict(t)
    for k in list(t):
        if k.endswith("attn.c_attn.weight"):
            n = GPT2["n_positions"]
            t[k.replace("c_attn.weight", "bias")] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            t[k.replace("c_attn.weight", "masked_bias")] = torch.tensor(-1e4)
        if k.endswith("self_attn.q_proj.weight"):
            t[k.replace("q_proj.weight", "rotary_emb.inv_freq")] = torch.ones(2)
    return t


CASES = {  # name: (saved model, its rewrite, the transformers class that reads the folder)
    "gpt2_canonical": (lambda: _randomized(transformers.GPT2LMHeadModel,
                                           transformers.GPT2Config, **GPT2),
                       _gpt2_canonical, transformers.GPT2LMHeadModel),
    "gpt2_buffers": (lambda: _randomized(transformers.GPT2LMHeadModel,
                                         transformers.GPT2Config, **GPT2),
                     _with_buffers, transformers.GPT2LMHeadModel),
    "llama_inv_freq": (_llama, _with_buffers, transformers.LlamaForCausalLM),
    "gpt2_base_model": (lambda: _randomized(transformers.GPT2Model, transformers.GPT2Config,
                                            **GPT2), None, transformers.GPT2LMHeadModel),
    "llama_base_model": (lambda: _randomized(transformers.LlamaModel, transformers.LlamaConfig,
                                             **LLAMA), None, transformers.LlamaForCausalLM),
    "bert_prefixed": (lambda: _randomized(transformers.BertModel, transformers.BertConfig,
                                          model_kw={"add_pooling_layer": False}, **BERT),
                      lambda t: {"bert." + k: v for k, v in t.items()}, transformers.BertModel),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_key_layouts_transformers_reads(case, tmp_path):
    make, edit, reader = CASES[case]
    m = make()
    m.save_pretrained(tmp_path)
    if edit is not None:
        _rewrite(tmp_path, edit)
    ref = _out(reader.from_pretrained(tmp_path).eval())
    _close(_ours(tmp_path), ref)
    if edit is None:  # a live base model too
        model, state = hf.from_transformers(m)
        _close(gd.predict(model, state, IDS), ref)


def test_a_default_bert_model_loads_with_its_pooler(tmp_path):
    m = _randomized(transformers.BertModel, transformers.BertConfig, **BERT)
    m.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        ref = m(torch.from_numpy(IDS))
    for model, state in (hf.from_pretrained(tmp_path / "hf"), hf.from_transformers(m)):
        out = gd.predict(model, state, IDS)
        _close(out["last_hidden_state"], ref.last_hidden_state.numpy())
        _close(out["pooler_output"], ref.pooler_output.numpy())
    hf.save_pretrained(tmp_path / "ours", model, state)
    back = transformers.BertModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        _close(back(torch.from_numpy(IDS)).pooler_output.numpy(), ref.pooler_output.numpy())


# -- point 11: a config.json that does not fit the weights fails before building ---------
@pytest.mark.parametrize("field,value,held", [
    ("num_hidden_layers", 10**5, "2 block"), ("num_hidden_layers", 10**8, "2 block"),
    ("num_hidden_layers", 1, "2 block"), ("vocab_size", 10**9, "shape [50, 16]"),
    ("hidden_size", 10**8, "shape [50, 16]")])
def test_config_sizes_are_checked_against_the_headers_first(tmp_path, field, value, held):
    _llama().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, field: value}))
    t0 = time.perf_counter()
    with pytest.raises(gd.GraphDSLError) as e:
        hf.from_pretrained(tmp_path)
    assert time.perf_counter() - t0 < 0.5
    msg = str(e.value)
    assert f"config.json: {field} is {value}, but the checkpoint holds" in msg and held in msg
    assert "fix: set " + field in msg


def test_gpt2_n_layer_is_checked_too(tmp_path):
    _randomized(transformers.GPT2LMHeadModel, transformers.GPT2Config, **GPT2
                ).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_layer": 10**8}))
    with pytest.raises(gd.GraphDSLError, match=r"n_layer is 100000000, but the checkpoint "
                       r"holds 2 block\(s\) transformer\.h\.N"):
        hf.from_pretrained(tmp_path)


# -- point 15: models built from a config, as the README shows, save for transformers ----
BUILT = {
    "llama_config": (lambda: models.llama(transformers.LlamaConfig(**LLAMA)),
                     transformers.LlamaForCausalLM),
    "llama_dict": (lambda: models.llama(dict(LLAMA, hidden_act="silu", rope_theta=10000.0)),
                   transformers.LlamaForCausalLM),
    "gpt2_dict": (lambda: models.gpt2(dict(GPT2, layer_norm_epsilon=1e-5)),
                  transformers.GPT2LMHeadModel),
}


@pytest.mark.parametrize("case", sorted(BUILT))
def test_a_model_built_from_a_config_saves_for_transformers_and_peft(case, tmp_path):
    peft = pytest.importorskip("peft")
    make, cls = BUILT[case]
    model = make()
    rng = np.random.default_rng(0)
    init = gd.build(model)[0]()  # random weights; dropout RNG keys (uint64) kept
    state = gd.ModelState({layer: {p: rng.normal(1.0 if p == "gamma" else 0.0, 0.3, a.shape
                                                  ).astype(np.float32) if p != "key" else a
                                   for p, a in ps.items()}
                           for layer, ps in init.data.items()}, (), init.entries)
    hf.save_pretrained(tmp_path / "base", model, state)
    back = cls.from_pretrained(tmp_path / "base").eval()
    _close(_out(back), gd.predict(model, state, IDS))
    target = "c_attn" if case.startswith("gpt2") else "q_proj"
    adapted = lora.adapt(model, targets=[target], rank=2)
    st = gd.build(adapted)[0](None, state)
    for layer in st.data:
        if layer.endswith("_lora"):
            st.data[layer]["B"] = np.full(st.data[layer]["B"].shape, 0.05, np.float32)
    hf.save_peft(tmp_path / "adapter", adapted, st)
    peft_model = peft.PeftModel.from_pretrained(back, tmp_path / "adapter").eval()
    _close(_out(peft_model), gd.predict(adapted, st, IDS))


# -- point 19: damaged files are errors naming the file and the fix ---------------------
def _header_file(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _damage_config(d, text):
    (d / "config.json").write_text(text)


def _damage_index(d, text):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(text)


def _damage_header(d, header, data):
    _header_file(d / "model.safetensors", header, data)


DAMAGED = {
    "config_not_json": (lambda d: _damage_config(d, "{nope"), "config.json is not valid JSON"),
    "config_a_list": (lambda d: _damage_config(d, "[1, 2]"), "config.json holds a JSON list"),
    "index_not_json": (lambda d: _damage_index(d, "{"),
                       "model.safetensors.index.json is not valid JSON"),
    "index_empty": (lambda d: _damage_index(d, "{}"), "'weight_map' must map"),
    "weight_map_a_list": (lambda d: _damage_index(d, '{"weight_map": ["a"]}'),
                          "'weight_map' must map"),
    "shard_missing": (lambda d: _damage_index(
        d, '{"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}'),
        "names model-00001-of-00002.safetensors, which is not in the folder"),
    "offsets_outside": (lambda d: _damage_header(d, {"w.weight": {
        "dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, bytes(8)),
        "data offsets [0, 80] outside the 8-byte data"),
    "size_mismatch": (lambda d: _damage_header(d, {"w.weight": {
        "dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "spans 8 bytes, its shape (3,) and dtype F32 need 12"),
    "header_too_long": (lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 10**12) + b"{}"), "header length 1000000000000 does not fit"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_checkpoint_is_an_error_naming_the_file(case, tmp_path):
    damage, what = DAMAGED[case]
    _llama().save_pretrained(tmp_path)
    damage(tmp_path)
    with pytest.raises(gd.GraphDSLError, match="fix: ") as e:
        hf.from_pretrained(tmp_path)
    assert what in str(e.value)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_an_fp8_checkpoint_is_an_unsupported_dtype_not_damage(dtype, tmp_path):
    _llama().save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: {k: v.to(getattr(torch, dtype)) for k, v in t.items()})
    code = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}[dtype]
    assert st_torch.load_file(str(tmp_path / "model.safetensors"))  # a valid file
    with pytest.raises(gd.GraphDSLError, match=f"unsupported dtype '{code}'") as e:
        hf.from_pretrained(tmp_path)
    assert "damaged" not in str(e.value) and "model.safetensors" in str(e.value)


# -- point 20 and the README: misuse names the argument and the fix ---------------------
def test_misuse_of_the_bridge_names_the_argument(tmp_path, monkeypatch):
    m = _llama()
    m.save_pretrained(tmp_path / "ckpt")
    model, state = hf.from_pretrained(tmp_path / "ckpt")
    _close(gd.predict(model, state, IDS), _out(m))
    cases = [
        (lambda: hf.from_pretrained(tmp_path / "ckpt" / "config.json"),
         r"from_pretrained\(folder\) .*config.json' is a file, not a folder"),
        (lambda: hf.from_pretrained(None), r"from_pretrained\(folder\) must be a folder path"),
        (lambda: hf.save_pretrained(None, model, state), r"save_pretrained\(folder\) must be"),
        (lambda: hf.save_pretrained(tmp_path / "ckpt" / "config.json", model, state),
         "is a file, not a folder"),
        (lambda: hf.save_pretrained(tmp_path / "o", model, None),
         r"save_pretrained\(state\) must be a ModelState, got NoneType"),
        (lambda: hf.save_pretrained(tmp_path / "o", model, gd.ModelState(
            {k: v for k, v in state.data.items() if k != "model.norm"})),
         "lacks 1 value.*model.norm.gamma"),
        (lambda: hf.from_transformers(None), r"from_transformers\(hf_model\) needs a "
                                             r"transformers model, got NoneType"),
        (lambda: hf.from_transformers(m.config), "(?s)got LlamaConfig.*models.llama"),
    ]
    for call, match in cases:
        with pytest.raises(gd.GraphDSLError, match=match):
            call()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(gd.GraphDSLError, match="(?s)'gpt2' is not a folder here.*does not "
                       "download Hub ids.*snapshot_download"):
        hf.from_pretrained("gpt2")
    assert not (tmp_path / "o").exists()


def test_reading_needs_no_safetensors_and_saving_says_what_to_install(tmp_path, monkeypatch):
    m = _llama()
    m.save_pretrained(tmp_path / "ckpt")
    model, state = hf.from_pretrained(tmp_path / "ckpt")
    for name in [k for k in sys.modules if k.split(".")[0] == "safetensors"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors fails
    _close(_ours(tmp_path / "ckpt"), _out(m))
    with pytest.raises(gd.GraphDSLError, match=r"pip install 'graphdsl\[io\]'"):
        hf.save_pretrained(tmp_path / "out", model, state)
