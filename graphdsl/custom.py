"""Named functions for custom layers and initializers, so models can be saved by name.

``@gd.register_function("my_fn")`` puts a function in the registry; JSON model files
refer to it by that name, and loading resolves the name here (never by import).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import GraphDSLError

FUNCTIONS: dict[str, Callable[..., Any]] = {}


def register_function(name: str | None = None, fn: Callable[..., Any] | None = None):
    """Register ``fn`` under ``name`` (default: its ``__name__``). Usable as a decorator."""

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
    for k, v in FUNCTIONS.items():
        if v is fn:
            return k
    return None


def lookup_function(name: str) -> Callable[..., Any]:
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise GraphDSLError(
            f"no function is registered under {name!r}",
            fix="register it before loading: @graphdsl.register_function("
            f"{name!r}) on the function; registered: {sorted(FUNCTIONS) or 'none'}",
        ) from None
