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
    """The sliding window of each layer (None: full causal attention), as each family's
    transformers model decides it: LLaMA never windows; Mistral windows every layer by
    ``sliding_window`` (None: no window) and ignores ``layer_types``; Qwen2's window is
    ``sliding_window`` when ``use_sliding_window``, on the ``sliding_attention`` entries of
    ``layer_types``, by default the layers from ``max_window_layers`` on."""
    if c.kind == "llama":
        return [None] * n_layers
    window = c.get("sliding_window", kind=(int, type(None)))
    if c.kind == "mistral":
        return [window] * n_layers
    if not c.flag("use_sliding_window"):
        window = None
    first = c.get("max_window_layers", lo=0)
    types = c.get("layer_types", None, list) or [
        "sliding_attention" if window is not None and i >= first else "full_attention"
        for i in range(n_layers)]
    if len(types) != n_layers or any(t not in ("full_attention", "sliding_attention")
                                     for t in types):
        raise c.unsupported("layer_types", types, f"{n_layers} entries, each "
                            "full_attention or sliding_attention")
    if "sliding_attention" in types and window is None:
        raise c.unsupported("layer_types", types, "sliding_attention layers with "
                            "use_sliding_window=true and a sliding_window")
    return [window if t == "sliding_attention" else None for t in types]


def llama(config: Any) -> Node:
    """A LLaMA-family causal LM from a Hugging Face config (dict or config object):
    ``LlamaForCausalLM``, ``MistralForCausalLM`` (sliding window), ``Qwen2ForCausalLM``
    (q/k/v bias). Grouped-query attention, RMSNorm, rotary embeddings, SwiGLU MLP; the
    ``lm_head`` is tied to ``model.embed_tokens`` when ``tie_word_embeddings``."""
    c = Config(config, "llama")
    kind = c.kind
    if kind not in _FAMILIES:
        raise c.unsupported("model_type", kind, f"models.llama for {_FAMILIES}")
    vocab, hidden = c.get("vocab_size"), c.get("hidden_size")
    n_layers, n_heads = c.get("num_hidden_layers"), c.get("num_attention_heads")
    n_kv = c.get("num_key_value_heads") or n_heads
    head_dim = c.get("head_dim") or hidden // n_heads
    inter, eps = c.get("intermediate_size"), c.get("rms_norm_eps", kind=(int, float))
    theta, act = c.rope_theta(), c.activation("hidden_act")
    # Qwen2 has q/k/v biases and Mistral none, whatever attention_bias/mlp_bias say
    qkv_bias = kind == "qwen2" or (kind == "llama" and c.flag("attention_bias"))
    o_bias = kind == "llama" and c.flag("attention_bias")
    mlp_bias = kind == "llama" and c.flag("mlp_bias")
    windows = _windows(c, n_layers)
    attn_drop = c.rate("attention_dropout")  # on the probabilities, train mode only

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
                         window=windows[i], dropout=attn_drop)
        h = h + gd.dense(merge_heads(a), hidden, use_bias=o_bias, name=f"{p}.self_attn.o_proj")
        x = gd.rms_norm(h, epsilon=eps, name=f"{p}.post_attention_layernorm")
        gate = activate(gd.dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.gate_proj"), act)
        up = gd.dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.up_proj")
        h = h + gd.dense(gate * up, hidden, use_bias=mlp_bias, name=f"{p}.mlp.down_proj")
    h = gd.rms_norm(h, epsilon=eps, name="model.norm")
    if c.flag("tie_word_embeddings"):
        return gd.tied_dense(h, embed, name="lm_head")
    return gd.dense(h, vocab, use_bias=False, name="lm_head")
