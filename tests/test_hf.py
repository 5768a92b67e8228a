"""graphdsl.hf: transformers models and save_pretrained directories in and out."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import dora, hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        attn_implementation="eager"))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4,
        attn_implementation="eager"))


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=24, max_position_embeddings=8, attn_implementation="eager"),
        add_pooling_layer=False)


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"))


def _randomized(make):
    m = make().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return m


def _out(m, ids):
    with torch.no_grad():
        r = m(torch.from_numpy(ids))
    return (r.logits if hasattr(r, "logits") else r.last_hidden_state).numpy()


@pytest.mark.parametrize("make", [_llama, _qwen2, _gpt2, _bert])
def test_from_transformers_save_pretrained_and_back(make, tmp_path):
    m = _randomized(make)
    ref = _out(m, IDS)
    model, st = hf.from_transformers(m)
    np.testing.assert_allclose(gd.predict(model, st, IDS), ref, rtol=1e-4, atol=1e-4)
    assert gd.display.ModelView(model).totals()["total"][0] == sum(
        p.numel() for p in m.parameters())
    hf.save_pretrained(tmp_path / "out", model, st)
    back = type(m).from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(_out(back, IDS), ref, rtol=1e-4, atol=1e-4)
    m.save_pretrained(tmp_path / "hf")
    model2, st2 = hf.from_pretrained(str(tmp_path / "hf"))
    np.testing.assert_allclose(gd.predict(model2, st2, IDS), ref, rtol=1e-4, atol=1e-4)
    again = gd.from_json(gd.to_json(model2))  # the config travels in the JSON
    gd.save(tmp_path / "m.gdsl", again, st2)
    m3, s3 = gd.load(tmp_path / "m.gdsl")
    np.testing.assert_allclose(gd.predict(m3, s3, IDS), ref, rtol=1e-4, atol=1e-4)


def test_from_pretrained_imports_neither_torch_nor_transformers(tmp_path):
    m = _randomized(_llama)
    m.save_pretrained(tmp_path / "ckpt", max_shard_size="2KB")  # several shards + index
    np.save(tmp_path / "ids.npy", IDS)
    np.save(tmp_path / "ref.npy", _out(m, IDS))
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np, graphdsl as gd
        from graphdsl import hf
        model, st = hf.from_pretrained({str(tmp_path / 'ckpt')!r})
        y = gd.predict(model, st, np.load({str(tmp_path / 'ids.npy')!r}))
        assert np.allclose(y, np.load({str(tmp_path / 'ref.npy')!r}), atol=1e-4)
        assert not any(k.split(".")[0] in ("torch", "transformers") for k in sys.modules)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_a_merged_dora_model_saves_for_transformers(tmp_path):
    m = _randomized(_llama)
    model, st = hf.from_transformers(m)
    adapted = dora.adapt(model, targets=["q_proj", "v_proj"], rank=2)
    st = gd.build(adapted)[0](None, st)
    for layer in st.data:
        if layer.endswith("_dora"):
            st.data[layer]["B"] = np.full(st.data[layer]["B"].shape, 0.05, np.float32)
    want = gd.predict(adapted, st, IDS)
    merged, mst = gd.merge_adapters(adapted, st)
    hf.save_pretrained(tmp_path / "merged", merged, mst)
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(_out(back, IDS), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(gd.GraphDSLError, match="merge adapters first"):
        hf.save_pretrained(tmp_path / "unmerged", adapted, st)


def test_checkpoint_mismatches_are_errors_naming_the_keys(tmp_path):
    m = _randomized(_llama)
    m.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(gd.GraphDSLError, match=r"config.json: num_hidden_layers is 3, but the "
                       r"checkpoint holds 2 block\(s\)"):
        hf.from_pretrained(str(tmp_path / "ckpt"))
    cfg["num_hidden_layers"], cfg["architectures"] = 2, ["GemmaForCausalLM"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(gd.GraphDSLError, match="unsupported architecture"):
        hf.from_pretrained(str(tmp_path / "ckpt"))
    cfg["architectures"], cfg["intermediate_size"] = ["LlamaForCausalLM"], 30
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(gd.GraphDSLError, match="gate_proj.weight has shape"):
        hf.from_pretrained(str(tmp_path / "ckpt"))
