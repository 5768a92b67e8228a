"""Hugging Face weights <-> ModelState. A Linear ``weight [out, in]`` is our ``kernel`` [in,
out] transposed, a Conv1D ``weight [in, out]`` (a family's ``HFFamily.conv1d``) is the
kernel as it is; norms' ``weight``/``bias`` are ``gamma``/``beta``; an embedding's
``weight`` is its ``kernel``. What each family calls things is its record in
``graphdsl.models.FAMILIES``; this module knows no family by name."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..dtypes import float_name, is_float, np_dtype
from ..errors import GraphDSLError, StateError
from ..graph import Graph, analyze
from ..initializers import initialize
from ..io.archive import atomic_writer
from ..io.json_text import parse_json
from ..io.weights import (
    ST_DTYPES,
    Entry,
    check_array,
    check_keys,
    encode_weights,
    expected_tensors,
    file_header,
    map_tensors,
    state_tensors,
)
from ..models import FAMILIES, HFFamily
from ..node import Node
from ..state import ModelState, need_state

#: architecture (the transformers class a checkpoint loads as) -> its family
_FAMILY = {arch: f for f in FAMILIES for arch in f.model_types.values()}
#: every class name graphdsl.hf reads -> the architecture it loads as (a base model as its
#: head model, as transformers' AutoModelFor* reads it)
_LOADS_AS = {**{a: a for a in _FAMILY},
             **{base: arch for f in FAMILIES for base, arch in f.base_models.items()}}
#: a config's ``model_type`` -> the architecture of a config that names none
_BY_TYPE = {kind: arch for f in FAMILIES for kind, arch in f.model_types.items()}
_HF_PARAM = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}
#: what a checkpoint's arrays may be: every dtype the reader decodes
_DECODED = tuple(ST_DTYPES.values())
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_HUB_FIX = ("graphdsl.hf does not download Hub ids: pass a local folder, e.g. the one "
            "huggingface_hub.snapshot_download(repo_id) returns, or one written by "
            "transformers' save_pretrained")


def architecture(config: Mapping[str, Any]) -> str:
    """The first architecture of ``config`` that graphdsl.hf knows: a listed head model, a
    listed base model (loaded as its family's head model), or, when the config lists none,
    its ``model_type``'s (else an error)."""
    archs = config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise GraphDSLError(f"config field 'architectures' is {archs!r}",
                            fix="give a list of class names, e.g. [\"LlamaForCausalLM\"]")
    known = [_LOADS_AS[a] for a in archs if a in _LOADS_AS]
    kind = config.get("model_type")
    if not archs and isinstance(kind, str) and kind in _BY_TYPE:
        known = [_BY_TYPE[kind]]
    if not known:
        raise GraphDSLError(f"unsupported architecture(s) {archs!r} (model_type {kind!r})",
                            fix=f"graphdsl.hf reads {sorted(_FAMILY)}")
    return known[0]


def family(arch: str) -> HFFamily:
    """The record of the family that builds ``arch`` (an ``architecture``)."""
    return _FAMILY[arch]


def hf_key(op: str | None, layer: str, param: str, f: HFFamily) -> tuple[str, bool]:
    """``(hf key, transpose)`` of parameter ``param`` of ``layer`` (an ``op`` layer) of a
    model of family ``f`` (whose dense layers may be Conv1D, its output head a Linear)."""
    if param not in _HF_PARAM:
        raise GraphDSLError(f"{layer}.{param} has no Hugging Face name",
                            fix="merge adapters first (gd.merge_adapters), or save them as "
                                "PEFT adapter files (graphdsl.hf.save_peft)")
    linear = not f.conv1d or layer == f.head
    return f"{layer}.{_HF_PARAM[param]}", op == "dense" and param == "kernel" and linear


def key_map(g: Graph, f: HFFamily) -> dict[tuple[str, str], tuple[str, bool]]:
    """``{(layer, param): (hf key, transpose)}`` of every parameter the model owns."""
    op_of = {g.name(n): n.op for n in g.order}
    return {(layer, param): hf_key(op_of.get(layer), layer, param, f)
            for (layer, param), spec in g.params.items() if spec.kind == "param"}


def config_of(model: Node) -> dict[str, Any]:
    """The Hugging Face config a model built by graphdsl.models / graphdsl.hf carries."""
    ids = next((n for n in analyze(model).input_nodes if n.name == "input_ids"), None)
    meta = dict(ids.attrs.get("meta") or {}) if ids is not None else {}
    if "hf_config" not in meta:
        raise GraphDSLError("the model carries no Hugging Face config",
                            fix="build it with graphdsl.models or graphdsl.hf")
    config = json.loads(json.dumps(meta["hf_config"]))
    if not config.get("architectures"):  # built from a config without them: infer it
        layers = {layer for layer, _ in analyze(model).params}
        kind = config.get("model_type") or next(
            (f.name for f in FAMILIES if f.embedding in layers), None)
        if isinstance(kind, str) and kind in _BY_TYPE:
            config["model_type"], config["architectures"] = kind, [_BY_TYPE[kind]]
    return config


def _build(f: HFFamily, config: dict[str, Any], keys: Iterable[str]) -> Node:
    """The family ``f`` graph for ``config``, with the constructor flags of the optional
    parts (``HFFamily.options``) the checkpoint's ``keys`` hold."""
    keys = set(keys)
    return f.build(config, **{flag: True for key, flag in f.options.items() if key in keys})


def renamed(keys: Iterable[str], f: HFFamily) -> dict[str, str]:
    """``{our hf key: checkpoint key}`` of the weights: transformers reads a checkpoint with
    or without the base model's prefix (``HFFamily.base_model_prefix``: added to the
    keys where our names carry it, else dropped), decided for the whole checkpoint as
    transformers does. The family's buffers (``HFFamily.ignored``) are left out."""
    prefix, keys = f.base_model_prefix, list(keys)
    if f.prefixed and not any(k.startswith(prefix) for k in keys):
        names = {(k if f.head and k.startswith(f.head + ".") else prefix + k): k for k in keys}
    elif not f.prefixed and any(k.startswith(prefix) for k in keys):
        names = {k.removeprefix(prefix): k for k in keys}
    else:
        names = {k: k for k in keys}
    return {k: old for k, old in names.items() if not any(re.search(p, k) for p in f.ignored)}


def _pair(key: str) -> tuple[str, str]:
    layer, _, param = key.rpartition(".")
    return layer, param


def state_from_tensors(model: Node, tensors: Mapping[str, np.ndarray], f: HFFamily,
                       source: str, dtype: Any = None) -> ModelState:
    """The model's ModelState from the Hugging Face tensors ``{key: array}`` of a family
    ``f`` model: every key and shape is checked with io.weights' checks (a missing or
    extra key, a wrong shape is a StateError naming it); the weight of a head tied to
    the embedding may be there. Floating tensors keep their dtype (float16, bfloat16,
    float32: no copy of a mapped file), or are cast to ``dtype`` when given; integer ones
    become float32. Dropout RNG keys (state entries, not weights) are created from seed
    0."""
    target = None if dtype is None else _float_dtype(dtype)
    g = analyze(model)
    keys = key_map(g, f)
    shapes = {k: tuple(g.params[k].shape) for k in keys}
    want = {_pair(hf): (shapes[k][::-1] if t else shapes[k], _DECODED)
            for k, (hf, t) in keys.items()}
    tied = (f.head, "weight")
    have = {_pair(k): a for k, a in tensors.items() if _pair(k) != tied or tied in want}
    fix = "check that config.json and the weights belong together"
    check_keys(have, want, source, StateError, fix, fix)
    for k in want:
        check_array(k, have[k].shape, have[k].dtype.name, want, source, StateError)
    data: dict[str, dict[str, np.ndarray]] = {}
    entries: dict[str, list[str]] = {}
    for (layer, param), spec in g.params.items():
        if spec.kind == "state":  # a dropout layer's RNG key: in no checkpoint, so seed 0
            data.setdefault(layer, {})[param] = initialize(
                spec.initializer, spec.shape, spec.dtype or "float32", 0, layer, param)
            entries.setdefault(layer, []).append(param)
            continue
        hf, transpose = keys[(layer, param)]
        arr = have[_pair(hf)]
        arr = arr.T if transpose else arr
        if target is not None or not is_float(arr.dtype):
            arr = arr.astype(np.float32 if target is None else target, copy=False)
        data.setdefault(layer, {})[param] = arr
    return ModelState(data, (), entries)


def _float_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a floating ``dtype=`` argument; anything else is an error."""
    if float_name(dtype) is None:
        raise GraphDSLError(f"dtype={dtype!r} is not a floating dtype",
                            fix="pass None (keep the checkpoint's), 'bfloat16', 'float16', "
                                "'float32' or 'float64'")
    return np_dtype(dtype)


def _numpy_of(t: Any) -> np.ndarray:
    """A CPU tensor as NumPy, its dtype kept (bfloat16 as ``ml_dtypes.bfloat16``, through
    its bits)."""
    if str(t.dtype) == "torch.bfloat16":
        import torch
        return t.view(torch.int16).numpy().view(np_dtype("bfloat16"))
    return t.numpy()


def from_transformers(hf_model: Any) -> tuple[Node, ModelState]:
    """``(model, state)`` from a live transformers model (config and weights, copied).

    Args:
        hf_model: a ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
            ``GPT2LMHeadModel`` or ``BertModel`` (any dtype).

    Returns:
        (tuple[Node, ModelState]): as ``from_pretrained`` gives them.

    Raises:
        GraphDSLError: an unsupported architecture or config field.
        StateError: weights that do not fit the config.

    Examples:
        >>> import transformers
        >>> from graphdsl import hf
        >>> cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1,
        ...                               n_head=2, bos_token_id=0, eos_token_id=0)
        >>> model, state = hf.from_transformers(transformers.GPT2LMHeadModel(cfg))
        >>> gd.get_output_shape(model, {"input_ids": (1, 5)})
        (1, 5, 40)
    """
    if not (hasattr(hf_model, "state_dict") and hasattr(getattr(hf_model, "config", None),
                                                        "to_json_string")):
        raise GraphDSLError(
            f"hf.from_transformers(hf_model) needs a transformers model, got "
            f"{type(hf_model).__name__}",
            fix="pass a PreTrainedModel (e.g. AutoModelForCausalLM.from_config(config)); "
                "for a config alone, build the graph with graphdsl.models (models.llama(config))")
    config = json.loads(hf_model.config.to_json_string(use_diff=False))
    config["architectures"] = [type(hf_model).__name__]
    f = family(architecture(config))
    sd = hf_model.state_dict()
    names = renamed(sd, f)
    model = _build(f, config, names)
    tensors = {k: _numpy_of(sd[old].detach().cpu()) for k, old in names.items()}
    return model, state_from_tensors(model, tensors, f, type(hf_model).__name__)


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
    """``{key: (file path, (dtype, shape, begin, end))}`` of the checkpoint's tensors
    (offsets from the file's start), from headers only. As in transformers,
    ``model.safetensors`` wins over ``model.safetensors.index.json``, which maps each key
    to its shard."""
    def header(name: str) -> dict[str, tuple[str, Entry]]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise GraphDSLError(f"{folder}/{INDEX} names {name}, which is not in the folder",
                                fix="copy the missing shard there, or save the model again")
        return {k: (path, e) for k, e in file_header(path).items()}

    if os.path.isfile(os.path.join(folder, WEIGHTS)):
        return header(WEIGHTS)
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
        out[key] = shards[f][key]
    return out


def _check_sizes(config: Mapping[str, Any], f: HFFamily,
                 keys: Mapping[str, tuple[str, Entry]], folder: str) -> None:
    """Before anything is built: the config's block count and embedding size must be the
    checkpoint's (a config.json asking for 10**8 blocks fails here, at once)."""
    blocks, embed = f.blocks, f"{f.embedding}.weight"
    found = [int(m.group(1)) for k in keys if (m := re.match(re.escape(blocks) + r"(\d+)\.", k))]
    held = [(f.block_count, max(found, default=-1) + 1, f"{len(set(found))} block(s) {blocks}N")]
    if embed in keys:
        shape = keys[embed][1][1]
        held += [(field, shape[axis], f"{embed} of shape {list(shape)}")
                 for axis, field in enumerate(f.embedding_fields) if axis < len(shape)]
    for field, want, what in held:
        v = config.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and v != want:
            raise GraphDSLError(f"{folder}/config.json: {field} is {v}, but the checkpoint "
                                f"holds {what}", fix=f"set {field} to {want} in config.json, "
                                "or put the config and the weights that belong together in "
                                "one folder")


def from_pretrained(folder: str, dtype: Any = None) -> tuple[Node, ModelState]:
    """``(model, state)`` from a local ``save_pretrained`` folder.

    Families: LLaMA, Mistral, Qwen2, GPT-2, BERT.

    Reads ``config.json`` and ``model.safetensors`` (or the shards
    ``model.safetensors.index.json`` names), with or without the base model's key prefix.
    Imports neither torch, transformers nor safetensors; the config is checked against the
    weights' headers before the graph is built. Layer names are the Hugging Face module
    paths, parameters in Axon layout (``kernel [in, out]``: Linear weights transposed).

    Args:
        folder: a local folder (a Hub id is not downloaded).
        dtype: None keeps the checkpoint's dtype (bfloat16 needs ml_dtypes, the ``half``
            extra), the values read-only maps of the files (zero-copy: the state costs about
            the files' size); ``"float32"`` (etc.) widens or narrows them into new arrays.

    Returns:
        (tuple[Node, ModelState]): the model (inputs ``input_ids`` int64 ``[batch, seq]`` and
        the optional ``attention_mask``, ``position_ids``, ``token_type_ids``) and its values.

    Raises:
        GraphDSLError: no folder, no config or weights, an unsupported architecture or
            config field, a config that disagrees with the weights, a bad ``dtype``.
        StateError: a missing, extra or mis-shaped tensor (named).

    Examples:
        >>> from graphdsl import hf, models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> hf.save_pretrained("tiny-llama", model, state)
        'tiny-llama'
        >>> model2, state2 = hf.from_pretrained("tiny-llama")
        >>> state2 == state, state2.data["model.layers.0.self_attn.q_proj"]["kernel"].shape
        (True, (16, 16))
    """
    target = None if dtype is None else _float_dtype(dtype)
    folder = need_folder(folder, "hf.from_pretrained(folder)")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise GraphDSLError(f"{folder} has no config.json", fix=_HUB_FIX)
    config = read_json_file(path, "a Hugging Face config (a JSON object)")
    f = family(architecture(config))
    entries = _headers(folder)
    entries = {k: entries[old] for k, old in renamed(entries, f).items()}
    _check_sizes(config, f, entries, folder)
    model = _build(f, config, entries)
    widen = target is not None and target.name != "bfloat16"  # no ml_dtypes needed then
    return model, state_from_tensors(model, map_tensors(entries, widen), f, folder, target)


def save_pretrained(folder: str, model: Node, state: ModelState) -> str:
    """Write ``config.json`` and ``model.safetensors``, which transformers can load.

    The config is the model's own (models from ``graphdsl.models``/``graphdsl.hf`` carry
    it); adapters must be merged first (``graphdsl.merge_adapters``). An earlier sharded
    checkpoint in ``folder`` (its index and ``model-*-of-*`` shards) is removed, so the
    folder holds one checkpoint; each file is written atomically. Needs safetensors (the
    ``io`` extra).

    Args:
        folder: the folder (created if missing).
        model: a model carrying a Hugging Face config.
        state: its values (dtypes kept).

    Returns:
        (str): ``folder``.

    Raises:
        GraphDSLError: the model carries no Hugging Face config, holds unmerged adapters or
            a layer with no Hugging Face name.
        StateError: ``state`` does not fit ``model``.

    Examples:
        >>> from graphdsl import hf, models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> hf.save_pretrained("ckpt", model, state)
        'ckpt'
        >>> import os; sorted(os.listdir("ckpt"))
        ['config.json', 'model.safetensors']
    """
    folder = need_folder(folder, "hf.save_pretrained(folder)", must_exist=False)
    config = config_of(model)
    g = analyze(model)
    need_state(state, "hf.save_pretrained(state) must be", "pass the state of this model "
               "(from init_fn, hf.from_pretrained or gd.merge_adapters)")
    fam = family(architecture(config))
    arrays = state_tensors(g, state, expected_tensors(g))
    tensors = {hf: np.ascontiguousarray(arrays[f"{layer}.{param}"].T if transpose
                                        else arrays[f"{layer}.{param}"])
               for (layer, param), (hf, transpose) in key_map(g, fam).items()}
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
