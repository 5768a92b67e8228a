"""LoRA: Low-Rank Adaptation (Hu et al. 2021), the same surface as ``graphdsl.dora``.

With a frozen kernel ``K [in, out]`` and bias ``b [out]``, ``A [in, r]``, ``B [r, out]``
and ``s = alpha / rank`` (``alpha / sqrt(rank)`` with ``rslora=True``)::

    y = x @ K + b + s * (dropout(x) @ A) @ B

``B`` starts at zero, so an adapted layer starts equal to the original.
"""
from __future__ import annotations

from typing import Any

from .adapters import adapt as _adapt
from .adapters import layers as _layers
from .backends import torch_face
from .node import Node, caller_location

OP = "lora"


def build(input_size: int, output_size: int, rank: int = 8, alpha: float = 16.0,
          name: str = "lora", *, dropout: float = 0.0, rslora: bool = False,
          use_bias: bool = False) -> Node:
    """A standalone LoRA model: input ``"input"`` of shape ``(None, input_size)`` ->
    ``(None, output_size)``. Parameters under ``state.data[name]``: ``base_weight
    [in, out]`` (frozen), ``A [in, rank]``, ``B [rank, out]`` (and a frozen ``bias``)."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora)
    return _layers.build(OP, input_size, output_size, name, opts, caller_location(),
                         use_bias=use_bias)


def lora_layer(input: Node, input_size: int, output_size: int, rank: int = 8,
               alpha: float = 16.0, name: str = "lora", *, dropout: float = 0.0,
               rslora: bool = False, use_bias: bool = False,
               activation: str | None = None) -> Node:
    """A LoRA layer inline: ``input (..., input_size) -> (..., output_size)``, owning a
    frozen ``base_weight [in, out]`` plus ``A`` and ``B``."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora)
    return _layers.adapter_layer(OP, input, input_size, output_size, name, opts,
                                 caller_location(), use_bias=use_bias, activation=activation)


def wrap(input: Node, original: Node, rank: int = 8, alpha: float = 16.0,
         name: str | None = None, output_size: int | None = None, *, dropout: float = 0.0,
         rslora: bool = False) -> Node:
    """LoRA around the named dense, conv or embedding layer ``original`` (a kind of
    graphdsl.adapters.kinds), applied to the input it reads (dense: ``(..., in)``):
    reuses its kernel and bias (frozen), adds ``A``, ``B`` under ``state.data[name]``
    (default ``"{original.name}_lora"``), keeps an activation node ``original`` after it
    (as dora.wrap); equal to it at init."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora)
    return _layers.wrap(OP, input, original, name, output_size, opts, caller_location())


def output_size(output_size: int | None = None, **opts: Any) -> int:
    """The output size of a LoRA layer built with these options: ``output_size``."""
    return _layers.output_size(OP, output_size, caller_location())


def recommended_defaults() -> dict[str, Any]:
    """``{"rank": 8, "alpha": 16.0}``."""
    return dict(_layers.DEFAULTS)


def adapt(model: Node, targets: _adapt.Targets, rank: int = 8, alpha: float = 16.0, *,
          dropout: float = 0.0, rslora: bool = False, modules_to_save: Any = None) -> Node:
    """PEFT's ``get_peft_model`` for LoRA: every dense, conv or embedding layer matched by
    ``targets`` (regex full match on the name, list of names, or predicate on the node)
    becomes ``"{layer}_lora"`` wrapping it; everything else is frozen except
    ``modules_to_save``."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora)
    return _adapt.adapt(OP, model, targets, opts, modules_to_save, caller_location())


def __getattr__(name: str) -> object:
    """``lora.loraplus_param_groups`` (LoRA+, needs torch): imported on first use."""
    if name == "loraplus_param_groups":
        return torch_face(name)
    raise AttributeError(f"module 'graphdsl.lora' has no attribute {name!r}")
