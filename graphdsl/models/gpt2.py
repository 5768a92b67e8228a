"""GPT-2 as a causal LM: ``input_ids [batch, seq]`` (+ optional ``attention_mask``,
``position_ids``) -> ``logits [batch, seq, vocab]``. Layer names are the Hugging Face
module paths; the Conv1D weights ``[in, out]`` are the dense kernels as they are."""
from __future__ import annotations

from typing import Any

from ..node import Node
from ..ops.nn import dense, embedding, layer_norm
from ..ops.transformer import attention, split, tied_dense
from .common import activate, dropout, heads, merge_heads, padding_mask, token_inputs
from .config import Config
from .family import HFFamily


def gpt2(config: Any) -> Node:
    """``GPT2LMHeadModel`` from a Hugging Face config.

    Learned positions, pre-norm blocks with the fused ``c_attn`` split into q/k/v,
    ``gelu_new`` MLP, ``lm_head`` tied to ``transformer.wte`` (unless
    ``tie_word_embeddings`` is false). ``embd_pdrop``, ``attn_pdrop`` and ``resid_pdrop``
    act in train mode where transformers applies them.

    Args:
        config: a dict or a ``GPT2Config`` (``vocab_size``, ``n_embd``, ``n_layer``,
            ``n_head``, ``n_positions``, ...).

    Returns:
        (Node): ``input_ids`` int64 ``[batch, seq]`` (optional ``attention_mask``,
        ``position_ids``) -> ``logits [batch, seq, vocab]``.

    Raises:
        GraphDSLError: a config that is neither a dict nor an object, or an unsupported
            value.

    Examples:
        >>> from graphdsl import models
        >>> model = models.gpt2({"vocab_size": 40, "n_positions": 16, "n_embd": 8,
        ...                      "n_layer": 1, "n_head": 2})
        >>> gd.get_output_shape(model, {"input_ids": (1, 5)})
        (1, 5, 40)
    """
    c = Config(config, GPT2)
    vocab, n_pos = c.get("vocab_size"), c.get("n_positions")
    width, n_layers, n_heads = c.get("n_embd"), c.get("n_layer"), c.get("n_head")
    inner = c.get("n_inner") or 4 * width
    eps = c.get("layer_norm_epsilon", kind=(int, float))
    act = c.activation("activation_function")
    if c.flag("add_cross_attention"):
        raise c.unsupported("add_cross_attention", True, "GPT-2 without cross-attention "
                            "(its crossattention weights would be dropped)")
    if width % n_heads:
        raise c.unsupported("n_head", n_heads, f"a divisor of n_embd={width}")
    head_dim = width // n_heads
    resid, attn_drop = c.rate("resid_pdrop"), c.rate("attn_pdrop")

    ins = token_inputs(c)
    mask = padding_mask(ins["attention_mask"])
    wte = embedding(ins["input_ids"], vocab, width, name=GPT2.embedding)
    h = dropout(wte + embedding(ins["position_ids"], n_pos, width, name="transformer.wpe"),
                c.rate("embd_pdrop"), "transformer.drop")
    for i in range(n_layers):
        p = f"{GPT2.blocks}{i}"
        x = layer_norm(h, epsilon=eps, name=f"{p}.ln_1")
        q, k, v = split(dense(x, 3 * width, name=f"{p}.attn.c_attn"), 3)
        scale = head_dim ** -0.5 if c.flag("scale_attn_weights") else 1.0
        if c.flag("scale_attn_by_inverse_layer_idx"):
            scale /= i + 1
        a = attention(heads(q, n_heads, head_dim), heads(k, n_heads, head_dim),
                      heads(v, n_heads, head_dim), mask=mask, causal=True, scale=scale,
                      dropout=attn_drop)
        h = h + dropout(dense(merge_heads(a), width, name=f"{p}.attn.c_proj"), resid,
                        f"{p}.attn.resid_dropout")
        x = layer_norm(h, epsilon=eps, name=f"{p}.ln_2")
        f = activate(dense(x, inner, name=f"{p}.mlp.c_fc"), act)
        h = h + dropout(dense(f, width, name=f"{p}.mlp.c_proj"), resid, f"{p}.mlp.dropout")
    h = layer_norm(h, epsilon=eps, name="transformer.ln_f")
    if c.flag("tie_word_embeddings"):
        return tied_dense(h, wte, name=GPT2.head)
    return dense(h, vocab, use_bias=False, name=GPT2.head)


GPT2 = HFFamily(
    name="gpt2", build=gpt2, task="CAUSAL_LM", model_types={"gpt2": "GPT2LMHeadModel"},
    base_models={"GPT2Model": "GPT2LMHeadModel"}, base_model_prefix="transformer.",
    prefixed=True, blocks="transformer.h.", block_count="n_layer", embedding="transformer.wte",
    embedding_fields=("vocab_size", "n_embd"), head="lm_head", conv1d=True,
    ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias$",),
    defaults={"gpt2": {  # transformers 5.x' GPT2Config
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False, "tie_word_embeddings": True, "resid_pdrop": 0.1,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1}})
