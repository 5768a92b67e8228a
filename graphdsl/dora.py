"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al. 2024, arXiv 2402.09353).

Mirror of Elixir's ``Edifice.Meta.DoRA`` (``build``, ``dora_layer``, ``wrap``,
``output_size``, ``recommended_defaults``) with the paper's math, plus graph-wide
``adapt``. With a frozen kernel ``K [in, out]`` and bias ``b [out]``, ``A [in, r]``,
``B [r, out]``, magnitude ``m [out]`` and ``s = alpha / rank``:

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
    """A standalone DoRA model ``(None, input_size) -> (None, output_size)``, input ``"input"``.

    Parameters under ``state.data[name]``: ``base_weight [in, out]`` (frozen,
    glorot_uniform), ``A [in, rank]``, ``B [rank, out]``, ``magnitude [out]``; with
    ``use_bias=True`` also a frozen ``bias [out]``.

    Args:
        input_size: input features, a positive int.
        output_size: output features, a positive int.
        rank: the rank ``r`` of ``A``/``B``, a positive int.
        alpha: the scale numerator: ``s = alpha / rank``.
        dropout: PEFT's ``lora_dropout`` in ``[0, 1)``, on the adapter's input in train
            mode only.
        rslora: ``s = alpha / sqrt(rank)`` (rank-stabilized LoRA).
        detach_norm: treat the column norm ``c`` as a constant for gradients (the paper,
            sec. 4.3, and PEFT).
        eps: None: a zero-norm column is an error; a float: ``c = max(c, eps)``.
        name: the layer name.
        use_bias: add a frozen ``bias [out]``.

    Returns:
        (Node): the dora layer (input ``"input"``).

    Raises:
        OptionError: a size, rank, alpha or dropout out of range.

    Examples:
        >>> from graphdsl import dora
        >>> m = dora.build(input_size=16, output_size=8, rank=4, name="dora")
        >>> state = gd.build(m)[0](np.zeros((1, 16), np.float32))
        >>> {k: v.shape for k, v in state.data["dora"].items()}
        {'base_weight': (16, 8), 'A': (16, 4), 'B': (4, 8), 'magnitude': (8,)}
    """
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.build(OP, input_size, output_size, name, opts, caller_location(),
                         use_bias=use_bias)


def dora_layer(input: Node, input_size: int, output_size: int, rank: int = 8,
               alpha: float = 16.0, name: str = "dora", *, dropout: float = 0.0,
               rslora: bool = False, detach_norm: bool = True, eps: float | None = None,
               use_bias: bool = False, activation: str | None = None) -> Node:
    """A DoRA layer inline: ``input (..., input_size) -> (..., output_size)``.

    It owns a frozen ``base_weight [in, out]`` plus
    ``A [in, rank]``, ``B [rank, out]``, ``magnitude [out]``.

    Args:
        input: the input node ``(..., input_size)``.
        input_size: input features.
        output_size: output features.
        rank: the rank ``r`` of ``A``/``B``, a positive int.
        alpha: the scale numerator: ``s = alpha / rank``.
        dropout: PEFT's ``lora_dropout`` in ``[0, 1)``, on the adapter's input in train
            mode only.
        rslora: ``s = alpha / sqrt(rank)`` (rank-stabilized LoRA).
        detach_norm: treat the column norm ``c`` as a constant for gradients (the paper,
            sec. 4.3, and PEFT).
        eps: None: a zero-norm column is an error; a float: ``c = max(c, eps)``.
        name: the layer name.
        use_bias: add a frozen ``bias [out]``.
        activation: an activation node after the layer, or None.

    Returns:
        (Node): ``(..., output_size)``.

    Raises:
        ShapeError: the input's last axis is not ``input_size``.
        OptionError: a size or option out of range.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 5, 16))
        >>> gd.get_output_shape(dora.dora_layer(x, 16, 8, rank=2), (2, 5, 16))
        (2, 5, 8)
    """
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.adapter_layer(OP, input, input_size, output_size, name, opts,
                                 caller_location(), use_bias=use_bias, activation=activation)


def wrap(input: Node, original: Node, rank: int = 8, alpha: float = 16.0,
         name: str | None = None, output_size: int | None = None, *, dropout: float = 0.0,
         rslora: bool = False, detach_norm: bool = True, eps: float | None = None) -> Node:
    """DoRA around the named dense, conv or embedding layer ``original``, on its input.

    Reuses ``state.data[original.name]["kernel"/"bias"]`` (frozen) and adds A, B, magnitude under
    ``state.data[name]``. An activation node ``original`` (``dense(..., activation=)``) is
    kept after the dora layer wrapping its input layer. At init the output equals
    ``original``'s (``B = 0``, ``m = c``).

    Args:
        input: the input ``original`` reads (dense: ``(..., in)``).
        original: the layer to wrap, with an explicit name.
        rank: the rank ``r``.
        alpha: the scale numerator.
        name: the adapter's name (default ``"{original.name}_dora"``).
        output_size: checked against ``original``'s when given (else inferred).
        dropout: PEFT's ``lora_dropout`` in ``[0, 1)``, on the adapter's input in train
            mode only.
        rslora: ``s = alpha / sqrt(rank)`` (rank-stabilized LoRA).
        detach_norm: treat the column norm ``c`` as a constant for gradients (the paper,
            sec. 4.3, and PEFT).
        eps: None: a zero-norm column is an error; a float: ``c = max(c, eps)``.

    Returns:
        (Node): the adapted layer, ``original``'s shape.

    Raises:
        GraphDSLError: ``original`` is not a named dense/conv/embedding layer (or is
            already an adapter).
        ShapeError: ``input`` does not fit ``original``'s kernel, or ``output_size`` differs.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 16))
        >>> orig = gd.dense(x, 8, name="attn")
        >>> y = dora.wrap(x, orig, rank=4)
        >>> y.name, gd.get_output_shape(y, (2, 16))
        ('attn_dora', (2, 8))
    """
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _layers.wrap(OP, input, original, name, output_size, opts, caller_location())


def output_size(output_size: int | None = None, **opts: Any) -> int:
    """The output size of a DoRA layer with these options (Edifice's ``output_size/1``).

    Args:
        output_size: the ``output_size`` option.
        **opts: the layer's other options (ignored).

    Returns:
        (int): ``output_size``.

    Raises:
        OptionError: ``output_size`` is missing or not a positive int.

    Examples:
        >>> from graphdsl import dora
        >>> dora.output_size(output_size=768, rank=8)
        768
    """
    return _layers.output_size(OP, output_size, caller_location())


def recommended_defaults() -> dict[str, Any]:
    """The recommended options: ``{"rank": 8, "alpha": 16.0}``.

    Returns:
        (dict[str, Any]): a new dict.

    Examples:
        >>> from graphdsl import dora
        >>> dora.recommended_defaults()
        {'rank': 8, 'alpha': 16.0}
    """
    return dict(_layers.DEFAULTS)


def adapt(model: Node, targets: _adapt.Targets, rank: int = 8, alpha: float = 16.0, *,
          dropout: float = 0.0, rslora: bool = False, detach_norm: bool = True,
          eps: float | None = None, modules_to_save: Any = None) -> Node:
    """PEFT's ``get_peft_model`` for DoRA: wrap each dense, conv or embedding layer matched.

    Each matched layer becomes a dora layer ``"{layer}_dora"`` wrapping it; every other
    layer's parameters are frozen except the layers named in ``modules_to_save``. Every
    layer name is made explicit (as resolved in ``model``), so state keys stay the same.
    Dense layers work on inputs of any rank.

    Args:
        model: the model to adapt.
        targets: a regex fully matching layer names, a list of names (an entry matches a
            layer named exactly that or ending in ``"." + entry``, PEFT's
            ``target_modules`` rule), or a predicate on a node.
        rank: the rank ``r``.
        alpha: the scale numerator.
        dropout: PEFT's ``lora_dropout`` in ``[0, 1)``, on the adapter's input in train
            mode only.
        rslora: ``s = alpha / sqrt(rank)`` (rank-stabilized LoRA).
        detach_norm: treat the column norm ``c`` as a constant for gradients (the paper,
            sec. 4.3, and PEFT).
        eps: None: a zero-norm column is an error; a float: ``c = max(c, eps)``.
        modules_to_save: a layer name or a list of exact names (layers with parameters)
            left trainable, PEFT's option.

    Returns:
        (Node): the adapted model.

    Raises:
        GraphDSLError: a target that matches no adaptable layer (the message lists them),
            or a ``modules_to_save`` name that is no layer with parameters or is a target.
        OptionError: an option out of range.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 8))
        >>> model = gd.dense(gd.dense(x, 8, name="attn_q"), 2, name="head")
        >>> adapted = dora.adapt(model, targets=r"attn_.*", rank=2)
        >>> gd.get_op_counts(adapted)["dora"]
        1
        >>> state = gd.build(adapted)[0](np.zeros((1, 8), np.float32))
        >>> sorted(state.trainable_parameters()["attn_q_dora"])
        ['A', 'B', 'magnitude']
    """
    opts = _layers.options(OP, rank, alpha, dropout, rslora, detach_norm, eps)
    return _adapt.adapt(OP, model, targets, opts, modules_to_save, caller_location())
