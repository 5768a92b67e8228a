"""BERT as an encoder: ``input_ids [batch, seq]`` (+ optional ``attention_mask``,
``token_type_ids``, ``position_ids``) -> ``last_hidden_state [batch, seq, hidden]`` (and
``pooler_output [batch, hidden]`` with the pooling layer). Layer names are the Hugging
Face module paths of ``BertModel``."""
from __future__ import annotations

from typing import Any

from ..node import Node
from ..ops.core import container
from ..ops.nn import dense, embedding, layer_norm
from ..ops.tensor import reshape
from ..ops.transformer import attention
from ..ops.transformer import slice as slice_axis
from .common import activate, dropout, heads, merge_heads, padding_mask, token_inputs
from .config import Config
from .family import HFFamily


def bert(config: Any, add_pooling_layer: bool = False) -> Node:
    """``BertModel`` from a Hugging Face config: an encoder.

    Word + position + token-type embeddings, post-norm encoder blocks with erf GELU (causal
    attention when ``is_decoder``). ``hidden_dropout_prob`` and
    ``attention_probs_dropout_prob`` act in train mode where transformers applies them.

    Args:
        config: a dict or a ``BertConfig``.
        add_pooling_layer: add the pooler (dense + tanh on the first token).

    Returns:
        (Node): ``input_ids`` int64 ``[batch, seq]`` (optional ``attention_mask``,
        ``position_ids``, ``token_type_ids``) -> ``last_hidden_state [batch, seq, hidden]``;
        with the pooler a container ``{"last_hidden_state", "pooler_output [batch,
        hidden]"}``.

    Raises:
        GraphDSLError: a config that is neither a dict nor an object, or an unsupported
            value.

    Examples:
        >>> from graphdsl import models
        >>> model = models.bert({"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
        ...                      "num_attention_heads": 2, "intermediate_size": 16,
        ...                      "max_position_embeddings": 16}, add_pooling_layer=True)
        >>> gd.get_output_shape(model, {"input_ids": (2, 5)})
        {'last_hidden_state': (2, 5, 8), 'pooler_output': (2, 8)}
    """
    c = Config(config, BERT)
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
    e = (embedding(ins["input_ids"], vocab, hidden, name=BERT.embedding)
         + embedding(ins["position_ids"], n_pos, hidden, name="embeddings.position_embeddings")
         + embedding(ins["token_type_ids"], n_types, hidden,
                     name="embeddings.token_type_embeddings"))
    h = dropout(layer_norm(e, epsilon=eps, name="embeddings.LayerNorm"), drop,
                "embeddings.dropout")
    for i in range(n_layers):
        p = f"{BERT.blocks}{i}"
        q, k, v = (heads(dense(h, hidden, name=f"{p}.attention.self.{t}"), n_heads,
                         head_dim) for t in ("query", "key", "value"))
        a = merge_heads(attention(q, k, v, mask=mask, causal=causal, dropout=attn_drop))
        a = dropout(dense(a, hidden, name=f"{p}.attention.output.dense"), drop,
                    f"{p}.attention.output.dropout")
        h = layer_norm(a + h, epsilon=eps, name=f"{p}.attention.output.LayerNorm")
        f = activate(dense(h, inter, name=f"{p}.intermediate.dense"), act)
        f = dropout(dense(f, hidden, name=f"{p}.output.dense"), drop, f"{p}.output.dropout")
        h = layer_norm(f + h, epsilon=eps, name=f"{p}.output.LayerNorm")
    if not add_pooling_layer:
        return h
    first = reshape(slice_axis(h, 0, 1, axis=1), (None, hidden))
    pooled = dense(first, hidden, activation="tanh", name="pooler.dense")
    return container({"last_hidden_state": h, "pooler_output": pooled})


BERT = HFFamily(
    name="bert", build=bert, task="FEATURE_EXTRACTION", model_types={"bert": "BertModel"},
    base_model_prefix="bert.", prefixed=False, blocks="encoder.layer.",
    block_count="num_hidden_layers", embedding="embeddings.word_embeddings",
    embedding_fields=("vocab_size", "hidden_size"), ignored=(r"embeddings\.position_ids$",),
    options={"pooler.dense.weight": "add_pooling_layer"},  # a default BertModel has a pooler
    defaults={"bert": {  # transformers 5.x' BertConfig
        "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "is_decoder": False, "add_cross_attention": False, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1}})
