"""``graphdsl generate``: text (or token ids) from a causal LM, printed as it is produced.

DIR is a Hugging Face ``save_pretrained`` folder (``graphdsl.hf.from_pretrained``, its
``tokenizer.json`` for ``--prompt``); FILE a saved model or JSON definition (``--ids``, or
``--prompt`` with ``--tokenizer``). The argument checks are ``graphdsl.generate``'s,
reported under the command line's names."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import GraphDSLError
from .generate import generate
from .hf import from_pretrained, load_tokenizer

# gd.generate's argument names -> the command line's
_FLAGS = {"input_ids": "--ids/--prompt", "max_new_tokens": "--max-new-tokens",
          "top_p": "--top-p", "top_k": "--top-k", "temperature": "--temperature"}


def _parse_ids(text: str) -> np.ndarray:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise GraphDSLError(f"--ids {text!r} is not a comma-separated list of integers",
                            fix="pass e.g. --ids 1,2,3") from None
    if not ids:
        raise GraphDSLError("--ids is empty", fix="pass e.g. --ids 1,2,3")
    return np.array([ids], dtype=np.int64)


def _tokenizer(args: argparse.Namespace, is_dir: bool) -> Any:
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    if is_dir and os.path.isfile(os.path.join(args.file, "tokenizer.json")):
        return load_tokenizer(args.file)
    where = f"{args.file} has no tokenizer.json" if is_dir else f"{args.file} is a model file"
    raise GraphDSLError(f"--prompt needs a tokenizer: {where}",
                        fix="pass --tokenizer tokenizer.json, or token ids with --ids 1,2,3")


class _Printer:
    """Prints the continuation as it grows: the whole sequence is decoded each step and
    the new suffix printed, so a character split over several tokens prints once whole.
    Without a tokenizer, the new ids, comma-separated."""

    def __init__(self, tok: Any, prompt: list[int]) -> None:
        self.tok, self.ids, self.n0, self.shown = tok, list(prompt), len(prompt), ""
        self.head = tok.decode(self.ids) if tok is not None else ""

    def __call__(self, new: np.ndarray) -> None:
        self.ids.append(int(new[0]))
        if self.tok is None:
            sys.stdout.write(("," if len(self.ids) > self.n0 + 1 else "") + str(self.ids[-1]))
        else:
            text = self.tok.decode(self.ids)
            text = text[len(self.head):] if text.startswith(self.head) else \
                self.tok.decode(self.ids[self.n0:])
            done = text.rstrip("\ufffd")  # an incomplete UTF-8 character waits
            if done.startswith(self.shown):
                sys.stdout.write(done[len(self.shown):])
                self.shown = done
        sys.stdout.flush()


def run_generate(args: argparse.Namespace, load_file: Callable[..., tuple]) -> None:
    """The ``generate`` subcommand (see the module docstring); ``load_file(path, seed)``
    reads FILE (the CLI's ``load_any``)."""
    if (args.prompt is None) == (args.ids is None):
        raise GraphDSLError("pass exactly one of --prompt TEXT and --ids 1,2,3",
                            fix="--prompt needs a tokenizer (tokenizer.json); --ids does not")
    if not args.sample:
        given = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                ("--top-p", args.top_p)) if v is not None]
        if given:
            raise GraphDSLError(f"{', '.join(given)} only apply with --sample",
                                fix="add --sample (default: greedy decoding)")
    is_dir = os.path.isdir(args.file)
    model, state = from_pretrained(args.file) if is_dir else load_file(args.file, args.seed)[:2]
    tok = _tokenizer(args, is_dir) if args.prompt is not None else None
    ids = _parse_ids(args.ids) if tok is None else \
        np.array([tok.encode(args.prompt).ids], dtype=np.int64)
    if ids.shape[1] == 0:
        raise GraphDSLError(f"--prompt {args.prompt!r} encodes to no tokens",
                            fix="pass a longer prompt")
    config = _hf_config(model)
    printer = _Printer(tok, ids[0].tolist())
    try:
        generate(model, state, ids, args.max_new_tokens, do_sample=args.sample,
                 temperature=1.0 if args.temperature is None else args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                 eos_token_id=config.get("eos_token_id"),
                 pad_token_id=config.get("pad_token_id"), backend=args.backend,
                 stream=printer)
    except GraphDSLError as e:
        flag = _FLAGS.get(e.layer or "")
        if flag is None:
            raise
        raise GraphDSLError(e.what.replace(f"{e.layer}:", f"{flag} ({e.layer}):", 1),
                            fix=e.fix and e.fix.replace(f"{e.layer}=", f"{flag} ")) from None
    sys.stdout.write("\n")


def _hf_config(model: Any) -> dict:
    from .node import topo_order

    for n in topo_order(model):
        if n.op == "input" and n.name == "input_ids":
            return dict((n.attrs.get("meta") or {}).get("hf_config") or {})
    return {}
