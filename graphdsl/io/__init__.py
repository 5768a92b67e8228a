"""Files, one module per job: ``.archive`` (safe zip reading, atomic writing),
``.weights`` (safetensors), ``.json_text`` (strict JSON parsing, canonical
formatting), ``.value_codec`` (attribute values as JSON data), ``.model_schema``
(the model definition's layout check and JSON Schema), ``.model_json`` (``to_json`` /
``from_json``), ``.document`` (rules the JSON documents share), ``.model_file``
(``save`` / ``load``) and ``.adapter_file`` (``save_adapters`` / ``load_adapters``).
Loading never unpickles, imports or executes anything and never writes a file; every
problem with a file is a ``SerializationError`` (a GraphDSLError)
saying what is wrong.
"""
from __future__ import annotations

from .adapter_file import adapter_keys, adapter_layers, load_adapters, save_adapters
from .archive import DEFAULT_LIMITS, LoadLimits, atomic_writer, need_path, read_archive, sniff
from .document import FORMAT_VERSION
from .json_text import format_document, parse_json
from .model_file import load, save, write_model
from .model_json import from_json, model_to_dict, to_json
from .model_schema import check_structure, schema
from .value_codec import decode_value, encode_value
from .weights import expected_tensors, read_weights, state_tensors

__all__ = [
    "DEFAULT_LIMITS", "FORMAT_VERSION", "LoadLimits", "adapter_keys", "adapter_layers",
    "atomic_writer", "check_structure", "decode_value", "encode_value", "expected_tensors",
    "format_document", "from_json", "load", "load_adapters", "model_to_dict", "need_path",
    "parse_json", "read_archive", "read_weights", "save", "save_adapters", "schema", "sniff",
    "state_tensors", "to_json", "write_model",
]
