"""Kernels written once for every backend: they use only what NumPy arrays and torch
tensors share (``.shape``, ``.reshape``), so each backend's table takes them as they are.

A kernel is ``kernel(inputs, params, attrs, ctx) -> array`` (see :mod:`.base`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from graphdsl.shapes import reshape_target

from .base import KernelContext


def container(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The inputs as a tuple (``keys`` None) or a dict ``{key: array}``."""
    return dict(zip(a["keys"], ins)) if a["keys"] is not None else tuple(ins)


def reshape(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x -> x reshaped to ``attrs["shape"]`` (None keeps an axis, -1 infers one size)."""
    x = ins[0]
    return x.reshape(reshape_target(tuple(x.shape), a["shape"]))


def flatten(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x (N, d1, d2, ...) -> (N, d1*d2*...)."""
    x = ins[0]
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def param(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The layer's ``value`` parameter (any shape)."""
    return p["value"]


def activation_kernels(table: Mapping[str, Callable[[Any, Mapping[str, Any]], Any]]
                       ) -> dict[str, Callable]:
    """``{op: kernel}`` for a backend's activation table ``{op: fn(x, attrs)}``."""
    def kernel(fn: Callable) -> Callable:
        return lambda ins, p, a, ctx: fn(ins[0], a)

    return {op: kernel(fn) for op, fn in table.items()}


KERNELS: dict[str, Callable] = {"container": container, "reshape": reshape,
                                "flatten": flatten, "param": param}
