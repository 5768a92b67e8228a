"""Hugging Face weights <-> ModelState. A Linear ``weight [out, in]`` is our ``kernel`` [in,
out] transposed, GPT-2's Conv1D ``weight [in, out]`` is the kernel as it is; norms'
``weight``/``bias`` are ``gamma``/``beta``; an embedding's ``weight`` is its ``kernel``."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import models
from ..errors import GraphDSLError, StateError
from ..graph import Graph, analyze
from ..io.archive import atomic_writer
from ..io.weights import ST_DTYPES
from ..node import Node
from ..state import ModelState

#: architectures -> (constructor, whether dense weights are GPT-2 Conv1D [in, out])
ARCHITECTURES = {
    "LlamaForCausalLM": (models.llama, False), "MistralForCausalLM": (models.llama, False),
    "Qwen2ForCausalLM": (models.llama, False), "GPT2LMHeadModel": (models.gpt2, True),
    "BertModel": (models.bert, False),
}
#: checkpoint entries that are buffers, not weights (older transformers saved them)
_IGNORED = re.compile(r"(transformer\.h\.\d+\.attn\.(masked_)?bias|embeddings\.position_ids)$")
_HF_PARAM = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}


def architecture(config: Mapping[str, Any]) -> str:
    """The first architecture of ``config`` that graphdsl.hf knows (else an error)."""
    archs = config.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if not known:
        raise GraphDSLError(f"unsupported architecture(s) {archs!r}",
                            fix=f"graphdsl.hf reads {sorted(ARCHITECTURES)}")
    return known[0]


def hf_key(op: str | None, layer: str, param: str, conv1d: bool) -> tuple[str, bool]:
    """``(hf key, transpose)`` of parameter ``param`` of ``layer`` (an ``op`` layer).
    ``conv1d``: the model's blocks are GPT-2 Conv1D (its ``lm_head`` is still a Linear)."""
    if param not in _HF_PARAM:
        raise GraphDSLError(f"{layer}.{param} has no Hugging Face name",
                            fix="merge adapters first (gd.merge_adapters), or save them as "
                                "PEFT adapter files (graphdsl.hf.save_peft)")
    linear = not conv1d or layer == "lm_head"
    return f"{layer}.{_HF_PARAM[param]}", op == "dense" and param == "kernel" and linear


def key_map(g: Graph, conv1d: bool) -> dict[tuple[str, str], tuple[str, bool]]:
    """``{(layer, param): (hf key, transpose)}`` of every parameter the model owns."""
    op_of = {g.name(n): n.op for n in g.order}
    return {(layer, param): hf_key(op_of.get(layer), layer, param, conv1d)
            for (layer, param), spec in g.params.items() if spec.kind == "param"}


def config_of(model: Node) -> dict[str, Any]:
    """The Hugging Face config a model built by graphdsl.models / graphdsl.hf carries."""
    ids = next((n for n in analyze(model).input_nodes if n.name == "input_ids"), None)
    meta = dict(ids.attrs.get("meta") or {}) if ids is not None else {}
    if "hf_config" not in meta:
        raise GraphDSLError("the model carries no Hugging Face config",
                            fix="build it with graphdsl.models or graphdsl.hf")
    return json.loads(json.dumps(meta["hf_config"]))


def _build(config: dict[str, Any]) -> tuple[Node, bool]:
    make, conv1d = ARCHITECTURES[architecture(config)]
    return make(config), conv1d


def state_from_tensors(model: Node, tensors: Mapping[str, np.ndarray], conv1d: bool,
                       source: str) -> ModelState:
    """The model's ModelState from Hugging Face tensors ``{key: array}``; every key and
    shape is checked, and a missing or extra key is a StateError naming it."""
    g = analyze(model)
    keys = key_map(g, conv1d)
    wanted = {hf for hf, _ in keys.values()}
    tied = [k for k in ("lm_head.weight",) if k in tensors and k not in wanted]
    extra = sorted(k for k in tensors if k not in wanted and k not in tied
                   and not _IGNORED.search(k))
    missing = sorted(k for k in wanted if k not in tensors)
    if missing or extra:
        raise StateError(f"{source}: the checkpoint does not fit the model: missing "
                         f"{missing[:10]}, unexpected {extra[:10]}",
                         fix="check that config.json and the weights belong together")
    data: dict[str, dict[str, np.ndarray]] = {}
    for (layer, param), (hf, transpose) in keys.items():
        arr = np.asarray(tensors[hf])
        arr = arr.T if transpose else arr
        want = g.params[(layer, param)].shape
        if tuple(arr.shape) != tuple(want):
            raise StateError(f"{source}: {hf} has shape {tuple(arr.shape)}, the model needs "
                             f"{tuple(want)[::-1] if transpose else tuple(want)}",
                             layer=layer, fix="check the config's sizes")
        data.setdefault(layer, {})[param] = arr.astype(np.float32, copy=False)
    return ModelState(data)


def from_transformers(hf_model: Any) -> tuple[Node, ModelState]:
    """``(model, state)`` from a live transformers model (config and weights)."""
    config = json.loads(hf_model.config.to_json_string(use_diff=False))
    config["architectures"] = [type(hf_model).__name__]
    model, conv1d = _build(config)
    tensors = {k: v.detach().cpu().float().numpy() for k, v in hf_model.state_dict().items()}
    return model, state_from_tensors(model, tensors, conv1d, type(hf_model).__name__)


def _read_safetensors(folder: str) -> dict[str, np.ndarray]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise GraphDSLError(f"{folder} has no *.safetensors weights",
                            fix="save the model with safe_serialization (the default)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(read_safetensors_file(os.path.join(folder, name)))
    return tensors


def read_safetensors_file(path: str) -> dict[str, np.ndarray]:
    """``{key: array}`` of one ``.safetensors`` file, read with NumPy only (no torch).
    bfloat16 tensors (most published LLM checkpoints) are widened to float32 exactly,
    whether or not a NumPy bfloat16 type (ml_dtypes) happens to be importable: a file
    that holds any is read by hand, every other file by safetensors."""
    from safetensors.numpy import load_file

    try:
        with open(path, "rb") as fh:
            blob = fh.read()
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        if any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
            return _widening_bf16(header, memoryview(blob)[8 + n:])
        return load_file(path)
    except Exception as e:  # a damaged file
        raise GraphDSLError(f"cannot read {os.path.basename(path)}: {type(e).__name__}: {e}",
                            fix="the file is damaged; save the weights again") from None


def _widening_bf16(header: dict, data: memoryview) -> dict[str, np.ndarray]:
    """The tensors of a safetensors ``header`` over its ``data`` bytes, with BF16 widened
    to float32: its 16 bits are the high half of a float32."""
    out = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        lo, hi = v["data_offsets"]
        if not 0 <= lo <= hi <= len(data):
            raise ValueError(f"tensor {key!r} has data offsets {[lo, hi]} outside the data")
        raw = data[lo:hi]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
        else:
            arr = np.frombuffer(raw, np.dtype(ST_DTYPES[v["dtype"]]).newbyteorder("<")).copy()
        out[key] = arr.reshape(v["shape"])
    return out


def from_pretrained(folder: str) -> tuple[Node, ModelState]:
    """``(model, state)`` from a ``save_pretrained`` directory: ``config.json`` and one or
    several ``*.safetensors`` files (with their index). Imports neither torch nor
    transformers."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise GraphDSLError(f"{folder} has no config.json", fix="pass a save_pretrained dir")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    model, conv1d = _build(config)
    return model, state_from_tensors(model, _read_safetensors(folder), conv1d, folder)


def save_pretrained(folder: str, model: Node, state: ModelState) -> str:
    """Write ``config.json`` and ``model.safetensors`` that transformers' ``from_pretrained``
    loads (the model's own config; adapters must be merged first)."""
    from safetensors.numpy import save

    config = config_of(model)
    _, conv1d = ARCHITECTURES[architecture(config)]
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for (layer, param), (hf, transpose) in key_map(analyze(model), conv1d).items():
        arr = np.asarray(state.data[layer][param])
        tensors[hf] = np.ascontiguousarray(arr.T if transpose else arr)
    with atomic_writer(os.path.join(folder, "model.safetensors"), "save_pretrained",
                       "model.safetensors") as fh:
        fh.write(save(tensors, metadata={"format": "pt"}))
    with atomic_writer(os.path.join(folder, "config.json"), "save_pretrained",
                       "config.json") as fh:
        fh.write(json.dumps(config, indent=2).encode("utf-8"))
    return folder
