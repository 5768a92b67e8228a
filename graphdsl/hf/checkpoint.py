"""Hugging Face weights <-> ModelState. A Linear ``weight [out, in]`` is our ``kernel`` [in,
out] transposed, GPT-2's Conv1D ``weight [in, out]`` is the kernel as it is; norms'
``weight``/``bias`` are ``gamma``/``beta``; an embedding's ``weight`` is its ``kernel``."""
from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .. import models
from ..errors import GraphDSLError, StateError
from ..graph import Graph, analyze
from ..initializers import initialize
from ..io.archive import atomic_writer
from ..io.json_text import parse_json
from ..io.weights import (
    ST_DTYPES,
    ST_ITEMSIZE,
    Entry,
    encode_weights,
    expected_tensors,
    read_header,
    state_tensors,
)
from ..node import Node
from ..state import ModelState

#: architectures -> (constructor, whether dense weights are GPT-2 Conv1D [in, out])
ARCHITECTURES = {
    "LlamaForCausalLM": (models.llama, False), "MistralForCausalLM": (models.llama, False),
    "Qwen2ForCausalLM": (models.llama, False), "GPT2LMHeadModel": (models.gpt2, True),
    "BertModel": (models.bert, False),
}
#: base models (no head) that load as the head model above, as transformers' AutoModelFor*
#: reads them; and the architecture of a config that names none, by its ``model_type``
_BASE_MODELS = {"LlamaModel": "LlamaForCausalLM", "MistralModel": "MistralForCausalLM",
                "Qwen2Model": "Qwen2ForCausalLM", "GPT2Model": "GPT2LMHeadModel"}
_BY_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertModel"}
#: family -> (transformers' base_model_prefix, whether our layer names carry it, the
#: prefix of the numbered blocks, the config field counting them, the embedding's
#: ``(config field, axis)``)
_FAMILIES = {
    "llama": ("model.", True, "model.layers.", "num_hidden_layers", "model.embed_tokens.weight",
              (("vocab_size", 0), ("hidden_size", 1))),
    "gpt2": ("transformer.", True, "transformer.h.", "n_layer", "transformer.wte.weight",
             (("vocab_size", 0), ("n_embd", 1))),
    "bert": ("bert.", False, "encoder.layer.", "num_hidden_layers",
             "embeddings.word_embeddings.weight", (("vocab_size", 0), ("hidden_size", 1))),
}
#: checkpoint entries that are buffers, not weights (older transformers saved them)
_IGNORED = re.compile(r"(transformer\.h\.\d+\.attn\.(masked_)?bias|embeddings\.position_ids|"
                      r"rotary_emb\.inv_freq)$")
_HF_PARAM = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_HUB_FIX = ("graphdsl.hf does not download Hub ids: pass a local folder, e.g. the one "
            "huggingface_hub.snapshot_download(repo_id) returns, or one written by "
            "transformers' save_pretrained")


def architecture(config: Mapping[str, Any]) -> str:
    """The first architecture of ``config`` that graphdsl.hf knows: a listed head model, a
    listed base model (``GPT2Model`` loads as ``GPT2LMHeadModel``), or, when the config
    lists none, its ``model_type``'s (else an error)."""
    archs = config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise GraphDSLError(f"config field 'architectures' is {archs!r}",
                            fix="give a list of class names, e.g. [\"LlamaForCausalLM\"]")
    known = [_BASE_MODELS.get(a, a) for a in archs if _BASE_MODELS.get(a, a) in ARCHITECTURES]
    kind = config.get("model_type")
    if not archs and isinstance(kind, str) and kind in _BY_TYPE:
        known = [_BY_TYPE[kind]]
    if not known:
        raise GraphDSLError(f"unsupported architecture(s) {archs!r} (model_type {kind!r})",
                            fix=f"graphdsl.hf reads {sorted(ARCHITECTURES)}")
    return known[0]


def _family(arch: str) -> tuple:
    return _FAMILIES[ARCHITECTURES[arch][0].__name__]


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
    config = json.loads(json.dumps(meta["hf_config"]))
    if not config.get("architectures"):  # e.g. models.llama(LlamaConfig(...)): infer it
        layers = {layer for layer, _ in analyze(model).params}
        kind = config.get("model_type") or next(
            (k for k, f in _FAMILIES.items() if f[4].rpartition(".")[0] in layers), None)
        if isinstance(kind, str) and kind in _BY_TYPE:
            config["model_type"], config["architectures"] = kind, [_BY_TYPE[kind]]
    return config


def _build(arch: str, config: dict[str, Any], keys: Iterable[str]) -> tuple[Node, bool]:
    """The graph of ``arch`` for ``config``; a BERT checkpoint holding a pooler (as a
    default ``BertModel`` does) gets it."""
    make, conv1d = ARCHITECTURES[arch]
    if make is models.bert and "pooler.dense.weight" in keys:
        return make(config, add_pooling_layer=True), conv1d
    return make(config), conv1d


def renamed(keys: Iterable[str], arch: str) -> dict[str, str]:
    """``{our hf key: checkpoint key}``: transformers reads a checkpoint with or without
    the base model's prefix (GPT-2's ``h.0.attn.c_attn.weight`` is our
    ``transformer.h.0.attn.c_attn.weight``; BERT's ``bert.`` is dropped), decided for the
    whole checkpoint as transformers does."""
    prefix, ours = _family(arch)[:2]
    keys = list(keys)
    if ours and not any(k.startswith(prefix) for k in keys):
        return {(k if k.startswith("lm_head.") else prefix + k): k for k in keys}
    if not ours and any(k.startswith(prefix) for k in keys):
        return {k.removeprefix(prefix): k for k in keys}
    return {k: k for k in keys}


def state_from_tensors(model: Node, tensors: Mapping[str, np.ndarray], conv1d: bool,
                       source: str) -> ModelState:
    """The model's ModelState from Hugging Face tensors ``{key: array}``; every key and
    shape is checked, and a missing or extra key is a StateError naming it. Dropout RNG
    keys (state entries, not weights) are created from seed 0."""
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
    entries: dict[str, list[str]] = {}
    for (layer, param), spec in g.params.items():
        if spec.kind == "state":  # a dropout layer's RNG key: in no checkpoint, so seed 0
            data.setdefault(layer, {})[param] = initialize(
                spec.initializer, spec.shape, spec.dtype or "float32", 0, layer, param)
            entries.setdefault(layer, []).append(param)
            continue
        hf, transpose = keys[(layer, param)]
        arr = np.asarray(tensors[hf])
        arr = arr.T if transpose else arr
        want = g.params[(layer, param)].shape
        if tuple(arr.shape) != tuple(want):
            raise StateError(f"{source}: {hf} has shape {tuple(arr.shape)}, the model needs "
                             f"{tuple(want)[::-1] if transpose else tuple(want)}",
                             layer=layer, fix="check the config's sizes")
        data.setdefault(layer, {})[param] = arr.astype(np.float32, copy=False)
    return ModelState(data, (), entries)


def from_transformers(hf_model: Any) -> tuple[Node, ModelState]:
    """``(model, state)`` from a live transformers model (config and weights)."""
    if not (hasattr(hf_model, "state_dict") and hasattr(getattr(hf_model, "config", None),
                                                        "to_json_string")):
        raise GraphDSLError(
            f"hf.from_transformers(hf_model) needs a transformers model, got "
            f"{type(hf_model).__name__}",
            fix="pass a PreTrainedModel (e.g. AutoModelForCausalLM.from_config(config)); "
                "for a config alone, build the graph with graphdsl.models (models.llama(config))")
    config = json.loads(hf_model.config.to_json_string(use_diff=False))
    config["architectures"] = [type(hf_model).__name__]
    arch = architecture(config)
    sd = hf_model.state_dict()
    names = renamed(sd, arch)
    model, conv1d = _build(arch, config, names)
    tensors = {k: sd[old].detach().cpu().float().numpy() for k, old in names.items()}
    return model, state_from_tensors(model, tensors, conv1d, type(hf_model).__name__)


def need_folder(path: Any, what: str, must_exist: bool = True) -> str:
    """``path`` as a str naming a folder (that exists, with ``must_exist``), else a
    GraphDSLError naming ``what`` and the fix (a Hub id is not downloaded)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise GraphDSLError(f"{what} must be a folder path, got {path!r}",
                            fix="pass a str or pathlib.Path naming a folder")
    p = os.fsdecode(os.fspath(path))
    if os.path.isfile(p):
        raise GraphDSLError(f"{what} {p!r} is a file, not a folder",
                            fix=f"pass the folder that holds it: {os.path.dirname(p) or '.'!r}")
    if must_exist and not os.path.isdir(p):
        raise GraphDSLError(f"{what} {p!r} is not a folder here", fix=_HUB_FIX)
    return p


def read_json_file(path: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not JSON, or not an object, is a
    GraphDSLError naming it."""
    with open(path, "rb") as f:
        data = parse_json(f.read(), path)
    if not isinstance(data, dict):
        raise GraphDSLError(f"{path} holds a JSON {type(data).__name__}, not an object",
                            fix=f"{os.path.basename(path)} must be {what}; write it again")
    return data


def _headers(folder: str) -> dict[str, tuple[str, Entry]]:
    """``{key: (file, (dtype, shape, begin, end))}`` of the checkpoint's tensors (offsets
    from the file's start), from headers only. As in transformers, ``model.safetensors``
    wins over ``model.safetensors.index.json``, which maps each key to its shard."""
    def header(name: str) -> dict[str, Entry]:
        if not os.path.isfile(os.path.join(folder, name)):
            raise GraphDSLError(f"{folder}/{INDEX} names {name}, which is not in the folder",
                                fix="copy the missing shard there, or save the model again")
        return _file_header(os.path.join(folder, name))

    if os.path.isfile(os.path.join(folder, WEIGHTS)):
        return {k: (WEIGHTS, e) for k, e in header(WEIGHTS).items()}
    if not os.path.isfile(os.path.join(folder, INDEX)):
        raise GraphDSLError(f"{folder} has neither {WEIGHTS} nor {INDEX}",
                            fix="save the model with save_pretrained (safetensors, the default)")
    wmap = read_json_file(os.path.join(folder, INDEX), "a safetensors index").get("weight_map")
    if not (isinstance(wmap, dict) and wmap and all(
            isinstance(f, str) and f == os.path.basename(f) and f.endswith(".safetensors")
            for f in wmap.values())):
        raise GraphDSLError(f"{folder}/{INDEX}: 'weight_map' must map each tensor name to "
                            f"a .safetensors file in the folder, got {str(wmap)[:100]}",
                            fix="the index is damaged; save the model again")
    shards = {f: header(f) for f in sorted(set(wmap.values()))}
    out = {}
    for key, f in wmap.items():
        if key not in shards[f]:
            raise GraphDSLError(f"{folder}/{INDEX} puts {key!r} in {f}, which does not "
                                "hold it", fix="the index is damaged; save the model again")
        out[key] = (f, shards[f][key])
    return out


def _decode(folder: str, entries: Mapping[str, tuple[str, Entry]]) -> dict[str, np.ndarray]:
    """``{key: array}``, mapped from the files read-only (no copy), BF16 widened to
    float32 exactly (its 16 bits are the high half of a float32)."""
    maps, out = {}, {}
    for key, (name, (dt, shape, b, e)) in entries.items():
        if name not in maps:
            with open(os.path.join(folder, name), "rb") as fh:
                maps[name] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        code = "<u2" if dt == "BF16" else np.dtype(ST_DTYPES[dt]).newbyteorder("<")
        arr = np.frombuffer(maps[name], code, (e - b) // ST_ITEMSIZE[dt], b)
        if dt == "BF16":
            arr = (arr.astype("<u4") << 16).view("<f4")
        out[key] = arr.reshape(shape)
    return out


def _file_header(path: str) -> dict[str, Entry]:
    """The checked header of one ``.safetensors`` file, offsets from the file's start."""
    with open(path, "rb") as fh:
        entries, start = read_header(fh, os.fstat(fh.fileno()).st_size,
                                     f"cannot read {os.path.basename(path)}",
                                     (*ST_DTYPES, "BF16"))
    return {k: (dt, shape, start + b, start + e) for k, (dt, shape, b, e) in entries.items()}


def read_safetensors_file(path: str) -> dict[str, np.ndarray]:
    """``{key: array}`` of one ``.safetensors`` file, read with NumPy only (its header is
    checked first; bfloat16 is widened to float32 exactly)."""
    folder, name = os.path.split(path)
    return _decode(folder, {k: (name, e) for k, e in _file_header(path).items()})


def _check_sizes(config: Mapping[str, Any], arch: str, keys: Mapping[str, tuple[str, Entry]],
                 folder: str) -> None:
    """Before anything is built: the config's block count and embedding size must be the
    checkpoint's (a config.json asking for 10**8 blocks fails here, at once)."""
    _, _, blocks, field, embed, dims = _family(arch)
    found = [int(m.group(1)) for k in keys if (m := re.match(re.escape(blocks) + r"(\d+)\.", k))]
    held = [(field, max(found, default=-1) + 1, f"{len(set(found))} block(s) {blocks}N")]
    if embed in keys:
        shape = keys[embed][1][1]
        held += [(f, shape[axis], f"{embed} of shape {list(shape)}") for f, axis in dims
                 if axis < len(shape)]
    for f, want, what in held:
        v = config.get(f)
        if isinstance(v, int) and not isinstance(v, bool) and v != want:
            raise GraphDSLError(f"{folder}/config.json: {f} is {v}, but the checkpoint holds "
                                f"{what}", fix=f"set {f} to {want} in config.json, or put the "
                                "config and the weights that belong together in one folder")


def from_pretrained(folder: str) -> tuple[Node, ModelState]:
    """``(model, state)`` from a local ``save_pretrained`` folder: ``config.json`` and
    ``model.safetensors`` (or the shards ``model.safetensors.index.json`` names), with or
    without the base model's key prefix. Imports neither torch, transformers nor
    safetensors; the config is checked against the weights' headers before the graph is
    built."""
    folder = need_folder(folder, "hf.from_pretrained(folder)")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise GraphDSLError(f"{folder} has no config.json", fix=_HUB_FIX)
    config = read_json_file(path, "a Hugging Face config (a JSON object)")
    arch = architecture(config)
    entries = _headers(folder)
    names = renamed(entries, arch)
    entries = {k: entries[old] for k, old in names.items() if not _IGNORED.search(k)}
    _check_sizes(config, arch, entries, folder)
    model, conv1d = _build(arch, config, entries)
    return model, state_from_tensors(model, _decode(folder, entries), conv1d, folder)


def save_pretrained(folder: str, model: Node, state: ModelState) -> str:
    """Write ``config.json`` and ``model.safetensors`` that transformers' ``from_pretrained``
    loads (the model's own config; adapters must be merged first). An earlier sharded
    checkpoint in ``folder`` (its index and ``model-*-of-*`` shards) is removed, so the
    folder holds one checkpoint; each file is written atomically. Returns ``folder``."""
    folder = need_folder(folder, "hf.save_pretrained(folder)", must_exist=False)
    config = config_of(model)
    g = analyze(model)
    if not isinstance(state, ModelState):
        raise StateError(f"hf.save_pretrained(state) must be a ModelState, got "
                         f"{type(state).__name__}", fix="pass the state of this model "
                         "(from init_fn, hf.from_pretrained or gd.merge_adapters)")
    _, conv1d = ARCHITECTURES[architecture(config)]
    arrays = state_tensors(g, state, expected_tensors(g))
    tensors = {hf: np.ascontiguousarray(arrays[f"{layer}.{param}"].T if transpose
                                        else arrays[f"{layer}.{param}"])
               for (layer, param), (hf, transpose) in key_map(g, conv1d).items()}
    os.makedirs(folder, exist_ok=True)
    with atomic_writer(os.path.join(folder, WEIGHTS), "save_pretrained", WEIGHTS) as fh:
        fh.write(encode_weights(tensors, "pt"))
    stale = [INDEX, *(f for f in os.listdir(folder) if _SHARD.fullmatch(f))]
    for name in stale:  # after the new weights, which transformers reads first anyway
        if os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    with atomic_writer(os.path.join(folder, "config.json"), "save_pretrained",
                       "config.json") as fh:
        fh.write(json.dumps(config, indent=2).encode("utf-8"))
    return folder
