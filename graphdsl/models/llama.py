"""LLaMA (and Mistral, Qwen2: the same graph, differing by config) as a causal LM:
``input_ids [batch, seq]`` (+ optional ``attention_mask``, ``position_ids``) ->
``logits [batch, seq, vocab]``. Layer names are the Hugging Face module paths."""
from __future__ import annotations

from typing import Any

import graphdsl as gd

from ..node import Node
from .common import activate, heads, merge_heads, padding_mask, token_inputs
from .config import Config

_FAMILIES = ("llama", "mistral", "qwen2")


def _windows(c: Config, n_layers: int) -> list[int | None]:
    """The sliding window of each layer (None: full causal attention), as transformers
    decides it: ``layer_types`` when the config has them, else Mistral's ``sliding_window``
    on every layer and Qwen2's on layers from ``max_window_layers`` when enabled."""
    window = c.data.get("sliding_window")
    types = c.data.get("layer_types")
    kind = c.data.get("model_type", "llama")
    if types is not None:
        if len(types) != n_layers or any(t not in ("full_attention", "sliding_attention")
                                         for t in types):
            raise c.unsupported("layer_types", types, "full_attention/sliding_attention "
                                "per layer")
        out = [window if t == "sliding_attention" else None for t in types]
    elif kind == "mistral":
        out = [window] * n_layers
    elif kind == "qwen2" and c.data.get("use_sliding_window"):
        first = c.data.get("max_window_layers", n_layers)
        out = [window if i >= first else None for i in range(n_layers)]
    else:
        out = [None] * n_layers
    if any(w is not None for w in out) and not (isinstance(window, int) and window > 0):
        raise c.unsupported("sliding_window", window, "a positive int when layers slide")
    return out


def llama(config: Any) -> Node:
    """A LLaMA-family causal LM from a Hugging Face config (dict or config object):
    ``LlamaForCausalLM``, ``MistralForCausalLM`` (sliding window), ``Qwen2ForCausalLM``
    (q/k/v bias). Grouped-query attention, RMSNorm, rotary embeddings, SwiGLU MLP; the
    ``lm_head`` is tied to ``model.embed_tokens`` when ``tie_word_embeddings``."""
    c = Config(config, "llama")
    kind = c.data.get("model_type", "llama")
    if kind not in _FAMILIES:
        raise c.unsupported("model_type", kind, f"models.llama for {_FAMILIES}")
    vocab, hidden = c.get("vocab_size"), c.get("hidden_size")
    n_layers, n_heads = c.get("num_hidden_layers"), c.get("num_attention_heads")
    n_kv = c.get("num_key_value_heads", n_heads)
    head_dim = c.data.get("head_dim") or hidden // n_heads
    inter, eps = c.get("intermediate_size"), c.get("rms_norm_eps", 1e-6, (int, float))
    theta, act = c.rope_theta(), c.activation("hidden_act", "silu")
    qkv_bias = kind == "qwen2" or bool(c.data.get("attention_bias", False))
    o_bias = kind != "qwen2" and bool(c.data.get("attention_bias", False))
    mlp_bias = bool(c.data.get("mlp_bias", False))
    windows = _windows(c, n_layers)

    ins = token_inputs(c)
    pos, mask = ins["position_ids"], padding_mask(ins["attention_mask"])
    embed = gd.embedding(ins["input_ids"], vocab, hidden, name="model.embed_tokens")
    h = embed
    for i in range(n_layers):
        p = f"model.layers.{i}"
        x = gd.rms_norm(h, epsilon=eps, name=f"{p}.input_layernorm")
        q = gd.dense(x, n_heads * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.q_proj")
        k = gd.dense(x, n_kv * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.k_proj")
        v = gd.dense(x, n_kv * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.v_proj")
        q = gd.rotary_embedding(heads(q, n_heads, head_dim), pos, theta=theta)
        k = gd.rotary_embedding(heads(k, n_kv, head_dim), pos, theta=theta)
        a = gd.attention(q, k, heads(v, n_kv, head_dim), mask=mask, causal=True,
                         window=windows[i])
        h = h + gd.dense(merge_heads(a), hidden, use_bias=o_bias, name=f"{p}.self_attn.o_proj")
        x = gd.rms_norm(h, epsilon=eps, name=f"{p}.post_attention_layernorm")
        gate = activate(gd.dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.gate_proj"), act)
        up = gd.dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.up_proj")
        h = h + gd.dense(gate * up, hidden, use_bias=mlp_bias, name=f"{p}.mlp.down_proj")
    h = gd.rms_norm(h, epsilon=eps, name="model.norm")
    if c.data.get("tie_word_embeddings", False):
        return gd.tied_dense(h, embed, name="lm_head")
    return gd.dense(h, vocab, use_bias=False, name="lm_head")
