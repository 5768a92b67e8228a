"""Graph-wide adapters: ``adapt`` (PEFT's ``get_peft_model``), ``merge_adapters``
(``merge_and_unload``), and adapter-only state extraction / re-attachment."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..dtypes import HALF, is_float
from ..errors import GraphDSLError, OptionError, RuleError, StateError, fmt_shape
from ..graph import Graph, analyze, state_value
from ..node import Node, caller_location, make_node, rebuild
from ..state import ModelState, need_state
from ..state_init import init_state
from ..transforms import rewrite_nodes
from .contract import (
    ADAPTABLE,
    base_kernel,
    base_options,
    is_adapter,
    merged_kernel,
    owns,
    wrap_options,
)

Targets = str | Iterable[str] | Callable[[Node], bool]


def adapt(op: str, model: Node, targets: Targets, opts: dict[str, Any],
          modules_to_save: str | Iterable[str] | None = None, where: str | None = None
          ) -> Node:
    """Rewrite every dense, conv or embedding layer matched by ``targets`` into ``op``
    wrapping it (named ``"{layer}_{op}"``); freeze every other layer's parameters except
    ``modules_to_save`` (state entries such as batch_norm's running statistics are never
    trainable, so freezing leaves them alone)."""
    where = where or caller_location()
    g = analyze(model)
    dense = [g.name(n) for n in g.order if n.op in ADAPTABLE]  # what an adapter can wrap
    match = _matcher(op, targets, g, dense, where)
    saved = _modules_to_save(op, modules_to_save, g, where)
    taken = set(g.names.values())
    adapted: list[str] = []

    def rule(inputs: list[Node], n: Node) -> Node:  # n carries its resolved name
        if n.op in ADAPTABLE and match(n):
            if n.name in saved:
                raise GraphDSLError(
                    f"layer {n.name!r} is both a target and in modules_to_save",
                    layer=n.name, op="dense", where=where,
                    fix="a targeted layer's kernel stays frozen under its adapter; "
                        "remove it from targets or from modules_to_save")
            new_name = f"{n.name}_{op}"
            if new_name in taken:
                raise GraphDSLError(
                    f"cannot name the adapter of {n.name!r} {new_name!r}: the model "
                    "already has a layer of that name", layer=new_name, op=op,
                    where=where, fix=f"rename that layer, or leave {n.name!r} out of "
                                     "targets")
            adapted.append(n.name)
            return make_node(op, [inputs[0]], wrap_options(n, opts), new_name, where=n.where,
                             policy=n.policy)  # a mixed-precision policy carries over
        if n.params and not is_adapter(n):
            return rebuild(n, inputs, frozen=n.name not in saved)
        return n

    adapted_model = rewrite_nodes(model, lambda n: rule, keep_names=True)
    if not adapted:
        shown = getattr(targets, "__name__", None) or repr(targets)  # a predicate by name
        raise GraphDSLError(
            f"{op}.adapt: targets={shown} match no adaptable layer", where=where,
            fix=f"adaptable (dense, conv, embedding) layers in this model: {dense}" if dense
                else "this model has no dense, conv or embedding layer to adapt")
    return adapted_model


def _matcher(op: str, targets: Any, g: Graph, dense: list[str], where: str
             ) -> Callable[[Node], bool]:
    if isinstance(targets, Iterable) and not isinstance(targets, (str, re.Pattern)):
        by_name = {g.name(n): n for n in g.order}
        for t in targets:
            n = by_name.get(t) if isinstance(t, str) else None
            if n is not None and n.op not in ADAPTABLE:
                raise GraphDSLError(
                    f"{op}.adapt: target {t!r} is a {n.op} layer, not dense, conv "
                    "or embedding", layer=t, op=n.op, where=n.where,
                    fix="untie it first (gd.untie(model, state)): it becomes a dense layer"
                        if n.op == "tied_dense" else
                        f"adapters wrap dense, conv and embedding layers; those in this "
                        f"model: {dense}")
    return match_targets(targets, g, dense, f"{op}.adapt", where, "adaptable layer")


def match_targets(targets: Any, g: Graph, candidates: list[str], what: str, where: str,
                  noun: str = "layer") -> Callable[[Node], bool]:
    """The predicate on a node (resolved name) that ``targets`` selects, as ``adapt``
    takes them: a regex (full match on the name), a list of names (PEFT's rule: a name
    matches itself and every layer ending in ``.name``; each must match one of
    ``candidates``) or a predicate on a node. ``what`` names the caller in errors."""
    if isinstance(targets, re.Pattern):
        return lambda n: targets.fullmatch(n.name) is not None
    if isinstance(targets, str):
        try:
            rx = re.compile(targets)
        except re.error as e:
            raise OptionError(f"{what}: targets {targets!r} is not a valid regex: "
                              f"{e}", where=where,
                              fix="pass a regex (full match on the layer name), a list "
                                  "of names or a predicate on a node") from None
        return lambda n: rx.fullmatch(n.name) is not None
    if callable(targets):
        def pred(n: Node) -> bool:
            try:
                return bool(targets(n))
            except GraphDSLError:
                raise
            except Exception as e:
                raise GraphDSLError(
                    f"the targets predicate failed on layer {n.name!r}: "
                    f"{type(e).__name__}: {e}", layer=n.name, op=n.op, where=where,
                    fix="the predicate receives a node (n.name, n.op, n.attrs, n.shape) "
                        "and returns True to select it") from None
        return pred
    if isinstance(targets, Iterable):
        names = list(targets)
        if not all(isinstance(t, str) for t in names):
            raise OptionError(f"{what}: targets must be names (str), got {names!r}",
                              where=where, fix=f"layers in this model: {candidates}")
        for t in names:
            if not any(_list_match(t, d) for d in candidates):
                raise GraphDSLError(f"{what}: target {t!r} matches no {noun} of "
                                    "this model (a name matches itself and every layer "
                                    f"ending in '.{t}')", where=where,
                                    fix=f"{noun}s in this model: {candidates}" + (
                                        "; a gd.block's body layers are not " + (
                                            noun.split()[0] if " " in noun else "selectable")
                                        if g.blocks else ""))
        return lambda n: any(_list_match(t, n.name) for t in names)
    raise OptionError(f"{what}: targets must be a regex, a list of names or a "
                      f"predicate, got {type(targets).__name__}", where=where,
                      fix=f"e.g. targets=r'attn_.*'; layers: {candidates}")


def _list_match(entry: str, name: str) -> bool:
    """PEFT's target_modules rule for a list entry: the layer named exactly ``entry``,
    or any layer whose name ends in ``"." + entry`` (``"q_proj"`` adapts every block)."""
    return name == entry or name.endswith("." + entry)


def _modules_to_save(op: str, modules: Any, g: Graph, where: str) -> set[str]:
    if modules is None:
        return set()
    names = [modules] if isinstance(modules, str) else list(modules)
    with_params = [g.name(n) for n in g.order if n.params]
    ties = tied_pairs(g)
    for m in names:
        if m not in with_params:
            raise GraphDSLError(
                f"{op}.adapt: modules_to_save names {m!r}, which is not a layer with "
                "parameters in this model", where=where,
                fix=f"layers with parameters: {with_params}")
        pair = next(((t, e) for t, e in ties.items() if m in (t, e)), None)
        if pair:
            raise GraphDSLError(
                f"{op}.adapt: modules_to_save names {m!r}, and {pair[0]!r} shares its "
                f"kernel with embedding {pair[1]!r} (tied); PEFT trains an untied copy of "
                f"{m!r} and leaves the other layer as it was", layer=m, where=where,
                fix="untie them first: model, state = gd.untie(model, state), then adapt")
    return set(names)


def tied_pairs(g: Graph) -> dict[str, str]:
    """``{tied_dense layer: the embedding whose kernel it reads}``."""
    return {g.name(n): n.attrs["embedding"] for n in g.order if n.op == "tied_dense"}


def untie(model: Node, state: ModelState, layers: Iterable[str] | None = None
          ) -> tuple[Node, ModelState]:
    """Give each ``tied_dense`` layer its own copy of the embedding's kernel.

    Each becomes a dense layer of the same name whose ``kernel [dim, vocab]`` is ``E.T``
    (bias kept, frozen flags as the embedding's), as transformers'
    ``tie_word_embeddings=False``. Outputs are unchanged; training, adapting or merging one
    layer then leaves the other alone. A Hugging Face config carried by the model records
    ``tie_word_embeddings: false``.

    Args:
        model: the model.
        state: its state (not modified).
        layers: names of ``tied_dense`` layers, or of embeddings they read; None for all.

    Returns:
        (tuple[Node, ModelState]): the untied model and state.

    Raises:
        StateError: ``state`` lacks the embedding's kernel.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 3), dtype="int64")
        >>> emb = gd.embedding(ids, 10, 4, name="wte")
        >>> model = gd.tied_dense(emb, emb, name="lm_head")
        >>> state = gd.build(model)[0](np.zeros((1, 3), np.int64))
        >>> untied, s2 = gd.untie(model, state)
        >>> s2.data["lm_head"]["kernel"].shape
        (4, 10)
    """
    where = caller_location()
    need_state(state, "untie needs", "pass the model's state", where)
    g = analyze(model)
    pick = None if layers is None else set(layers)
    todo = {t: e for t, e in tied_pairs(g).items()
            if pick is None or t in pick or e in pick}
    if not todo:
        return model, state
    out = state.copy()
    for n in g.order:
        name = g.name(n)
        if name in todo:
            E = state_value(g, n, n.params[0], state.data)
            out.data.setdefault(name, {})["kernel"] = np.ascontiguousarray(np.asarray(E).T)
            if (todo[name], "kernel") in state.frozen:
                out.frozen.add((name, "kernel"))
    untied = rewrite_nodes(model, lambda n: _untied_config if _has_hf_config(n) else
                           _untied_dense if g.name(n) in todo else None, keep_names=True)
    return untied, out


def _has_hf_config(n: Node) -> bool:
    """Whether input node ``n`` carries a Hugging Face config in its ``meta``."""
    meta = n.attrs.get("meta") if n.op == "input" else None
    return isinstance(meta, Mapping) and isinstance(meta.get("hf_config"), Mapping)


def _untied_config(inputs: list[Node], n: Node) -> Node:
    """Input ``n`` recording ``tie_word_embeddings: false`` in its config."""
    meta = n.attrs["meta"]
    config = dict(meta["hf_config"], tie_word_embeddings=False)
    return rebuild(n, inputs, attrs=dict(n.attrs, meta=dict(meta, hf_config=config)))


def _untied_dense(inputs: list[Node], n: Node) -> Node:
    """The dense layer of tied_dense ``n``'s name that reads its own kernel."""
    a = n.attrs
    return make_node("dense", inputs, {
        "units": a["vocab_size"], "use_bias": a["use_bias"],
        "kernel_initializer": a["kernel_initializer"]}, n.name, frozen=n.frozen,
        where=n.where)


# -- merge ------------------------------------------------------------------------------
def _merged_kernel(n: Node, p: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """The dense kernel ``[in, out]`` equal to adapter node ``n`` with parameters ``p``
    (computed in the weights' own dtype, as the NumPy backend's cached merged kernel is, so
    that the zero-norm rule sees the rounding of the stored weights; the columns that
    cancel are summed in float64 there), returned in the base kernel's dtype."""
    K = base_kernel(p)
    half = {k: v.astype(np.float32) for k, v in p.items() if v.dtype.name in HALF}
    try:  # a half-precision base is merged in float32 (NumPy has no half matmul path)
        W = merged_kernel(n.op, {**p, **half}, n.attrs)
    except RuleError as e:
        raise e.cls(e.what, layer=layer, op=n.op, where=n.where, fix=e.fix) from None
    return W.astype(K.dtype if is_float(K.dtype) else np.float32)


def merge_adapters(model: Node, state: ModelState) -> tuple[Node, ModelState]:
    """Fold every dora/lora layer into a plain layer of the kind it adapts (dense, conv, embedding).

    ``K' = (K + s*A@B) * (m/c)`` (DoRA) or ``K + s*A@B`` (LoRA) on the flat kernel
    ``[fan_in, out]``, bias unchanged (an activation node after it stays). A wrapped layer
    becomes a layer named like the one it wrapped; a standalone adapter keeps its own name.
    A ``tied_dense`` layer reading a merged embedding is first untied (``untie``). The
    merged model comes out with every parameter frozen (the adapted model's flags);
    ``merged_state.unfreeze()`` makes them trainable again.

    Args:
        model: the adapted model.
        state: its complete state (not modified).

    Returns:
        (tuple[Node, ModelState]): the merged model and state; outputs equal the adapted
        model's.

    Raises:
        StateError: ``state`` does not fit ``model``.
        GraphDSLError: a zero-norm DoRA column without ``eps``.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 4))
        >>> base = gd.dense(x, 4, name="attn")
        >>> base_state = gd.build(base)[0](np.zeros((1, 4), np.float32))
        >>> model = dora.adapt(base, ["attn"], rank=2)
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32), base_state)
        >>> merged, merged_state = gd.merge_adapters(model, state)
        >>> gd.get_op_counts(merged).get("dora", 0), sorted(merged_state.data)
        (0, ['attn'])
    """
    where = caller_location()
    need_state(state, "merge_adapters needs", "pass the state returned by init_fn / training",
               where)
    g = analyze(model)
    adapters = [n for n in g.order if is_adapter(n)]
    if not adapters:
        raise GraphDSLError("merge_adapters: the model has no dora or lora layer", where=where,
                            fix="adapt it first (dora.adapt / lora.adapt / dora.wrap)")
    bases = [n.attrs["base"] for n in adapters]
    if any(e in bases for e in tied_pairs(g).values()):
        # the adapter changes the embedding lookup only; the tied output layer keeps E
        model, state = untie(model, state, bases)
        g = analyze(model)
        adapters = [n for n in g.order if is_adapter(n)]
    node_names = set(g.names.values())
    out = state.copy()
    merged_into: dict[str, str] = {}
    kept: dict[str, dict[str, np.ndarray]] = {}  # adapter -> the parameters kept under its name
    for n in adapters:
        name = g.name(n)
        a = n.attrs
        target = a["base"] or name
        if a["base"] in node_names:  # never None, a node name is a str
            raise GraphDSLError(
                f"cannot merge {name!r} into dense {target!r}: layer {target!r} is also "
                "used directly in this model (it shares the kernel)", layer=name, op=n.op,
                where=n.where, fix="merge a model where only the adapter reads that kernel")
        if target in merged_into:
            raise GraphDSLError(
                f"cannot merge {name!r}: {merged_into[target]!r} already wraps the same "
                f"dense layer {target!r}", layer=name, op=n.op, where=n.where,
                fix="give each adapter its own base layer before merging")
        merged_into[target] = name
        p = {spec.name: np.asarray(state_value(g, n, spec, state.data))
             for spec in n.params if spec.kind == "param"}
        entry = {"kernel": _merged_kernel(n, p, name)}
        if a["use_bias"]:
            entry["bias"] = p["bias"]
        if a["base"] is None:
            if (name, "base_weight") in out.frozen:
                out.frozen.add((name, "kernel"))
        else:
            out.data.pop(name, None)
        out.data[target] = entry
        kept[name] = entry if target == name else {}
        out.entries.pop(name, None)
    # an adapter's own flags go, but a standalone one's for the parameters its layer keeps
    out.frozen = {(lay, q) for lay, q in out.frozen if lay not in kept or q in kept[lay]}
    merged = rewrite_nodes(model, lambda n: _merged_layer if is_adapter(n) else None,
                           keep_names=True)
    return merged, out


def _merged_layer(inputs: list[Node], n: Node) -> Node:
    """The plain layer adapter ``n`` folds into, named like the layer it wraps (its
    ``base``) or, standalone, like ``n``; frozen, as the adapted model's weights were."""
    op, attrs = base_options(n)
    return make_node(op, [inputs[0]], attrs, n.attrs["base"] or n.name, frozen=True,
                     where=n.where, policy=n.policy)


# -- adapter-only state -------------------------------------------------------------------
def trainable_layers(g: Graph) -> list[str]:
    """The layers, other than adapters, whose parameters a trainable (not frozen) node
    reads: after ``adapt``, its ``modules_to_save``."""
    out: list[str] = []
    for n in g.order:
        if n.params and not n.frozen and not is_adapter(n):
            out += [o for o in (g.param_ref(n, s)[0] for s in n.params if s.kind == "param")
                    if o not in out]
    return out


def adapter_state(model: Node, state: ModelState, modules_to_save: Iterable[str] = ()
                  ) -> ModelState:
    """Only the adapter values of ``state``: a small state to save beside a shared base model.

    The adapter parameters (``A``, ``B``, ``magnitude``, the dropout ``key``) of every
    dora/lora layer, plus every other layer ``adapt`` left trainable (its
    ``modules_to_save``) and the layers named in ``modules_to_save``, with their frozen
    flags.

    Args:
        model: the adapted model.
        state: its complete state.
        modules_to_save: more layer names to keep whole.

    Returns:
        (ModelState): the adapter-only state (arrays shared).

    Raises:
        StateError: ``state`` lacks an adapter value.
        GraphDSLError: a ``modules_to_save`` name that is no layer.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 4))
        >>> base = gd.dense(x, 4, name="attn")
        >>> base_state = gd.build(base)[0](np.zeros((1, 4), np.float32))
        >>> model = dora.adapt(base, ["attn"], rank=2)
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32), base_state)
        >>> {k: sorted(v) for k, v in gd.adapter_state(model, state).data.items()}
        {'attn_dora': ['A', 'B', 'magnitude']}
    """
    where = caller_location()
    g = analyze(model)
    adapters = [n for n in g.order if is_adapter(n)]
    if not adapters:
        raise GraphDSLError("adapter_state: the model has no dora or lora layer", where=where,
                            fix="pass the adapted model (dora.adapt / lora.adapt / wrap)")
    data: dict[str, dict[str, np.ndarray]] = {}
    for n in adapters:
        name = g.name(n)
        for spec in n.params:
            if owns(n, spec):
                data.setdefault(name, {})[spec.name] = np.asarray(
                    state_value(g, n, spec, state.data))
    layers = {g.name(n): n for n in g.order if n.params}
    named = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
    for m in named + [m for m in trainable_layers(g) if m not in named]:
        if m not in layers:
            raise GraphDSLError(f"modules_to_save names {m!r}, which is not a layer with "
                                "parameters in this model", where=where,
                                fix=f"layers with parameters: {sorted(layers)}")
        if m not in state.data:
            raise StateError(f"the state has no values for layer {m!r}", layer=m,
                             op=layers[m].op, where=layers[m].where,
                             fix="pass the state that belongs to this model")
        data[m] = dict(state.data[m])
    frozen = {(lay, q) for lay, q in state.frozen if q in data.get(lay, ())}
    names = {lay: [q for q in v if q in data.get(lay, ())] for lay, v in state.entries.items()
             if lay in data}
    return ModelState(data, frozen, {k: v for k, v in names.items() if v})


def attach_adapters(model: Node, base_state: ModelState, adapters: ModelState,
                    seed: int = 0) -> ModelState:
    """``base_state`` plus an ``adapter_state``: a complete state for the adapted ``model``.

    Validated against ``model``. Values in ``adapters`` win over ``base_state``; frozen flags
    come from the state that supplied each value, plus every parameter the model marks
    frozen. Missing state entries (dropout keys) are created from ``seed``.

    Args:
        model: the adapted model.
        base_state: e.g. the pretrained, un-adapted model's state.
        adapters: the adapter values.
        seed: seed for missing state entries.

    Returns:
        (ModelState): the complete state.

    Raises:
        StateError: unknown entries, wrong shapes or missing parameters.

    Examples:
        >>> from graphdsl import dora
        >>> x = gd.input("x", shape=(None, 4))
        >>> base = gd.dense(x, 4, name="attn")
        >>> base_state = gd.build(base)[0](np.zeros((1, 4), np.float32))
        >>> model = dora.adapt(base, ["attn"], rank=2)
        >>> state = gd.build(model)[0](np.zeros((1, 4), np.float32), base_state)
        >>> gd.attach_adapters(model, base_state, gd.adapter_state(model, state)) == state
        True
    """
    where = caller_location()
    for what, st in (("base_state", base_state), ("adapter state", adapters)):
        need_state(st, f"attach_adapters: {what} must be",
                   "pass ModelState objects (from init_fn or adapter_state)", where)
    g = analyze(model)
    merged = base_state.copy()
    data, frozen, names = merged.data, merged.frozen, merged.entries
    for layer, params in adapters.data.items():
        for q, arr in params.items():
            data.setdefault(layer, {})[q] = arr
            frozen.discard((layer, q))
            if q in adapters.entries.get(layer, ()) and q not in names.get(layer, ()):
                names.setdefault(layer, []).append(q)
    frozen |= set(adapters.frozen)
    for layer, params in data.items():
        for q, arr in params.items():
            src = "adapter state" if q in adapters.data.get(layer, ()) else "base_state"
            spec = g.params.get((layer, q))
            if spec is None:
                known = sorted({k[0] for k in g.params})
                raise StateError(f"attach_adapters: the {src} has {layer}.{q}, which this "
                                 "model does not use", where=where,
                                 fix=f"check that the adapter was made for this model; "
                                     f"layers with parameters: {known}")
            shp = tuple(np.shape(arr))
            if shp != tuple(spec.shape):
                raise StateError(f"attach_adapters: {layer}.{q} in the {src} has shape "
                                 f"{fmt_shape(shp)}, the model needs {fmt_shape(spec.shape)}",
                                 layer=layer, where=where,
                                 shapes={"expected": spec.shape, "given": shp},
                                 fix="use an adapter made with the same rank and targets")
    missing = [f"{lay}.{q}" for (lay, q), spec in g.params.items()
               if spec.kind == "param" and q not in data.get(lay, ())]
    if missing:
        raise StateError(f"attach_adapters: no value for {missing}", where=where,
                         fix="the base state must hold every base layer and the adapter "
                             "state every adapter (save it with gd.adapter_state)")
    f64 = any(getattr(a, "dtype", None) == np.float64 for v in data.values()
              for a in v.values())
    out = init_state(g, None, merged, seed, "float64" if f64 else "float32")
    out.frozen = {(lay, q) for lay, q in out.frozen if q in out.data.get(lay, ())}
    return out
