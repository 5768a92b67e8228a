"""Hugging Face PEFT adapter directories (``adapter_config.json`` +
``adapter_model.safetensors``) in and out of graphdsl's DoRA / LoRA adapters.

Keys (as PEFT writes them): ``base_model.model.<layer>.lora_A.weight [r, in]`` = our
``A [in, r]`` transposed, ``.lora_B.weight [out, r]`` = ``B [r, out]`` transposed,
``.lora_magnitude_vector [out]`` = DoRA's ``magnitude``, and each ``modules_to_save``
layer's own parameters under their transformers names (``<layer>.weight``, ...). GPT-2's
Conv1D layers use the same layout (PEFT's ``fan_in_fan_out``; the DoRA norm is still per
output unit). An adapted embedding's are ``.lora_embedding_A [r, vocab]`` and
``.lora_embedding_B [dim, r]`` (no ``.weight``); beside an adapter on an embedding or
on ``lm_head`` PEFT also saves the layer's own weight as ``.base_layer.weight``, which
loading takes when present. On a tied model the output layer is untied first
(``gd.untie``) when it is a target or when it or its embedding is in
``modules_to_save``: PEFT then adapts or trains one of the two alone. Reading needs
only NumPy and safetensors.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .. import dora, lora
from ..adapters import attach_adapters, untie
from ..adapters.adapt import tied_pairs
from ..adapters.contract import is_adapter, kind_of, layer_of, owns
from ..adapters.kinds import KINDS
from ..dtypes import is_float
from ..errors import GraphDSLError, StateError
from ..graph import Graph, analyze, state_value
from ..io.archive import atomic_writer
from ..io.weights import encode_weights, read_safetensors_file
from ..models import HFFamily
from ..node import Node, caller_location
from ..state import ModelState, need_state
from .checkpoint import architecture, config_of, family, hf_key
from .peft_config import CONFIG_FILE, is_saved, is_target, read_config, short_targets, write_config

WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


# -- save -------------------------------------------------------------------------------
def save_peft(folder: str, adapted: Node, state: ModelState) -> str:
    """Write a PEFT adapter folder, which ``peft.PeftModel.from_pretrained`` loads.

    ``adapter_config.json`` and ``adapter_model.safetensors`` (keys
    ``base_model.model.<hf path>.lora_A.weight [r, in]``, ``.lora_B.weight [out, r]``,
    ``.lora_magnitude_vector [out]``) for a model adapted with ``dora.adapt`` /
    ``lora.adapt`` (built by graphdsl.models or graphdsl.hf), plus every trainable
    non-adapter layer (``modules_to_save``).

    Args:
        folder: the folder (created if missing).
        adapted: the adapted model.
        state: its complete state.

    Returns:
        (str): ``folder``.

    Raises:
        GraphDSLError: no adapters, or adapters that do not share one op, rank, alpha,
            rslora and dropout (a PEFT config holds one of each), or a DoRA ``eps``.
        StateError: ``state`` does not fit ``adapted``.

    Examples:
        >>> from graphdsl import hf, models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> from graphdsl import lora
        >>> adapted = lora.adapt(model, ["q_proj", "v_proj"], rank=2)
        >>> state = gd.build(adapted)[0]({"input_ids": np.zeros((1, 4), np.int64)}, state)
        >>> hf.save_peft("adapter", adapted, state)
        'adapter'
    """
    where = caller_location()
    need_state(state, "save_peft needs", "pass the state of the adapted model", where)
    g = analyze(adapted)
    fam = family(architecture(config_of(adapted)))
    adapters = [n for n in g.order if is_adapter(n)]
    if not adapters:
        raise GraphDSLError("save_peft: the model has no dora or lora layer", where=where,
                            fix="adapt it first (dora.adapt / lora.adapt)")
    first = adapters[0]
    tensors: dict[str, np.ndarray] = {}
    for n in adapters:
        _check_peft_compatible(g, n, first)
        for spec in n.params:
            keys = kind_of(n).peft_keys
            if owns(n, spec) and spec.name in keys:
                suffix, transpose = keys[spec.name]
                arr = np.asarray(state_value(g, n, spec, state.data))
                tensors[f"{PREFIX}{n.attrs['base']}.{suffix}"] = arr.T if transpose else arr
        if n.op == "dora" and n.attrs["eps"] is not None:
            _check_eps(g, n, state)
    saved = _saved_layers(g)
    for node in saved:
        layer = g.name(node)
        for spec in node.params:
            if spec.kind == "param":
                key, transpose = hf_key(node.op, layer, spec.name, fam)
                arr = np.asarray(state_value(g, node, spec, state.data))
                tensors[PREFIX + key] = arr.T if transpose else arr
    a = first.attrs
    layers = [g.name(n) for n in g.order if n.params]
    config = write_config({
        "task_type": fam.task, "r": a["rank"], "lora_alpha": a["alpha"],
        "lora_dropout": a["dropout"], "use_rslora": a["rslora"],
        "use_dora": first.op == "dora", "fan_in_fan_out": fam.conv1d,
        "target_modules": short_targets([n.attrs["base"] for n in adapters], layers),
        "modules_to_save": [g.name(n) for n in saved] or None})
    _write(folder, tensors, config)
    return folder


def _saved_layers(g: Graph) -> list[Node]:
    """The trainable non-adapter layers (``modules_to_save`` of ``adapt``)."""
    out = [n for n in g.order if n.params and not is_adapter(n) and not n.frozen]
    for n in out:
        tied = [s.owner for s in n.params if s.owner is not None]
        if tied:
            raise GraphDSLError(
                f"save_peft: {g.name(n)!r} is trainable (modules_to_save) but its weights "
                f"belong to {tied[0]!r} (tied); PEFT saves a module's own weights",
                layer=g.name(n), op=n.op, where=n.where,
                fix="untie the weights first (gd.untie), then adapt")
    return out


def _check_peft_compatible(g: Graph, n: Node, first: Node) -> None:
    name = g.name(n)
    if n.attrs["base"] is None:
        raise GraphDSLError(f"save_peft: {name!r} is a standalone adapter (it owns its "
                            "base_weight); PEFT adapts layers of the transformers model",
                            layer=name, op=n.op, where=n.where,
                            fix="adapt the model's dense layers with dora.adapt/lora.adapt")
    if kind_of(n).peft_keys is None:
        raise GraphDSLError(f"save_peft: {name!r} adapts a {layer_of(n)} layer; graphdsl "
                            "writes PEFT files for adapters on Linear/Conv1D and Embedding "
                            "layers only", layer=name, op=n.op, where=n.where,
                            fix="save this adapter with gd.save_adapters, or adapt only the "
                                "dense and embedding layers for PEFT")
    diff = [k for k in ("rank", "alpha", "rslora", "dropout")
            if n.op != first.op or n.attrs[k] != first.attrs[k]]
    if diff:  # a different op differs in every field
        raise GraphDSLError(
            f"save_peft: {name!r} ({n.op}, rank={n.attrs['rank']}, alpha="
            f"{n.attrs['alpha']}) differs from {g.name(first)!r} ({first.op}, rank="
            f"{first.attrs['rank']}, alpha={first.attrs['alpha']}) in "
            f"{diff}; a PEFT adapter file has one op and one of each",
            layer=name, op=n.op, where=n.where,
            fix="adapt every layer with the same options, or save them as separate "
                "adapters")


def _check_eps(g: Graph, n: Node, state: ModelState) -> None:
    """PEFT divides by the DoRA column norm unclamped: refuse a layer whose ``eps``
    clamp is active, since PEFT would compute something else."""
    p = {s.name: np.asarray(state_value(g, n, s, state.data), np.float64)
         for s in n.params if s.kind == "param"}
    K = p.get("kernel", p.get("base_weight"))
    W = K + n.attrs["scale"] * (p["A"] @ p["B"])
    c = np.sqrt(np.einsum("ij,ij->j", W, W))
    low = np.flatnonzero(c < n.attrs["eps"])
    if low.size:
        raise GraphDSLError(
            f"save_peft: DoRA column norm(s) of output unit(s) {low[:10].tolist()} are "
            f"below eps={n.attrs['eps']}, so graphdsl clamps them; PEFT does not clamp and "
            "would compute a different output", layer=g.name(n), op=n.op, where=n.where,
            fix="give those units a nonzero kernel column")


def _write(folder: str, tensors: dict[str, np.ndarray], config: bytes) -> None:
    os.makedirs(folder, exist_ok=True)
    data = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_writer(os.path.join(folder, WEIGHTS_FILE), "save_peft", WEIGHTS_FILE) as fh:
        fh.write(encode_weights(data, "pt"))
    with atomic_writer(os.path.join(folder, CONFIG_FILE), "save_peft", CONFIG_FILE) as fh:
        fh.write(config)


# -- load -------------------------------------------------------------------------------
def load_peft(folder: str, model: Node, state: ModelState) -> tuple[Node, ModelState]:
    """Apply the PEFT LoRA or DoRA adapter in ``folder`` to the base ``model``.

    Applied as ``dora.adapt`` / ``lora.adapt`` would (``use_rslora``, ``lora_dropout``, any
    targets, and ``modules_to_save``, whose saved weights replace the base ones). Every key
    and shape is checked. Imports neither torch nor peft.

    Args:
        folder: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        model: the base model (from graphdsl.hf / graphdsl.models).
        state: its values (not modified).

    Returns:
        (tuple[Node, ModelState]): the adapted model and its complete state.

    Raises:
        GraphDSLError: a config field graphdsl does not implement, a target that matches
            no layer, a corrupt file.
        StateError: a missing, extra or mis-shaped tensor (named).

    Examples:
        >>> from graphdsl import hf, models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> from graphdsl import dora
        >>> adapted = dora.adapt(model, ["q_proj"], rank=2)
        >>> tuned = gd.build(adapted)[0]({"input_ids": np.zeros((1, 4), np.int64)}, state)
        >>> _ = hf.save_peft("adapter", adapted, tuned)
        >>> adapted2, state2 = hf.load_peft("adapter", model, state)
        >>> state2 == tuned
        True
    """
    where = caller_location()
    cfg = read_config(folder)
    g = analyze(model)
    if any(is_adapter(n) for n in g.order):
        raise GraphDSLError("load_peft: the model already has adapters", where=where,
                            fix="pass the base model (from graphdsl.hf.from_pretrained)")
    fam = family(architecture(config_of(model)))
    # untie each tied output layer whose embedding or itself is in modules_to_save, or
    # which is a target: PEFT then trains a copy of one, or adapts the output layer alone
    mts = cfg["modules_to_save"]
    untied = {t: e for t, e in tied_pairs(g).items()
              if is_saved(mts, t) or is_saved(mts, e) or is_target(cfg["target_modules"], t)}
    if untied:
        model, state = untie(model, state, untied)
        g = analyze(model)
    saved = _resolve_saved(folder, mts, g)
    targets = _resolve_targets(folder, cfg, g, saved)
    expect, optional = _expected_keys(cfg, g, targets, saved, fam)
    tensors = _read_weights(folder)
    expect |= {k: v for k, v in optional.items() if k in tensors}
    missing = sorted(k for k in expect if k not in tensors)
    extra = sorted(k for k in tensors if k not in expect)
    if missing or extra:
        raise StateError(f"{os.path.join(folder, WEIGHTS_FILE)} does not fit "
                         f"{CONFIG_FILE} and the model: missing {missing[:10]}, "
                         f"unexpected {extra[:10]}", where=where,
                         fix="check that the adapter was trained on this model and that "
                             "its config and weights belong together")
    data: dict[str, dict[str, np.ndarray]] = {}
    for key, (layer, param, shape, transpose) in expect.items():
        arr = np.asarray(tensors[key])
        if tuple(arr.shape) != shape:
            raise StateError(f"{os.path.join(folder, WEIGHTS_FILE)}: {key} has shape "
                             f"{tuple(arr.shape)}, the model with r={cfg['r']} needs {shape}",
                             layer=layer, where=where,
                             fix="check that the adapter belongs to this model and config")
        arr = arr.T if transpose else arr
        # adapters in float32 (PEFT's autocast_adapter_dtype); a layer's own weights
        # (modules_to_save, base_layer) in the dtype its base value has, as PEFT loads them
        held = state.data.get(layer, {}).get(param)
        dt = held.dtype if held is not None and is_float(held.dtype) else np.float32
        data.setdefault(layer, {})[param] = arr.astype(dt, copy=False)
        if key.endswith(".base_layer.weight") and layer in untied:
            # PEFT loads it into the weight the output layer shares with the embedding
            data.setdefault(untied[layer], {})["kernel"] = data[layer][param].T
    make = dora if cfg["use_dora"] else lora
    adapted = make.adapt(model, targets, cfg["r"], cfg["lora_alpha"],
                         dropout=cfg["lora_dropout"], rslora=cfg["use_rslora"],
                         modules_to_save=saved or None)
    return adapted, attach_adapters(adapted, state, ModelState(data))


def _resolve_saved(folder: str, entries: list[str] | None, g: Graph) -> list[str]:
    layers = [g.name(n) for n in g.order if n.params]
    out = []
    for m in entries or ():
        hits = [lay for lay in layers if is_saved([m], lay)]
        if not hits:
            raise GraphDSLError(f"{os.path.join(folder, CONFIG_FILE)}: modules_to_save "
                                f"entry {m!r} matches no layer with parameters",
                                fix=f"layers with parameters: {layers}")
        out += [h for h in hits if h not in out]
    return out


def _resolve_targets(folder: str, cfg: dict[str, Any], g: Graph, saved: list[str]
                     ) -> list[str]:
    """The full names of the layers PEFT adapted, in graph order."""
    tm = cfg["target_modules"]
    layers = {g.name(n): n for n in g.order if n.params}
    excluded = {lay for lay in layers for m in saved
                if re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", lay)}
    entries = [tm] if isinstance(tm, str) else tm
    for entry in entries:
        if not any(is_target(entry if isinstance(tm, str) else [entry], lay)
                   for lay in layers):
            raise GraphDSLError(f"{os.path.join(folder, CONFIG_FILE)}: target_modules "
                                f"entry {entry!r} matches no layer of this model",
                                fix=f"layers with parameters: {sorted(layers)}")
    out = [lay for lay in layers if is_target(tm, lay) and lay not in excluded]
    for lay in out:
        kind = KINDS.get(layers[lay].op)
        if kind is None or kind.peft_keys is None:  # PEFT files carry no adapter of it
            raise GraphDSLError(f"{os.path.join(folder, CONFIG_FILE)}: target_modules "
                                f"{tm!r} adapts {lay!r}, a {layers[lay].op} layer; graphdsl "
                                "reads adapters on Linear / Conv1D and Embedding layers only",
                                layer=lay, op=layers[lay].op,
                                fix="use an adapter that targets only linear and embedding "
                                    "layers")
    if not out:
        raise GraphDSLError(f"{os.path.join(folder, CONFIG_FILE)}: target_modules {tm!r} "
                            "select no layer (all are in modules_to_save)",
                            fix="check target_modules")
    return out


def _expected_keys(cfg: dict[str, Any], g: Graph, targets: list[str], saved: list[str],
                   fam: HFFamily) -> tuple[dict, dict]:
    """``(required, optional)``, each ``{file key: (layer, param, shape in the file,
    transposed)}``; optional: the base layer's weights PEFT saves beside the adapter of
    an embedding or output layer (``base_layer.weight``; it may have been resized or
    trained), taken when the file has it, as PEFT does."""
    r, op = cfg["r"], "dora" if cfg["use_dora"] else "lora"
    op_of = {g.name(n): n.op for n in g.order}
    out, optional = {}, {}
    for t in targets:
        n_in, n_out = g.params[(t, "kernel")].shape  # an embedding's: [vocab, dim]
        shapes = {"A": (r, n_in), "B": (n_out, r), "magnitude": (n_out,)}
        for param, (suffix, transpose) in KINDS[op_of[t]].peft_keys.items():
            if param != "magnitude" or op == "dora":
                out[f"{PREFIX}{t}.{suffix}"] = (f"{t}_{op}", param, shapes[param], transpose)
    kept = set(saved)
    wanted = kept | set(targets)
    for (layer, param), spec in g.params.items():  # the weights a layer holds itself
        if spec.kind != "param" or layer not in wanted:
            continue
        key, transpose = hf_key(op_of[layer], layer, param, fam)
        shape = tuple(spec.shape)
        value = (layer, param, shape[::-1] if transpose else shape, transpose)
        if layer in kept:
            out[PREFIX + key] = value
        else:  # PEFT saves embed_tokens'/lm_head's base layer beside their adapters
            head, _, last = key.rpartition(".")
            optional[f"{PREFIX}{head}.base_layer.{last}"] = value
    return out, optional


def _read_weights(folder: str) -> dict[str, np.ndarray]:
    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path):
        bin_ = os.path.isfile(os.path.join(folder, "adapter_model.bin"))
        raise GraphDSLError(f"{folder} has no {WEIGHTS_FILE}" + (
            " (only adapter_model.bin, a pickle graphdsl does not read)" if bin_ else ""),
                            fix="save the adapter with safe_serialization=True (the "
                                "default)")
    return read_safetensors_file(path)
