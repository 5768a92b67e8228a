"""graphdsl.hf.save_peft / load_peft against Hugging Face PEFT and transformers: adapters
graphdsl trains load in ``PeftModel.from_pretrained`` and adapters PEFT trains load in
graphdsl, with the same logits to 1e-4 (LoRA, DoRA, rsLoRA, GPT-2's fused Conv1D
``c_attn``, modules_to_save)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, hf, lora
from graphdsl.graph import analyze

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _llama(tie=False):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
        attn_implementation="eager"))


def _gpt2(tie=True):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4, tie_word_embeddings=tie,
        attn_implementation="eager", bos_token_id=0, eos_token_id=0))


def _gpt2_untied():  # its lm_head is a Linear beside the Conv1D blocks
    return _gpt2(tie=False)


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=24, max_position_embeddings=8, attn_implementation="eager"),
        add_pooling_layer=False)


def _base(make, seed=0):
    """A transformers model with random (non-init) weights, in eval mode."""
    torch.manual_seed(seed)
    m = make().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return m


def _out(m, ids=IDS):
    with torch.no_grad():
        r = m(input_ids=torch.from_numpy(ids))
    return (r.logits if hasattr(r, "logits") else r.last_hidden_state).numpy()


def _randomize_adapter(model, state, seed=1):
    """Random B and magnitude (and A): a trained-looking adapter, not its init."""
    rng = np.random.default_rng(seed)
    data = {k: dict(v) for k, v in state.data.items()}
    for n in analyze(model).order:
        if n.op in ("dora", "lora"):
            p = data[n.name]
            p["A"] = rng.normal(0, 0.3, p["A"].shape).astype(np.float32)
            p["B"] = rng.normal(0, 0.3, p["B"].shape).astype(np.float32)
            if "magnitude" in p:
                p["magnitude"] = (p["magnitude"] * rng.uniform(0.5, 1.5, p["magnitude"].shape)
                                  ).astype(np.float32)
    return gd.ModelState(data, state.frozen, state.entries)


# -- graphdsl -> PEFT ----------------------------------------------------------------------
SAVE_CASES = {
    "llama_dora_all7_lm_head": (_llama, dora, LLAMA_ALL, {}, ["lm_head"]),
    "llama_lora_rslora_qv": (_llama, lora, ["q_proj", "v_proj"], {"rslora": True}, None),
    "llama_lora_layer0_norm": (_llama, lora, ["model.layers.0.mlp.up_proj"], {},
                               ["model.norm"]),
    "gpt2_dora_conv1d": (_gpt2, dora, ["c_attn", "c_proj", "c_fc"], {}, ["transformer.ln_f"]),
    "gpt2_lora_c_attn": (_gpt2, lora, ["c_attn"], {"rslora": True}, None),
    "gpt2_untied_lora_lm_head": (_gpt2_untied, lora, ["c_fc"], {}, ["lm_head"]),
    "bert_dora": (_bert, dora, ["query", "value", "dense"], {}, None),
    "llama_dora_embedding": (_llama, dora, ["embed_tokens", "q_proj"], {}, None),
    "gpt2_lora_embedding_tied": (_gpt2, lora, ["wte", "c_attn"], {}, None),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_save_peft_loads_in_peft_with_the_same_output(case, tmp_path):
    make, mod, targets, opts, saved = SAVE_CASES[case]
    base = _base(make)
    model, st = hf.from_transformers(base)
    adapted = mod.adapt(model, targets, rank=4, alpha=8.0, modules_to_save=saved, **opts)
    st = _randomize_adapter(adapted, gd.build(adapted)[0](initial_state=st))
    if saved:  # a trained module_to_save: new values
        data = {k: dict(v) for k, v in st.data.items()}
        for m in saved:
            data[m] = {q: (v * 0.5 + 0.1).astype(np.float32) for q, v in data[m].items()}
        st = gd.ModelState(data, st.frozen, st.entries)
    ours = gd.predict(adapted, st, IDS)
    hf.save_peft(str(tmp_path / "ad"), adapted, st)
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["use_dora"] == (mod is dora) and cfg["r"] == 4
    assert cfg["fan_in_fan_out"] == (make in (_gpt2, _gpt2_untied))
    pm = peft.PeftModel.from_pretrained(_base(make), str(tmp_path / "ad")).eval()
    n_adapted = sum(1 for n, _ in pm.named_modules() if n.endswith(".lora_A"))
    assert n_adapted == sum(1 for n in analyze(adapted).order
                            if n.op == mod.OP)
    ref = _out(pm)
    assert not np.allclose(ref, _out(_base(make)), atol=1e-3)  # the adapter does something
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # and back: identical state values
    again, st2 = hf.load_peft(str(tmp_path / "ad"), model, hf.from_transformers(base)[1])
    assert sorted(st2.data) == sorted(st.data)
    for layer, params in st.data.items():
        for q, v in params.items():
            if q != "key":
                np.testing.assert_array_equal(st2.data[layer][q], v, err_msg=f"{layer}.{q}")
    np.testing.assert_array_equal(gd.predict(again, st2, IDS), ours)


def test_save_peft_short_targets_only_where_they_select_exactly(tmp_path):
    model, st = hf.from_transformers(_base(_llama))
    adapted = lora.adapt(model, ["q_proj", "model.layers.1.mlp.up_proj"], rank=2)
    hf.save_peft(str(tmp_path), adapted, gd.build(adapted)[0](initial_state=st))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["model.layers.1.mlp.up_proj", "q_proj"]
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["modules_to_save"] is None


# -- PEFT -> graphdsl ----------------------------------------------------------------------
def _peft_trained(make, tmp_path, **cfg):
    """A PEFT model with random (trained-looking) adapter weights, saved to tmp_path."""
    base = _base(make)
    pm = peft.get_peft_model(_base(make), peft.LoraConfig(r=4, lora_alpha=8, **cfg)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.mul_(torch.rand(p.shape, generator=g) + 0.5).add_(
                    torch.randn(p.shape, generator=g) * 0.2)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(tmp_path))
    return base, _out(pm)


LOAD_CASES = {
    "llama_dora_all7": (_llama, dict(target_modules=LLAMA_ALL, use_dora=True)),
    "llama_lora_rslora_subset_norms": (_llama, dict(  # "norm": every *norm (a plain suffix)
        target_modules=["k_proj", "down_proj"], use_rslora=True, lora_dropout=0.1,
        modules_to_save=["norm"])),
    "llama_dora_regex_lm_head": (_llama, dict(
        target_modules=r".*layers\.1\.self_attn\.(q|v)_proj", use_dora=True,
        use_rslora=True, modules_to_save=["lm_head"], task_type="CAUSAL_LM")),
    "gpt2_dora_fan_in_fan_out": (_gpt2, dict(target_modules=["c_attn", "c_fc"],
                                             use_dora=True, fan_in_fan_out=True)),
    "gpt2_lora_mlp_c_proj": (_gpt2, dict(target_modules=["mlp.c_proj"], fan_in_fan_out=True,
                                         modules_to_save=["ln_f"])),
    "gpt2_untied_dora_lm_head": (_gpt2_untied, dict(target_modules=["c_attn"], use_dora=True,
                                                    modules_to_save=["lm_head"])),
    "bert_lora": (_bert, dict(target_modules=["key", "output.dense"],
                              task_type="FEATURE_EXTRACTION")),
    "llama_dora_embedding": (_llama, dict(target_modules=["embed_tokens", "v_proj"],
                                          use_dora=True)),
    "gpt2_lora_embedding_tied": (_gpt2, dict(target_modules=["wte", "c_fc"],
                                             fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_load_peft_reproduces_peft(case, tmp_path):
    make, cfg = LOAD_CASES[case]
    base, ref = _peft_trained(make, tmp_path, **cfg)
    model, st = hf.from_transformers(base)
    adapted, st2 = hf.load_peft(str(tmp_path), model, st)
    assert not np.allclose(ref, _out(base), atol=1e-3)
    np.testing.assert_allclose(gd.predict(adapted, st2, IDS), ref, rtol=1e-4, atol=1e-4)
    # trainable: the adapters and modules_to_save; everything else frozen
    trainable = {lay for lay, vals in st2.data.items() for q in vals
                 if (lay, q) not in st2.frozen and q != "key"}
    saved = set(cfg.get("modules_to_save") or ())
    assert all(t.endswith(("_dora", "_lora")) or any(t.endswith(m) for m in saved)
               for t in trainable)


def test_load_peft_imports_neither_torch_nor_peft(tmp_path):
    import subprocess
    import sys
    import textwrap

    base, ref = _peft_trained(_llama, tmp_path / "ad", target_modules=["q_proj"],
                              use_dora=True)
    base.save_pretrained(tmp_path / "base")
    np.save(tmp_path / "ref.npy", ref)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from graphdsl import hf, predict
        model, st = hf.from_pretrained({str(tmp_path / 'base')!r})
        adapted, st = hf.load_peft({str(tmp_path / 'ad')!r}, model, st)
        out = predict(adapted, st, np.array({IDS.tolist()}))
        np.testing.assert_allclose(out, np.load({str(tmp_path / 'ref.npy')!r}),
                                   rtol=1e-4, atol=1e-4)
        assert not any(m in sys.modules for m in ("torch", "peft", "transformers")), \\
            [m for m in ("torch", "peft", "transformers") if m in sys.modules]
        """)
    subprocess.run([sys.executable, "-c", code], check=True)


# -- errors --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("peft")
    base, _ = _peft_trained(_llama, d, target_modules=["q_proj", "v_proj"], use_dora=True)
    return d, hf.from_transformers(base)


def _edit(src, dst, cfg=None, drop=(), reshape=None, add=None):
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    c = json.loads((src / "adapter_config.json").read_text())
    c.update(cfg or {})
    (dst / "adapter_config.json").write_text(json.dumps(c))
    t = load_file(str(src / "adapter_model.safetensors"))
    for k in drop:
        del t[k]
    for k, shape in (reshape or {}).items():
        t[k] = np.zeros(shape, np.float32)
    t.update(add or {})
    save_file(t, str(dst / "adapter_model.safetensors"))
    return str(dst)


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("cfg, words", [
    ({"peft_type": "IA3"}, ["peft_type", "IA3"]),
    ({"rank_pattern": {"q_proj": 8}}, ["rank_pattern"]),
    ({"alpha_pattern": {"q_proj": 4}}, ["alpha_pattern"]),
    ({"layers_to_transform": [0]}, ["layers_to_transform"]),
    ({"layers_pattern": "layers"}, ["layers_pattern"]),
    ({"exclude_modules": ["q_proj"]}, ["exclude_modules"]),
    ({"bias": "all"}, ["bias", "all"]),
    ({"lora_bias": True}, ["lora_bias"]),
    ({"use_qalora": True}, ["use_qalora"]),
    ({"layer_replication": [[0, 1]]}, ["layer_replication"]),
    ({"init_lora_weights": "pissa"}, ["init_lora_weights", "pissa"]),
    ({"a_future_peft_option": 3}, ["a_future_peft_option"]),
    ({"task_type": "SEQ_CLS"}, ["task_type", "SEQ_CLS"]),
    ({"r": 0}, ["r=0"]),
    ({"target_modules": ["nope_proj"]}, ["nope_proj", "matches no layer"]),
    ({"target_modules": ["model.norm"]}, ["model.norm", "rms_norm"]),
    ({"modules_to_save": ["nope"]}, ["modules_to_save", "nope"]),
    ({"target_modules": r".*(q_proj"}, ["adapter_config.json", "target_modules",
                                        "not a valid regular expression", "regex"]),
])
def test_load_peft_refuses_what_it_does_not_implement(peft_dir, tmp_path, cfg, words):
    src, (model, st) = peft_dir
    d = _edit(src, tmp_path / "bad", cfg=cfg)
    with pytest.raises(gd.GraphDSLError) as e:
        hf.load_peft(d, model, st)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("edit, words", [
    (dict(drop=[f"{Q0}.lora_B.weight"]), ["missing", f"{Q0}.lora_B.weight"]),
    (dict(drop=[f"{Q0}.lora_magnitude_vector"]), ["missing", f"{Q0}.lora_magnitude_vector"]),
    (dict(reshape={f"{Q0}.lora_A.weight": (4, 15)}), [f"{Q0}.lora_A.weight", "(4, 15)",
                                                       "(4, 16)"]),
    (dict(reshape={f"{Q0}.lora_magnitude_vector": (17,)}), ["lora_magnitude_vector",
                                                            "(17,)", "(16,)"]),
    (dict(cfg={"r": 2}), ["lora_A.weight", "(4, 16)", "(2, 16)"]),
    (dict(cfg={"use_dora": False}), ["unexpected", "lora_magnitude_vector"]),
    (dict(add={"base_model.model.model.norm.weight": np.ones(16, np.float32)}),
     ["unexpected", "base_model.model.model.norm.weight"]),
])
def test_load_peft_names_the_key_that_does_not_fit(peft_dir, tmp_path, edit, words):
    src, (model, st) = peft_dir
    d = _edit(src, tmp_path / "bad", **edit)
    with pytest.raises(gd.GraphDSLError) as e:
        hf.load_peft(d, model, st)
    for w in words:
        assert w in str(e.value)


def test_load_peft_missing_files(peft_dir, tmp_path):
    src, (model, st) = peft_dir
    with pytest.raises(gd.GraphDSLError, match="adapter_config.json"):
        hf.load_peft(str(tmp_path), model, st)
    (tmp_path / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(gd.GraphDSLError, match="safe_serialization"):
        hf.load_peft(str(tmp_path), model, st)


def test_save_peft_refuses_what_peft_cannot_hold(tmp_path):
    model, st = hf.from_transformers(_base(_llama))
    mixed = lora.adapt(dora.adapt(model, ["q_proj"], rank=4), ["v_proj"], rank=4)
    with pytest.raises(gd.GraphDSLError, match="one op"):
        hf.save_peft(str(tmp_path), mixed, gd.build(mixed)[0](initial_state=st))
    ranks = lora.adapt(lora.adapt(model, ["q_proj"], rank=4), ["v_proj"], rank=2)
    with pytest.raises(gd.GraphDSLError, match="rank"):
        hf.save_peft(str(tmp_path), ranks, gd.build(ranks)[0](initial_state=st))
    with pytest.raises(gd.GraphDSLError, match="no dora or lora"):
        hf.save_peft(str(tmp_path), model, st)
    assert not (tmp_path / "adapter_config.json").exists()


# -- issue 13 point 1: adapt's targets follow PEFT's target_modules rule --------------------
@pytest.mark.parametrize("targets", [
    ["q_proj"],                                   # every layer ending in ".q_proj"
    ["model.layers.1.self_attn.q_proj"],          # an exact full name
    ["self_attn.v_proj", "xq_proj"],              # a suffix of several segments
    ["q_proj", "layers.0.mlp.q_proj"],
    r"model\.layers\.\d\.self_attn\.(q|v)_proj",  # a regex, full match
    r".*\.0\..*_proj",
])
@pytest.mark.parametrize("mod", [dora, lora])
def test_adapt_selects_the_layers_peft_selects(targets, mod):
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [f"model.layers.{i}.{blk}.{p}" for i in range(2) for blk in ("self_attn", "mlp")
             for p in ("q_proj", "v_proj", "xq_proj")]
    h = gd.input("x", (None, 4))
    for name in names:
        h = gd.dense(h, 4, name=name)
    adapted = mod.adapt(h, targets, rank=2)
    ours = sorted(n.name[:-5] for n in gd.topo_order(adapted) if n.op == mod.OP)
    cfg = peft.LoraConfig(target_modules=targets)
    theirs = sorted(n for n in names if check_target_module_exists(cfg, n))
    assert ours == theirs and ours


TARGET_NAMES = ["q_proj", "xq_proj", "model.q_proj", "model.xq_proj", "model.q_proj_x",
                "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.xq_proj",
                "model.layers.0.attn.q_proj", "lm_head", "model.lm_head.q_proj"]


@pytest.mark.parametrize("spec", [
    ["q_proj"], ["xq_proj"], ["proj"], ["self_attn.q_proj"], ["attn.q_proj"],
    ["model.layers.0.self_attn.q_proj"], ["lm_head", "q_proj"], ["layers.0"],
    r".*q_proj", r".*\.q_proj", r"q_proj", r"model\..*attn\.(x?q)_proj", r"lm_head|.*xq.*",
])
def test_is_target_agrees_with_peft_check_target_module_exists(spec):
    """graphdsl.hf's target_modules rule (used by load_peft) against PEFT's own function,
    on names where a suffix without the dot boundary would differ (xq_proj vs q_proj)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from graphdsl.hf.peft_config import is_target

    cfg = peft.LoraConfig(target_modules=spec)
    for name in TARGET_NAMES:
        assert is_target(spec, name) == bool(check_target_module_exists(cfg, name)), name


def test_adapt_targets_never_match_part_of_a_segment_or_of_a_name():
    h = gd.input("x", (None, 4))
    for name in ("model.q_proj_extra", "model.xq_proj"):
        h = gd.dense(h, 4, name=name)
    for bad in (["q_proj"], ["proj"], "q_proj", r"model\.q_proj"):  # list: segment; regex: full
        with pytest.raises(gd.GraphDSLError, match="(match|matches) no adaptable"):
            lora.adapt(h, bad, rank=2)


def test_save_peft_with_dora_eps_only_while_the_clamp_is_inactive(tmp_path):
    model, st = hf.from_transformers(_base(_llama))
    adapted = dora.adapt(model, ["o_proj"], rank=2, eps=1e-6)
    st = gd.build(adapted)[0](initial_state=st)
    hf.save_peft(str(tmp_path / "ok"), adapted, st)  # every norm is far above eps
    data = {k: dict(v) for k, v in st.data.items()}
    k = data["model.layers.0.self_attn.o_proj"]["kernel"].copy()
    k[:, 3] = 0.0  # a zero column (B = 0): graphdsl clamps its norm, PEFT would not
    data["model.layers.0.self_attn.o_proj"]["kernel"] = k
    with pytest.raises(gd.GraphDSLError, match=r"output unit\(s\) \[3\].*eps"):
        hf.save_peft(str(tmp_path / "bad"), adapted, gd.ModelState(data, st.frozen,
                                                                    st.entries))


def test_load_peft_reads_float16_and_bfloat16(peft_dir, tmp_path):
    """Half-precision adapter files load, widened to float32; bfloat16 exactly (its bits
    are a float32's high half), with or without ml_dtypes imported."""
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    src, (model, st) = peft_dir
    t = load_file(str(src / "adapter_model.safetensors"))
    adapted, ref = hf.load_peft(str(src), model, st)
    for dtype in (torch.float16, torch.bfloat16):
        d = tmp_path / str(dtype)
        d.mkdir()
        (d / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
        half = {k: torch.from_numpy(v).to(dtype) for k, v in t.items()}
        save_file(half, str(d / "adapter_model.safetensors"))
        _, st16 = hf.load_peft(str(d), model, st)
        np.testing.assert_allclose(gd.predict(adapted, st16, IDS),
                                   gd.predict(adapted, ref, IDS), rtol=2e-2, atol=2e-2)
        assert all(v.dtype == np.float32 for params in st16.data.values()
                   for q, v in params.items() if q != "key")


def test_bfloat16_is_widened_exactly(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import save_file

    from graphdsl.io.weights import read_safetensors_file

    x = torch.randn(5, 3).to(torch.bfloat16)
    save_file({"w": x, "i": torch.arange(4)}, str(tmp_path / "m.safetensors"))
    got = read_safetensors_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(got["w"], x.float().numpy())
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["i"], np.arange(4))
    # the same with ml_dtypes imported first (safetensors then knows bfloat16 itself)
    code = ("import ml_dtypes, numpy as np; from graphdsl.io.weights import "
            f"read_safetensors_file as r; w = r({str(tmp_path / 'm.safetensors')!r})['w']; "
            "assert w.dtype == np.float32, w.dtype; print(w.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "No module named 'ml_dtypes'" not in out.stderr:
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == str(x.float().numpy().tolist())


def test_load_peft_takes_the_embedding_weight_peft_saved_beside_its_adapter(tmp_path):
    """With an embedding in target_modules PEFT also saves the embedding's own weight
    (``base_layer.weight``, it may have been resized or trained); PEFT loads it, so do we."""
    from safetensors.numpy import load_file

    base, _ = _peft_trained(_llama, tmp_path / "src", target_modules=["embed_tokens"],
                            use_dora=True)
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    w = load_file(str(tmp_path / "src" / "adapter_model.safetensors"))[key]
    d = _edit(tmp_path / "src", tmp_path / "edited", add={key: w + 0.5})
    ref = _out(peft.PeftModel.from_pretrained(_base(_llama), d).eval())
    model, st = hf.from_transformers(base)
    adapted, st2 = hf.load_peft(d, model, st)
    np.testing.assert_allclose(st2.data["model.embed_tokens"]["kernel"], w + 0.5)
    assert ("model.embed_tokens", "kernel") in st2.frozen
    np.testing.assert_allclose(gd.predict(adapted, st2, IDS), ref, rtol=1e-4, atol=1e-4)


def test_a_damaged_safetensors_file_is_an_error_naming_it(tmp_path):
    from safetensors.torch import save_file

    from graphdsl.io.weights import read_safetensors_file

    for dtype in (torch.float32, torch.bfloat16):
        path = tmp_path / f"{dtype}.safetensors"
        save_file({"w": torch.ones(64, 8).to(dtype)}, str(path))
        path.write_bytes(path.read_bytes()[:-40])  # truncated data
        with pytest.raises(gd.GraphDSLError, match=rf"cannot read {path.name}"):
            read_safetensors_file(str(path))
