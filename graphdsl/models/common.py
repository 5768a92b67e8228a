"""Building blocks the transformer families share, written with the public ops."""
from __future__ import annotations

from ..node import Node
from ..ops.core import full_like, optional
from ..ops.core import input as input_node
from ..ops.nn import activation
from ..ops.nn import dropout as dropout_node
from ..ops.tensor import reshape, transpose
from ..ops.transformer import positions
from .config import Config


def token_inputs(c: Config, token_types: bool = False) -> dict[str, Node]:
    """``input_ids`` (int64 ``[batch, seq]``, carrying the config) and the optional
    ``attention_mask`` (default: all ones), ``position_ids`` (default: 0..seq-1) and,
    with ``token_types``, ``token_type_ids`` (default: zeros), as transformers does."""
    ids = input_node("input_ids", (None, None), dtype="int64", meta=c.meta())
    out = {"input_ids": ids,
           "attention_mask": optional(input_node("attention_mask", (None, None), "int64"),
                                      full_like(ids, 1)),
           "position_ids": optional(input_node("position_ids", (None, None), "int64"),
                                    positions(ids))}
    if token_types:
        out["token_type_ids"] = optional(
            input_node("token_type_ids", (None, None), "int64"), full_like(ids, 0))
    return out


def padding_mask(mask: Node) -> Node:
    """``attention_mask [batch, seq]`` -> ``[batch, 1, 1, seq]`` for attention."""
    return reshape(mask, (None, 1, 1, -1))


def heads(x: Node, n: int, head_dim: int) -> Node:
    """``[batch, seq, n*head_dim]`` -> ``[batch, n, seq, head_dim]``."""
    return transpose(reshape(x, (None, None, n, head_dim)), (0, 2, 1, 3))


def merge_heads(x: Node) -> Node:
    """``[batch, n, seq, head_dim]`` -> ``[batch, seq, n*head_dim]``."""
    return reshape(transpose(x, (0, 2, 1, 3)), (None, None, -1))


def activate(x: Node, act: tuple[str, dict]) -> Node:
    """An activation ``(op, options)`` from ``config.ACTIVATIONS``."""
    op, opts = act
    return activation(x, op, **opts)


def dropout(x: Node, rate: float, name: str) -> Node:
    """``ops.nn.dropout(x, rate, name)`` (train mode only), or ``x`` itself when ``rate``
    is 0: a model whose config turns dropout off has no dropout layer."""
    return dropout_node(x, rate, name=name) if rate > 0 else x
