"""Hugging Face tokenizers: ``tokenizer.json`` read by the ``tokenizers`` package (the
``hf`` extra), for ``graphdsl.generate`` and ``graphdsl generate``."""
from __future__ import annotations

import os
from typing import Any

from ..errors import GraphDSLError


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file or a folder holding one.

    Encode with ``tok.encode(text).ids``, decode with ``tok.decode(ids)``. Needs the
    ``hf`` extra (tokenizers).

    Args:
        path: a ``tokenizer.json`` file, or a folder (a ``save_pretrained`` checkpoint).

    Returns:
        (tokenizers.Tokenizer): the tokenizer.

    Raises:
        GraphDSLError: no such file, or tokenizers is not installed (names the extra).

    Examples:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> vocab = {"hello": 0, "world": 1, "[UNK]": 2}
        >>> t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        >>> t.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> t.save("tokenizer.json")                    # as a checkpoint folder holds it
        >>> from graphdsl import hf
        >>> tok = hf.load_tokenizer("tokenizer.json")
        >>> tok.encode("hello world").ids, tok.decode([1, 0])
        ([0, 1], 'world hello')
    """
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise GraphDSLError(f"hf.load_tokenizer: no tokenizer file {file}",
                            fix="pass a tokenizer.json or a checkpoint folder that holds "
                                "one (tokenizer.save_pretrained(folder) writes it)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise GraphDSLError("hf.load_tokenizer needs the tokenizers package",
                            fix="pip install 'graphdsl[hf]'") from None
    try:
        return Tokenizer.from_file(file)
    except Exception as e:  # the Rust parser's error: one message, no traceback
        raise GraphDSLError(f"hf.load_tokenizer: {file} is not a tokenizers file ({e})",
                            fix="pass the tokenizer.json a Hugging Face tokenizer "
                                "(a 'fast' one) saves") from None
