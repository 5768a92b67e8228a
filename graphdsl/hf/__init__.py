"""The Hugging Face bridge: transformers models and ``save_pretrained`` directories in and
out, for the families of :mod:`graphdsl.models`. Reading a checkpoint needs only NumPy
and safetensors (neither torch nor transformers is imported)."""
from __future__ import annotations

from .checkpoint import from_pretrained, from_transformers, save_pretrained

__all__ = ["from_pretrained", "from_transformers", "save_pretrained"]
