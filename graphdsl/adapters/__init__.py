"""DoRA and LoRA adapters: the ``dora``/``lora`` ops, their constructors, graph-wide
``adapt``, ``merge_adapters`` and adapter-only state (see ``graphdsl.dora``)."""
from __future__ import annotations

from . import ops as _ops  # noqa: F401  (registers the dora and lora ops)
from .adapt import adapter_state, attach_adapters, merge_adapters, untie

__all__ = ["adapter_state", "attach_adapters", "merge_adapters", "untie"]
