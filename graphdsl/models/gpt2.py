"""GPT-2 as a causal LM: ``input_ids [batch, seq]`` (+ optional ``attention_mask``,
``position_ids``) -> ``logits [batch, seq, vocab]``. Layer names are the Hugging Face
module paths; the Conv1D weights ``[in, out]`` are the dense kernels as they are."""
from __future__ import annotations

from typing import Any

import graphdsl as gd

from ..node import Node
from .common import activate, dropout, heads, merge_heads, padding_mask, token_inputs
from .config import Config


def gpt2(config: Any) -> Node:
    """``GPT2LMHeadModel`` from a Hugging Face config: learned positions, pre-norm blocks
    with the fused ``c_attn`` split into q/k/v, ``gelu_new`` MLP, ``lm_head`` tied to
    ``transformer.wte`` (unless ``tie_word_embeddings`` is false). ``embd_pdrop``,
    ``attn_pdrop`` and ``resid_pdrop`` act in train mode where transformers applies them."""
    c = Config(config, "gpt2")
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
    wte = gd.embedding(ins["input_ids"], vocab, width, name="transformer.wte")
    h = dropout(wte + gd.embedding(ins["position_ids"], n_pos, width, name="transformer.wpe"),
                c.rate("embd_pdrop"), "transformer.drop")
    for i in range(n_layers):
        p = f"transformer.h.{i}"
        x = gd.layer_norm(h, epsilon=eps, name=f"{p}.ln_1")
        q, k, v = gd.split(gd.dense(x, 3 * width, name=f"{p}.attn.c_attn"), 3)
        scale = head_dim ** -0.5 if c.flag("scale_attn_weights") else 1.0
        if c.flag("scale_attn_by_inverse_layer_idx"):
            scale /= i + 1
        a = gd.attention(heads(q, n_heads, head_dim), heads(k, n_heads, head_dim),
                         heads(v, n_heads, head_dim), mask=mask, causal=True, scale=scale,
                         dropout=attn_drop)
        h = h + dropout(gd.dense(merge_heads(a), width, name=f"{p}.attn.c_proj"), resid,
                        f"{p}.attn.resid_dropout")
        x = gd.layer_norm(h, epsilon=eps, name=f"{p}.ln_2")
        f = activate(gd.dense(x, inner, name=f"{p}.mlp.c_fc"), act)
        h = h + dropout(gd.dense(f, width, name=f"{p}.mlp.c_proj"), resid, f"{p}.mlp.dropout")
    h = gd.layer_norm(h, epsilon=eps, name="transformer.ln_f")
    if c.flag("tie_word_embeddings"):
        return gd.tied_dense(h, wte, name="lm_head")
    return gd.dense(h, vocab, use_bias=False, name="lm_head")
