"""The backend interface.

A backend is a table of small kernels keyed by op name plus ``compile(plan)``, which
turns a :class:`graphdsl.compiler.Plan` into ``run(state, inputs) -> (output, updates)``.

A kernel is ``kernel(inputs, params, attrs, ctx) -> array``: ``inputs`` the parent
arrays in order, ``params`` the layer's parameters by local name (``kernel``, ``bias``,
``A`` ...), ``attrs`` the op's checked attributes. A stochastic op in training returns
``(array, {state entry: new value})``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Kernel = Callable[[list, Mapping[str, Any], Mapping[str, Any], "KernelContext"], Any]


@dataclass
class KernelContext:
    """Static facts a kernel may need: training flag, compute dtype, the layer's name
    and a per-layer cache (e.g. a merged adapter kernel)."""

    training: bool
    dtype: Any
    name: str
    op: str
    xp: Any
    cache: dict = field(default_factory=dict)


class Backend(ABC):
    """Base class: ``name``, ``kernels`` and ``compile``."""

    name: str = "?"
    kernels: Mapping[str, Kernel] = {}

    @abstractmethod
    def compile(self, plan: Any, **options: Any) -> Callable[[Any, list], tuple[Any, dict]]:
        """Turn a Plan into ``run(state, inputs) -> (output, {(layer, entry): value})``."""

    def __repr__(self) -> str:
        return f"<graphdsl backend {self.name}: {len(self.kernels)} kernels>"
