"""BERT as an encoder: ``input_ids [batch, seq]`` (+ optional ``attention_mask``,
``token_type_ids``, ``position_ids``) -> ``last_hidden_state [batch, seq, hidden]`` (and
``pooler_output [batch, hidden]`` with the pooling layer). Layer names are the Hugging
Face module paths of ``BertModel``."""
from __future__ import annotations

from typing import Any

import graphdsl as gd

from ..node import Node
from .common import activate, dropout, heads, merge_heads, padding_mask, token_inputs
from .config import Config


def bert(config: Any, add_pooling_layer: bool = False) -> Node:
    """``BertModel`` from a Hugging Face config: word + position + token-type embeddings,
    post-norm encoder blocks with erf GELU (causal attention when ``is_decoder``). With
    ``add_pooling_layer`` (the pooler: dense + tanh on the first token) the output is a
    container ``{"last_hidden_state", "pooler_output [batch, hidden]"}``, else
    ``last_hidden_state``. ``hidden_dropout_prob`` and ``attention_probs_dropout_prob`` act
    in train mode where transformers applies them."""
    c = Config(config, "bert")
    vocab, hidden = c.get("vocab_size"), c.get("hidden_size")
    n_layers, n_heads = c.get("num_hidden_layers"), c.get("num_attention_heads")
    inter, n_pos = c.get("intermediate_size"), c.get("max_position_embeddings")
    n_types = c.get("type_vocab_size")
    eps = c.get("layer_norm_eps", kind=(int, float))
    act = c.activation("hidden_act")
    causal = c.flag("is_decoder")  # transformers' BertModel then masks causally
    kind = c.get("position_embedding_type", "absolute", str)
    if kind != "absolute":  # older transformers' relative_key(_query): not implemented
        raise c.unsupported("position_embedding_type", kind, "absolute positions")
    if c.flag("add_cross_attention"):
        raise c.unsupported("add_cross_attention", True, "BERT without cross-attention "
                            "(its crossattention weights would be dropped)")
    if hidden % n_heads:
        raise c.unsupported("num_attention_heads", n_heads, f"a divisor of {hidden}")
    head_dim = hidden // n_heads
    drop, attn_drop = c.rate("hidden_dropout_prob"), c.rate("attention_probs_dropout_prob")

    ins = token_inputs(c, token_types=True)
    mask = padding_mask(ins["attention_mask"])
    e = (gd.embedding(ins["input_ids"], vocab, hidden, name="embeddings.word_embeddings")
         + gd.embedding(ins["position_ids"], n_pos, hidden,
                        name="embeddings.position_embeddings")
         + gd.embedding(ins["token_type_ids"], n_types, hidden,
                        name="embeddings.token_type_embeddings"))
    h = dropout(gd.layer_norm(e, epsilon=eps, name="embeddings.LayerNorm"), drop,
                "embeddings.dropout")
    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        q, k, v = (heads(gd.dense(h, hidden, name=f"{p}.attention.self.{t}"), n_heads,
                         head_dim) for t in ("query", "key", "value"))
        a = merge_heads(gd.attention(q, k, v, mask=mask, causal=causal, dropout=attn_drop))
        a = dropout(gd.dense(a, hidden, name=f"{p}.attention.output.dense"), drop,
                    f"{p}.attention.output.dropout")
        h = gd.layer_norm(a + h, epsilon=eps, name=f"{p}.attention.output.LayerNorm")
        f = activate(gd.dense(h, inter, name=f"{p}.intermediate.dense"), act)
        f = dropout(gd.dense(f, hidden, name=f"{p}.output.dense"), drop, f"{p}.output.dropout")
        h = gd.layer_norm(f + h, epsilon=eps, name=f"{p}.output.LayerNorm")
    if not add_pooling_layer:
        return h
    first = gd.reshape(gd.slice(h, 0, 1, axis=1), (None, hidden))
    pooled = gd.dense(first, hidden, activation="tanh", name="pooler.dense")
    return gd.container({"last_hidden_state": h, "pooler_output": pooled})
