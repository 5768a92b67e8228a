"""LLaMA (and Mistral, Qwen2: the same graph, differing by config) as a causal LM:
``input_ids [batch, seq]`` (+ optional ``attention_mask``, ``position_ids``) ->
``logits [batch, seq, vocab]``. Layer names are the Hugging Face module paths."""
from __future__ import annotations

from typing import Any

from ..node import Node
from ..ops.nn import dense, embedding
from ..ops.transformer import attention, rms_norm, rotary_embedding, tied_dense
from .common import activate, heads, merge_heads, padding_mask, token_inputs
from .config import Config
from .family import HFFamily


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
    """A LLaMA-family causal LM from a Hugging Face config.

    ``LlamaForCausalLM``, ``MistralForCausalLM`` (sliding window) and ``Qwen2ForCausalLM``
    (q/k/v bias), chosen by ``model_type``. Grouped-query attention, RMSNorm, rotary
    embeddings, SwiGLU MLP; the ``lm_head`` is tied to ``model.embed_tokens`` when
    ``tie_word_embeddings``. Layer names are the Hugging Face module paths
    (``model.layers.0.self_attn.q_proj``).

    Args:
        config: a dict or a config object with Hugging Face field names (``vocab_size``,
            ``hidden_size``, ``num_attention_heads``, ...); missing fields take the config
            class' defaults.

    Returns:
        (Node): ``input_ids`` int64 ``[batch, seq]`` (optional ``attention_mask``,
        ``position_ids``) -> ``logits [batch, seq, vocab]``.

    Raises:
        GraphDSLError: a config that is neither a dict nor an object, or a field value
            graphdsl does not implement (it guesses nothing).

    Examples:
        >>> from graphdsl import models
        >>> model = models.llama({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...                       "intermediate_size": 32, "num_hidden_layers": 1,
        ...                       "num_attention_heads": 2, "num_key_value_heads": 1})
        >>> gd.get_output_shape(model, {"input_ids": (1, 5)})
        (1, 5, 32)
    """
    c = Config(config, LLAMA)
    kind = c.kind
    if kind not in LLAMA.model_types:
        raise c.unsupported("model_type", kind, f"models.llama for {tuple(LLAMA.model_types)}")
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
    embed = embedding(ins["input_ids"], vocab, hidden, name=LLAMA.embedding)
    h = embed
    for i in range(n_layers):
        p = f"{LLAMA.blocks}{i}"
        x = rms_norm(h, epsilon=eps, name=f"{p}.input_layernorm")
        q = dense(x, n_heads * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.q_proj")
        k = dense(x, n_kv * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.k_proj")
        v = dense(x, n_kv * head_dim, use_bias=qkv_bias, name=f"{p}.self_attn.v_proj")
        q = rotary_embedding(heads(q, n_heads, head_dim), pos, theta=theta)
        k = rotary_embedding(heads(k, n_kv, head_dim), pos, theta=theta)
        a = attention(q, k, heads(v, n_kv, head_dim), mask=mask, causal=True,
                      window=windows[i], dropout=attn_drop)
        h = h + dense(merge_heads(a), hidden, use_bias=o_bias, name=f"{p}.self_attn.o_proj")
        x = rms_norm(h, epsilon=eps, name=f"{p}.post_attention_layernorm")
        gate = activate(dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.gate_proj"), act)
        up = dense(x, inter, use_bias=mlp_bias, name=f"{p}.mlp.up_proj")
        h = h + dense(gate * up, hidden, use_bias=mlp_bias, name=f"{p}.mlp.down_proj")
    h = rms_norm(h, epsilon=eps, name="model.norm")
    if c.flag("tie_word_embeddings"):
        return tied_dense(h, embed, name=LLAMA.head)
    return dense(h, vocab, use_bias=False, name=LLAMA.head)


_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
             "head_dim": None, "hidden_act": "silu", "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
             "attention_dropout": 0.0}
LLAMA = HFFamily(
    name="llama", build=llama, task="CAUSAL_LM",
    model_types={"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"},
    base_models={"LlamaModel": "LlamaForCausalLM", "MistralModel": "MistralForCausalLM",
                 "Qwen2Model": "Qwen2ForCausalLM"},
    base_model_prefix="model.", prefixed=True, blocks="model.layers.",
    block_count="num_hidden_layers", embedding="model.embed_tokens",
    embedding_fields=("vocab_size", "hidden_size"), head="lm_head",
    ignored=(r"rotary_emb\.inv_freq$",),
    defaults={  # transformers 5.x' config classes
        "llama": _DEFAULTS,
        "mistral": {**_DEFAULTS, "intermediate_size": 14336, "num_key_value_heads": 8,
                    "sliding_window": 4096},
        "qwen2": {**_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016,
                  "num_key_value_heads": 32, "use_sliding_window": False,
                  "sliding_window": 4096, "max_window_layers": 28}})
