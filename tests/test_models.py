"""graphdsl.models against transformers' own eager implementation, with random tiny
configs built offline and the weights copied across (Linear weight [out, in] = our kernel
transposed; GPT-2's Conv1D [in, out] as is)."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl import models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _state_from_hf(model, hf, conv1d=False):
    """The ModelState of ``model`` filled from the HF module's state_dict."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    g_params = gd.get_parameters(model)
    data = {}
    for layer, params in g_params.items():
        for p in params:
            node_is_dense = p == "kernel" and f"{layer}.weight" in sd and sd[
                f"{layer}.weight"].ndim == 2
            hf_name = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(p, p)
            w = sd[f"{layer}.{hf_name}"]
            if node_is_dense and not conv1d and not layer.endswith(
                    ("embed_tokens", "wte", "wpe", "_embeddings")):
                w = w.T
            data.setdefault(layer, {})[p] = w
    return gd.ModelState(data)


def _randomize(hf, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial norms and biases too
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _compare(model, st, hf, feed, key):
    with torch.no_grad():
        ref = getattr(hf(**{k: torch.from_numpy(v) for k, v in feed.items()}), key).numpy()
    np.testing.assert_allclose(gd.predict(model, st, feed), ref, rtol=1e-4, atol=1e-4)
    module = gd.to_torch(model, st).eval()
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


IDS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
PAD = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("kind,extra", [
    ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    ("qwen2", {"num_key_value_heads": 2}),
    ("mistral", {"num_key_value_heads": 2, "sliding_window": 3}),
])
def test_llama_family_matches_transformers(kind, extra):
    cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}[kind]
    lm_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
              "mistral": transformers.MistralForCausalLM}[kind]
    cfg = cfg_cls(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, rms_norm_eps=1e-5, attn_implementation="eager",
                  **extra)
    hf = lm_cls(cfg).eval()
    _randomize(hf)
    model = models.llama(cfg)
    st = _state_from_hf(model, hf)
    assert gd.display.ModelView(model).totals()["total"][0] == sum(
        p.numel() for p in hf.parameters())
    _compare(model, st, hf, {"input_ids": IDS}, "logits")
    _compare(model, st, hf, {"input_ids": IDS, "attention_mask": PAD}, "logits")


def test_gpt2_matches_transformers():
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4,
                                  attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    _randomize(hf)
    model = models.gpt2(cfg)
    st = _state_from_hf(model, hf, conv1d=True)
    _compare(model, st, hf, {"input_ids": IDS}, "logits")


def test_bert_matches_transformers_with_a_padding_mask():
    cfg = transformers.BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=8, attn_implementation="eager")
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    _randomize(hf)
    model = models.bert(cfg)
    st = _state_from_hf(model, hf)
    _compare(model, st, hf, {"input_ids": IDS, "attention_mask": PAD,
                             "token_type_ids": (IDS % 2)}, "last_hidden_state")


def test_unsupported_config_options_are_errors():
    with pytest.raises(gd.GraphDSLError, match="rope_type"):
        models.llama({"vocab_size": 5, "hidden_size": 8, "intermediate_size": 8,
                      "num_hidden_layers": 1, "num_attention_heads": 2,
                      "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(gd.GraphDSLError, match="hidden_size"):
        models.llama({"vocab_size": 5, "hidden_size": "16"})
    with pytest.raises(gd.GraphDSLError, match="model_type"):
        models.llama({"model_type": "gemma"})


def _family(kind):
    """(graphdsl model, state, transformers model, output key) of a tiny random family."""
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=4,
            attn_implementation="eager")).eval()
        model, key, conv1d = models.gpt2(hf.config), "logits", True
    elif kind == "bert":
        hf = transformers.BertModel(transformers.BertConfig(
            vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=24, max_position_embeddings=8, attn_implementation="eager"),
            add_pooling_layer=False).eval()
        model, key, conv1d = models.bert(hf.config), "last_hidden_state", False
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")).eval()
        model, key, conv1d = models.llama(hf.config), "logits", False
    _randomize(hf)
    return model, _state_from_hf(model, hf, conv1d=conv1d), hf, key


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_masks_of_any_dtype_and_position_ids_of_one_row_as_transformers(kind):
    """transformers takes attention_mask as int, bool or float, and broadcasts
    position_ids [1, seq] over the batch; so does graphdsl, on NumPy and torch."""
    model, st, hf, key = _family(kind)
    feeds = [{"input_ids": IDS, "attention_mask": PAD.astype(bool)},
             {"input_ids": IDS, "attention_mask": PAD.astype(np.float32)},
             {"input_ids": IDS, "position_ids": np.arange(2, 8)[None]},
             {"input_ids": IDS, "attention_mask": PAD.astype(np.float64),
              "position_ids": np.arange(1, 7)[None]}]
    for feed in feeds:
        _compare(model, st, hf, feed, key)
        with torch.no_grad():
            ref = getattr(hf(**{k: torch.from_numpy(v) for k, v in feed.items()}), key)
        np.testing.assert_allclose(gd.predict(model, st, feed, backend="torch"), ref.numpy(),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(gd.GraphDSLError, match="attention_mask.*fractions"):
        gd.predict(model, st, {"input_ids": IDS, "attention_mask": PAD * 0.5})
    with pytest.raises(gd.GraphDSLError, match=r"\(3, 6\) does not fit \(2, 6\)"):
        gd.predict(model, st, {"input_ids": IDS, "position_ids": np.zeros((3, 6), np.int64)})


def test_bert_pooler_matches_transformers():
    """A default BertModel (with its pooler: dense + tanh on the first token)."""
    cfg = transformers.BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=8, attn_implementation="eager")
    hf = transformers.BertModel(cfg).eval()
    _randomize(hf)
    model = models.bert(cfg, add_pooling_layer=True)
    st = _state_from_hf(model, hf)
    feed = {"input_ids": IDS, "attention_mask": PAD}
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in feed.items()})
    got = gd.predict(model, st, feed)
    for k in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(got[k], getattr(ref, k).numpy(), rtol=1e-4, atol=1e-4)
