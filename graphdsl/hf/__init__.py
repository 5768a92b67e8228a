"""The Hugging Face bridge: transformers models and ``save_pretrained`` directories in and
out, for the families of ``graphdsl.models``, and PEFT LoRA/DoRA adapter directories
(``save_peft`` / ``load_peft``). Reading a checkpoint or an adapter needs only NumPy
(neither torch, transformers, peft nor safetensors is imported); writing needs the
``io`` extra (safetensors); ``load_tokenizer`` the ``hf`` extra (tokenizers)."""
from __future__ import annotations

from .checkpoint import from_pretrained, from_transformers, save_pretrained
from .peft_files import load_peft, save_peft
from .tokenizer import load_tokenizer

__all__ = ["from_pretrained", "from_transformers", "load_peft", "load_tokenizer",
           "save_peft", "save_pretrained"]
