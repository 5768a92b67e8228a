"""Architectures written with the public DSL only: a constructor per family, taking a
Hugging Face config (a dict or a config object). Layer names are the Hugging Face module
paths with Axon parameter names (``kernel [in, out]``, ``bias``, ``gamma``, ``beta``)."""
from __future__ import annotations

from .bert import bert
from .gpt2 import gpt2
from .llama import llama

__all__ = ["bert", "gpt2", "llama"]
