"""Building blocks the transformer families share, written with the public DSL."""
from __future__ import annotations

import graphdsl as gd

from ..node import Node
from .config import Config


def token_inputs(c: Config, token_types: bool = False) -> dict[str, Node]:
    """``input_ids`` (int64 ``[batch, seq]``, carrying the config) and the optional
    ``attention_mask`` (default: all ones), ``position_ids`` (default: 0..seq-1) and,
    with ``token_types``, ``token_type_ids`` (default: zeros), as transformers does."""
    ids = gd.input("input_ids", (None, None), dtype="int64", meta=c.meta())
    out = {"input_ids": ids,
           "attention_mask": gd.optional(gd.input("attention_mask", (None, None), "int64"),
                                         gd.full_like(ids, 1)),
           "position_ids": gd.optional(gd.input("position_ids", (None, None), "int64"),
                                       gd.positions(ids))}
    if token_types:
        out["token_type_ids"] = gd.optional(
            gd.input("token_type_ids", (None, None), "int64"), gd.full_like(ids, 0))
    return out


def padding_mask(mask: Node) -> Node:
    """``attention_mask [batch, seq]`` -> ``[batch, 1, 1, seq]`` for gd.attention."""
    return gd.reshape(mask, (None, 1, 1, -1))


def heads(x: Node, n: int, head_dim: int) -> Node:
    """``[batch, seq, n*head_dim]`` -> ``[batch, n, seq, head_dim]``."""
    return gd.transpose(gd.reshape(x, (None, None, n, head_dim)), (0, 2, 1, 3))


def merge_heads(x: Node) -> Node:
    """``[batch, n, seq, head_dim]`` -> ``[batch, seq, n*head_dim]``."""
    return gd.reshape(gd.transpose(x, (0, 2, 1, 3)), (None, None, -1))


def activate(x: Node, act: tuple[str, dict]) -> Node:
    """An activation ``(op, options)`` from :data:`config.ACTIVATIONS`."""
    op, opts = act
    return getattr(gd, op)(x, **opts)


def dropout(x: Node, rate: float, name: str) -> Node:
    """``gd.dropout(x, rate, name)`` (train mode only), or ``x`` itself when ``rate`` is 0:
    a model whose config turns dropout off has no dropout layer."""
    return gd.dropout(x, rate, name=name) if rate > 0 else x
