"""Architectures written with the public ops only: a constructor per family, taking a
Hugging Face config (a dict or a config object), and the family's record of its Hugging
Face conventions (``HFFamily``, in ``FAMILIES``). Layer
names are the Hugging Face module paths with Axon parameter names (``kernel [in, out]``,
``bias``, ``gamma``, ``beta``)."""
from __future__ import annotations

from .bert import BERT, bert
from .family import HFFamily
from .gpt2 import GPT2, gpt2
from .llama import LLAMA, llama

#: every family graphdsl.hf reads, by its record
FAMILIES: tuple[HFFamily, ...] = (LLAMA, GPT2, BERT)

__all__ = ["BERT", "FAMILIES", "GPT2", "HFFamily", "LLAMA", "bert", "gpt2", "llama"]
