"""Adapters and modules_to_save on tied embeddings (issue 20 points 2 and 10), against
PEFT 0.21 and transformers: merging, training a copy of one of the two tied layers, and
PEFT's files for adapters on ``lm_head`` (which carry ``lm_head.base_layer.weight``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, hf, lora
from graphdsl.graph import analyze

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
TOL = dict(rtol=1e-5, atol=1e-5)


def _llama(tie=True):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
        attn_implementation="eager"))


def _gpt2(tie=True):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=4,
        tie_word_embeddings=tie, attn_implementation="eager", bos_token_id=0,
        eos_token_id=0))


MAKE = {"llama": _llama, "gpt2": _gpt2, "llama_untied": lambda: _llama(tie=False)}
EMBED = {"llama": "model.embed_tokens", "gpt2": "transformer.wte"}
PROJ = {"llama": "q_proj", "gpt2": "c_attn", "llama_untied": "q_proj"}


def _base(arch):
    """A tiny transformers model with random (non-init) weights, in eval mode."""
    torch.manual_seed(0)
    m = MAKE[arch]().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return m


def _logits(m):
    with torch.no_grad():
        return m(input_ids=torch.from_numpy(IDS)).logits.numpy()


def _trained(model, state, layers=(), seed=1):
    """Random adapters (A, B, magnitude) and new values for ``layers``."""
    rng = np.random.default_rng(seed)
    data = {k: dict(v) for k, v in state.data.items()}
    for n in analyze(model).order:
        if n.op in ("dora", "lora") or n.name in layers:
            for q, v in data[n.name].items():
                if q != "key":
                    data[n.name][q] = (v * rng.uniform(0.5, 1.5, v.shape)
                                       + rng.normal(0, 0.3, v.shape)).astype(np.float32)
    return gd.ModelState(data, state.frozen, state.entries)


def _peft_dir(arch, path, **cfg):
    """A PEFT-trained adapter (random trainables) saved to ``path``; PEFT's logits."""
    pm = peft.get_peft_model(_base(arch), peft.LoraConfig(r=4, lora_alpha=8, **cfg)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(path))
    return _logits(pm)


# -- point 2 (a): merging an adapter on a tied embedding --------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mod", [lora, dora])
def test_merge_of_a_tied_embedding_adapter_keeps_the_output_layer(arch, mod, tmp_path):
    """PEFT's merge_and_unload adds the update to the weight lm_head shares (it warns;
    its merged logits then differ from its adapted ones); graphdsl unties instead, so the
    merged model equals the adapted one, which equals PEFT's adapted model."""
    model, st = hf.from_transformers(_base(arch))
    adapted = mod.adapt(model, [EMBED[arch], PROJ[arch]], rank=4, alpha=8.0)
    ast = _trained(adapted, gd.build(adapted)[0](initial_state=st))
    hf.save_peft(str(tmp_path / "ad"), adapted, ast)
    pm = peft.PeftModel.from_pretrained(_base(arch), str(tmp_path / "ad")).eval()
    ref = _logits(pm)
    np.testing.assert_allclose(gd.predict(adapted, ast, IDS), ref, **TOL)
    merged, mst = gd.merge_adapters(adapted, ast)
    np.testing.assert_allclose(gd.predict(merged, mst, IDS), ref, **TOL)
    assert not any(n.op == "tied_dense" for n in analyze(merged).order)
    with warnings.catch_warnings():  # LLaMA's: "tie_word_embeddings=True ... complications"
        warnings.simplefilter("ignore")
        peft_merged = _logits(pm.merge_and_unload())
    assert np.abs(peft_merged - ref).max() > 0.1  # why graphdsl does not follow it here
    # the merged model is an untied transformers model
    hf.save_pretrained(str(tmp_path / "merged"), merged, mst)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert back.config.tie_word_embeddings is False
    np.testing.assert_allclose(_logits(back), ref, **TOL)


def test_merged_model_is_frozen_and_unfreeze_is_the_way_back():
    model, st = hf.from_transformers(_base("llama"))
    adapted = lora.adapt(model, ["q_proj"], rank=4)
    merged, mst = gd.merge_adapters(adapted, _trained(adapted, gd.build(adapted)[0](
        initial_state=st)))
    assert mst.trainable_parameter_count() == 0
    thawed = mst.unfreeze()
    assert thawed.trainable_parameter_count() == thawed.parameter_count() > 0
    np.testing.assert_array_equal(gd.predict(merged, thawed, IDS),
                                  gd.predict(merged, mst, IDS))
    assert all(p.requires_grad for p in gd.to_torch(merged, thawed).parameters())


# -- point 2 (b), (c): modules_to_save on one of two tied layers ------------------------------
SAVED = {"llama_embed": ("llama", "model.embed_tokens", "embed_tokens"),
         "llama_head": ("llama", "lm_head", "lm_head"),
         "gpt2_wte": ("gpt2", "transformer.wte", "wte"),
         "gpt2_head": ("gpt2", "lm_head", "lm_head")}


@pytest.mark.parametrize("case", sorted(SAVED))
def test_modules_to_save_on_a_tied_layer_trains_an_untied_copy_as_peft(case, tmp_path):
    arch, layer, entry = SAVED[case]
    model, st = hf.from_transformers(_base(arch))
    with pytest.raises(gd.GraphDSLError, match=r"tied(.|\n)*gd\.untie"):
        lora.adapt(model, [PROJ[arch]], rank=4, modules_to_save=[layer])
    # PEFT's files load with PEFT's logits
    ref = _peft_dir(arch, tmp_path / "peft", target_modules=[PROJ[arch]],
                    modules_to_save=[entry])
    loaded, lst = hf.load_peft(str(tmp_path / "peft"), model, st)
    np.testing.assert_allclose(gd.predict(loaded, lst, IDS), ref, **TOL)
    assert all((layer, q) not in lst.frozen for q in lst.data[layer])
    # untie, adapt, train: save_peft's files give PEFT the same logits
    umodel, ust = gd.untie(model, st)
    np.testing.assert_array_equal(gd.predict(umodel, ust, IDS), gd.predict(model, st, IDS))
    adapted = lora.adapt(umodel, [PROJ[arch]], rank=4, modules_to_save=[layer])
    ast = _trained(adapted, gd.build(adapted)[0](initial_state=ust), [layer])
    hf.save_peft(str(tmp_path / "ours"), adapted, ast)
    pm = peft.PeftModel.from_pretrained(_base(arch), str(tmp_path / "ours")).eval()
    ours = gd.predict(adapted, ast, IDS)
    np.testing.assert_allclose(ours, _logits(pm), **TOL)
    assert np.abs(ours - gd.predict(model, st, IDS)).max() > 0.1


# -- point 10: PEFT's files for adapters on lm_head -------------------------------------------
@pytest.mark.parametrize("arch", ["llama_untied", "llama", "gpt2"])
@pytest.mark.parametrize("use_dora", [False, True])
def test_load_peft_reads_peft_files_with_an_lm_head_adapter(arch, use_dora, tmp_path):
    """PEFT saves ``lm_head.base_layer.weight`` beside an adapter on lm_head and loads it
    (into the weight it shares with the embedding when tied): so does load_peft; the
    saved weight is changed here so that taking it matters."""
    from safetensors.numpy import load_file, save_file

    _peft_dir(arch, tmp_path, target_modules=[PROJ[arch], "lm_head"], use_dora=use_dora)
    f = str(tmp_path / "adapter_model.safetensors")
    t = load_file(f)
    key = "base_model.model.lm_head.base_layer.weight"
    t[key] = t[key] + np.random.default_rng(4).normal(0, 0.3, t[key].shape).astype(np.float32)
    save_file(t, f, metadata={"format": "pt"})
    ref = _logits(peft.PeftModel.from_pretrained(_base(arch), str(tmp_path)).eval())
    model, st = hf.from_transformers(_base(arch))
    adapted, ast = hf.load_peft(str(tmp_path), model, st)
    np.testing.assert_allclose(gd.predict(adapted, ast, IDS), ref, **TOL)
    if arch != "llama_untied":
        with pytest.raises(gd.GraphDSLError, match=r"tied_dense(.|\n)*gd\.untie"):
            lora.adapt(model, ["lm_head"], rank=4)
    np.testing.assert_allclose(ast.data["lm_head"]["kernel"], t[key].T)
    assert ("lm_head", "kernel") in ast.frozen
