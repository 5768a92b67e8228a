"""The strict JSON parsing and the canonical formatting every graphdsl document uses
(``model.json``, ``state.json``, ``adapters.json``, a Hugging Face checkpoint's JSON):
``parse_json`` refuses NaN/Infinity and duplicate keys, ``format_document`` writes
one line per list entry so that diffs stay readable.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import SerializationError


def _reject_constant(token: str) -> Any:
    raise SerializationError(f"the JSON holds {token}, which is not valid JSON",
                             fix="write finite numbers only")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SerializationError(f"the JSON object has the key {k!r} twice",
                                     fix="keep one entry per key")
        out[k] = v
    return out


def parse_json(text: str | bytes, what: str = "model JSON") -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys; any failure is a SerializationError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")  # a BOM is fine
        except UnicodeDecodeError as e:
            raise SerializationError(f"{what} is not UTF-8 text ({e.reason} at byte "
                                     f"{e.start})", fix="save the file as UTF-8") from None
    if not isinstance(text, str):
        raise SerializationError(f"{what} must be a str, got {type(text).__name__}",
                                 fix="pass the JSON text (e.g. open(path).read())")
    try:  # the hooks' SerializationErrors are not ValueErrors: they pass through
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise SerializationError(f"{what} is not valid JSON: {e.msg} at line {e.lineno} "
                                 f"column {e.colno}", fix="fix the JSON syntax") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise SerializationError(f"{what} could not be parsed ({type(e).__name__}: "
                                 f"{str(e)[:200]})", fix="fix the JSON") from None


def format_document(doc: Mapping[str, Any], compact: bool = False) -> str:
    """Canonical text of a document: one line per input and per node (readable diffs);
    ``compact=True`` gives a single line."""
    if compact:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if not doc:
        return "{\n}\n"
    one = lambda v: json.dumps(v, ensure_ascii=False, allow_nan=False)  # noqa: E731
    entries = []
    for k, v in doc.items():
        if isinstance(v, list) and v:
            rows = ",\n".join(f"    {one(x)}" for x in v)
            entries.append(f"  {one(k)}: [\n{rows}\n  ]")
        else:
            entries.append(f"  {one(k)}: {one(v)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"
