"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al. 2024, arXiv 2402.09353).

Mirror of Elixir's ``Edifice.Meta.DoRA`` (``build``, ``dora_layer``, ``wrap``,
``output_size``, ``recommended_defaults``) with the paper's math, plus graph-wide
``adapt``. With a frozen kernel ``K [in, out]`` and bias ``b [out]``, ``A [in, r]``,
``B [r, out]``, magnitude ``m [out]`` and ``s = alpha / rank``::

    c_j = || K[:, j] + s * (A @ B)[:, j] ||_2       (column norm, per output unit)
    y   = (m / c) * (x @ K + s * (x @ A) @ B) + b

``B`` starts at zero and ``m`` at ``c`` of the kernel the layer really has at init
(also a pretrained kernel passed in ``initial_state``), so an adapted layer starts
equal to the original. ``c`` is a constant for gradients (``detach_norm=True``, as in
the paper, sec. 4.3, and PEFT). A zero-norm column is an error unless ``eps`` is given
(then ``c = max(c, eps)``). ``rslora=True`` uses ``s = alpha / sqrt(rank)``.
"""
from __future__ import annotations

from typing import Any

from .adapters import adapt as _adapt
from .adapters import layers as _layers
from .node import Node, caller_location

OP = "dora"


def build(input_size: int, output_size: int, rank: int = 8, alpha: float = 16.0,
          name: str = "dora", *, dropout: float = 0.0, rslora: bool = False,
          detach_norm: bool = True, eps: float | None = None, use_bias: bool = False
          ) -> Node:
    """A standalone DoRA model: input ``"input"`` of shape ``(None, input_size)`` ->
    ``(None, output_size)``. Parameters under ``state.data[name]``: ``base_weight
    [in, out]`` (frozen, glorot_uniform), ``A [in, rank]``, ``B [rank, out]``,
    ``magnitude [out]`` (and a frozen ``bias [out]`` with ``use_bias=True``)."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.build(OP, input_size, output_size, name, opts, caller_location(),
                         use_bias=use_bias)


def dora_layer(input: Node, input_size: int, output_size: int, rank: int = 8,
               alpha: float = 16.0, name: str = "dora", *, dropout: float = 0.0,
               rslora: bool = False, detach_norm: bool = True, eps: float | None = None,
               use_bias: bool = False, activation: str | None = None) -> Node:
    """A DoRA layer inline: ``input (..., input_size) -> (..., output_size)``, owning a
    frozen ``base_weight [in, out]`` plus ``A``, ``B`` and ``magnitude``."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.adapter_layer(OP, input, input_size, output_size, name, opts,
                                 caller_location(), use_bias=use_bias, activation=activation)


def wrap(input: Node, original: Node, rank: int = 8, alpha: float = 16.0,
         name: str | None = None, output_size: int | None = None, *, dropout: float = 0.0,
         rslora: bool = False, detach_norm: bool = True, eps: float | None = None) -> Node:
    """DoRA around the named dense, conv or embedding layer ``original`` (a kind of
    graphdsl.adapters.kinds), applied to the input it reads (dense: ``(..., in)``).

    Reuses ``state.data[original.name]["kernel"/"bias"]`` (frozen) and adds ``A``, ``B``,
    ``magnitude`` under ``state.data[name]`` (default ``"{original.name}_dora"``). An
    activation node ``original`` (``dense(..., activation=)``) is kept after the DoRA
    layer wrapping its input layer. ``output_size`` is inferred (checked when given). At init the
    output equals ``original``'s.
    """
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.wrap(OP, input, original, name, output_size, opts, caller_location())


def output_size(output_size: int | None = None, **opts: Any) -> int:
    """The output size of a DoRA layer built with these options (Edifice's
    ``output_size/1``): the ``output_size`` option."""
    return _layers.output_size(OP, output_size, caller_location())


def recommended_defaults() -> dict[str, Any]:
    """``{"rank": 8, "alpha": 16.0}``."""
    return dict(_layers.DEFAULTS)


def adapt(model: Node, targets: _adapt.Targets, rank: int = 8, alpha: float = 16.0, *,
          dropout: float = 0.0, rslora: bool = False, detach_norm: bool = True,
          eps: float | None = None, modules_to_save: Any = None) -> Node:
    """PEFT's ``get_peft_model`` for DoRA: every dense, conv or embedding layer matched
    by ``targets`` (a regex fully matching the layer name, a list of names, or a predicate
    on the node) becomes a DoRA layer ``"{layer}_dora"`` wrapping it; every other layer's
    parameters are frozen except the layers named in ``modules_to_save``. Every layer
    name is made explicit (as resolved in ``model``), so state keys stay the same. Dense
    layers work on inputs of any rank."""
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _adapt.adapt(OP, model, targets, opts, modules_to_save, caller_location())
