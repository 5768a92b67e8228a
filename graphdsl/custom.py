"""Named functions for custom layers and initializers, so models can be saved by name.

``@gd.register_function("my_fn")`` puts a function in the registry; JSON model files
refer to it by that name, and loading resolves the name here (never by import).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import GraphDSLError

FUNCTIONS: dict[str, Callable[..., Any]] = {}


def register_function(name: str | None = None, fn: Callable[..., Any] | None = None
                      ) -> Callable[..., Any]:
    """Register ``fn`` under ``name`` so models using it can be saved and loaded by name.

    JSON model files refer to the function by that name, and loading resolves the name in
    this registry (never by import). Usable as a decorator (``@gd.register_function()``
    or ``@gd.register_function("name")``).

    Args:
        name: the registry key (default ``fn.__name__``).
        fn: the function; None returns a decorator.

    Returns:
        (Callable): ``fn`` itself, or the decorator when ``fn`` is None.

    Raises:
        GraphDSLError: a different function is already registered as ``name``.

    Examples:
        >>> @gd.register_function("doc_double")
        ... def double(x, *, xp):
        ...     return x * 2
        >>> y = gd.layer("doc_double", gd.input("x", shape=(None, 2)))
        >>> '"doc_double"' in gd.to_json(y)      # saved by name
        True
    """

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        key = name or f.__name__
        if key in FUNCTIONS and FUNCTIONS[key] is not f:
            raise GraphDSLError(f"a different function is already registered as {key!r}",
                                fix="register it under another name")
        FUNCTIONS[key] = f
        return f

    return deco(fn) if fn is not None else deco


def function_name(fn: Callable[..., Any]) -> str | None:
    """The registered name of ``fn``, or None if it is not registered."""
    return next((k for k, v in FUNCTIONS.items() if v is fn), None)


def lookup_function(name: str) -> Callable[..., Any]:
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise GraphDSLError(
            f"no function is registered under {name!r}",
            fix="register it before loading: @graphdsl.register_function("
            f"{name!r}) on the function; registered: {sorted(FUNCTIONS) or 'none'}",
        ) from None


# -- ONNX rules of custom layers (used by gd.to_onnx; nothing here imports onnx) -------------
ONNX_RULES: dict[Callable[..., Any], tuple[Callable[..., str], int]] = {}


def register_onnx_rule(fn: Callable[..., Any] | str, rule: Callable[..., str] | None = None,
                       *, min_opset: int = 13) -> Callable[..., Any]:
    """Give the custom-layer function ``fn`` an ONNX rule, so ``gd.to_onnx`` exports its layers.

    ``rule(b, *inputs, **opts) -> str``: ``inputs`` are the names of the layer's input
    tensors, ``opts`` the layer's options; it adds ONNX nodes with ``b.op(op_type,
    [inputs...], **attributes)`` (returns the output name), ``b.const(value)`` (a float32
    constant) and ``b.ints([...])``, and returns the name of the output tensor. Usable as a
    decorator.

    Args:
        fn: the function (or its registered name) of ``gd.layer(fn, ...)`` layers.
        rule: the rule; None returns a decorator.
        min_opset: the lowest ONNX opset the operators used need.

    Returns:
        (Callable): ``rule``, or the decorator when ``rule`` is None.

    Raises:
        GraphDSLError: ``fn`` is not callable (or names no registered function), ``rule``
            is not callable, or ``min_opset`` is not a positive int.

    Examples:
        >>> @gd.register_function("doc_scaled_tanh")
        ... def scaled_tanh(x, *, xp, scale=1.0):
        ...     return xp.tanh(x) * scale
        >>> @gd.register_onnx_rule(scaled_tanh)
        ... def _(b, x, scale=1.0):
        ...     return b.op("Mul", [b.op("Tanh", [x]), b.const(scale)])
    """
    if isinstance(fn, str):
        fn = lookup_function(fn)
    if not callable(fn):
        raise GraphDSLError(f"register_onnx_rule needs the custom layer's function, got "
                            f"{type(fn).__name__}", fix="pass the function given to gd.layer")
    if isinstance(min_opset, bool) or not isinstance(min_opset, int) or min_opset < 1:
        raise GraphDSLError(f"min_opset must be a positive int, got {min_opset!r}",
                            fix="pass e.g. min_opset=13")

    def deco(r: Callable[..., str]) -> Callable[..., str]:
        if not callable(r):
            raise GraphDSLError(f"an ONNX rule must be callable, got {type(r).__name__}",
                                fix="pass def rule(b, *inputs, **opts) -> str")
        ONNX_RULES[fn] = (r, min_opset)
        return r

    return deco(rule) if rule is not None else deco


def onnx_rule_for(fn: Callable[..., Any]) -> tuple[Callable[..., str], int] | None:
    """``(rule, min_opset)`` registered for the custom-layer function ``fn``, or None."""
    return ONNX_RULES.get(fn)
