"""Text generation with a key/value cache: the decode step of a causal LM as a graph
(``decoder``) and the loop that drives it (``generate``, transformers' meanings).

The decoder is the model's own graph with each attention's keys and values prefixed by the
cache (one ``cache_append`` on the cache axis, which on NumPy
writes a step's new entries into a buffer that grows geometrically, so no step copies the
cache): same layers, names and parameters, so the model's ModelState runs it, adapted
(DoRA/LoRA) and merged models included. Its inputs are ``input_ids [batch, seq]``,
``attention_mask [batch, past + seq]``, ``position_ids [batch, seq]`` and, per attention
layer ``i``, ``past_key_values_{i}_key`` / ``past_key_values_{i}_value`` ``[batch, kv_heads,
past, head_dim]`` (input names are identifiers: optimum's ``past_key_values.{i}.key`` with
``_`` for the dots, see ``optimum_name``); its outputs ``{"logits": [batch, seq, vocab],
"present.{i}.key": ..., "present.{i}.value": ...}``, each present the past and the new
keys/values (keys after the rotary embedding, kv heads not repeated). Prefill is the same
graph over the prompt with an empty past (``past`` = 0)."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GraphDSLError
from .node import Node, rebuild, topo_order
from .ops.core import container
from .ops.core import input as input_node
from .ops.transformer import cache_append
from .ops.transformer import slice as slice_node
from .transforms import rewrite_nodes

_STEP_INPUTS = ("attention_mask", "position_ids")


def optimum_name(name: str) -> str:
    """A decoder input's name as optimum's ONNX decoders spell it (other names unchanged).

    Args:
        name: a ``decoder`` input name.

    Returns:
        (str): e.g. ``past_key_values.3.key``.

    Examples:
        >>> from graphdsl.generate import optimum_name
        >>> optimum_name("past_key_values_3_key"), optimum_name("input_ids")
        ('past_key_values.3.key', 'input_ids')
    """
    if name.startswith("past_key_values_"):
        i, kind = name[len("past_key_values_"):].rsplit("_", 1)
        return f"past_key_values.{i}.{kind}"
    return name


def _fail(what: str, arg: str, fix: str) -> GraphDSLError:
    return GraphDSLError(f"{arg}: {what}", layer=arg, op="generate", fix=fix)


def _attentions(model: Node) -> list[Node]:
    atts = [n for n in topo_order(model) if n.op == "attention"]
    if not atts or not all(n.attrs["causal"] for n in atts):
        kind = "has no attention layer" if not atts else "has non-causal attention"
        raise _fail(f"the model {kind}: only causal language models generate", "model",
                    "pass a causal LM (LLaMA, Mistral, Qwen2, GPT-2), not an encoder "
                    "such as BERT")
    return atts


def decoder(model: Node, last_logits: bool = False) -> Node:
    """The decode step of the causal LM ``model``, with optimum's cache inputs and outputs.

    The model's own graph with each attention's keys and values prefixed by the cache
    (``graphdsl.cache_append``): same layers, names and parameters, so the model's
    ModelState runs it. Inputs: ``input_ids [batch, seq]``, ``attention_mask [batch, past +
    seq]``, ``position_ids [batch, seq]`` (both now required) and per attention layer ``i``
    ``past_key_values_{i}_key`` / ``_value`` ``[batch, kv_heads, past, head_dim]``. Output: a
    container ``{"logits", "present.{i}.key", "present.{i}.value"}``, each present the past
    and the new keys/values (keys after the rotary embedding, kv heads not repeated).

    Args:
        model: a causal LM.
        last_logits: logits ``[batch, 1, vocab]`` of the last position only, when the output
            layer is a plain ``dense``/``tied_dense`` (transformers' ``logits_to_keep=1``).

    Returns:
        (Node): the decoder's container.

    Raises:
        GraphDSLError: the model has no causal attention or no ``input_ids`` input.

    Examples:
        >>> from graphdsl import models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> from graphdsl.generate import decoder
        >>> list(gd.get_inputs(decoder(model)))[3:]
        ['past_key_values_0_key', 'past_key_values_0_value']
    """
    atts = _attentions(model)
    index = {n.id: i for i, n in enumerate(atts)}
    presents: dict[str, Node] = {}

    def with_cache(i: int) -> Callable[[list[Node], Node], Node]:
        def rewrite(ins: list[Node], out: Node) -> Node:
            q, k, v, *mask = ins
            new = []
            for kind, x in (("key", k), ("value", v)):
                past = input_node(f"past_key_values_{i}_{kind}",
                                  (None, x.shape[1], None, x.shape[3]))
                new.append(cache_append(past, x, axis=2, name=f"present.{i}.{kind}"))
                presents[f"present.{i}.{kind}"] = new[-1]
            return rebuild(out, [q, *new, *mask])
        return rewrite

    def rule(n: Node) -> Callable[[list[Node], Node], Node] | None:
        if n.id in index:
            return with_cache(index[n.id])
        if n.op == "optional" and n.inputs[0].name in _STEP_INPUTS:
            return lambda ins, out: ins[0]
        if last_logits and n is model and n.op in ("dense", "tied_dense"):
            return lambda ins, out: rebuild(out, [slice_node(ins[0], -1, None, axis=1)])
        return None

    logits = rewrite_nodes(model, rule, keep_names=True)
    return container({"logits": logits, **presents})


@dataclass
class _Step:
    """A compiled decoder and what the loop needs to know about the model."""

    model: Node
    run: Callable[..., Any]
    inputs: frozenset[str]
    kv: list[tuple[int, int]]  # per layer: (kv_heads, head_dim)
    vocab: int
    max_positions: int | None
    table: int | None  # rows of a learned position embedding (GPT-2's wpe), if any
    backend: str
    device: Any


_STEPS: OrderedDict[tuple, _Step] = OrderedDict()


def _step(model: Node, backend: str, device: Any) -> _Step:
    key = (id(model), backend, str(device))
    hit = _STEPS.get(key)
    if hit is not None and hit.model is model:
        return hit
    from .compiler import build
    from .graph import get_inputs

    if not isinstance(model, Node):
        raise _fail(f"expected a graphdsl model, got {type(model).__name__}", "model",
                    "pass the model of hf.from_pretrained or graphdsl.models")
    atts = _attentions(model)
    dec = decoder(model, last_logits=True)
    opts = {"device": device} if device is not None else {}
    run = build(dec, backend=backend, **opts)[1]
    ids = [n for n in topo_order(model) if n.op == "input" and n.name == "input_ids"]
    if not ids:
        raise _fail("the model has no input_ids input", "model",
                    "pass a causal LM built by graphdsl.models or hf.from_pretrained")
    config = dict((ids[0].attrs.get("meta") or {}).get("hf_config") or {})
    max_pos = config.get("n_positions", config.get("max_position_embeddings"))
    vocab = model.shape[-1] if model.shape else None
    hit = _Step(model, run, frozenset(get_inputs(dec)),
                [(a.inputs[1].shape[1], a.inputs[1].shape[3]) for a in atts], vocab,
                max_pos if isinstance(max_pos, int) else None, _position_table(model),
                backend, device)
    _STEPS[key] = hit
    if len(_STEPS) > 4:
        _STEPS.popitem(last=False)
    return hit


def _position_table(model: Node) -> int | None:
    """The rows of an embedding of ``position_ids`` (a learned table cannot extrapolate)."""
    for n in topo_order(model):
        src = n.inputs[0] if n.op == "embedding" else None
        while src is not None and src.op == "optional":
            src = src.inputs[0]
        if src is not None and src.op == "input" and src.name == "position_ids":
            return n.attrs["vocab_size"]
    return None


def _ids_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0 or a.dtype.kind not in "iub":
        raise _fail(f"expected integers [batch, seq] (seq >= 1), got shape {a.shape} dtype "
                    f"{a.dtype}", name, "pass token ids such as np.array([[1, 2, 3]])")
    return a.astype(np.int64)


def _check(step: _Step, ids: np.ndarray, mask: np.ndarray, max_new: Any, sampling: dict
           ) -> None:
    if isinstance(max_new, bool) or not isinstance(max_new, (int, np.integer)) or max_new < 1:
        raise _fail(f"must be an integer >= 1, got {max_new!r}", "max_new_tokens",
                    "pass max_new_tokens=32")
    if mask.shape != ids.shape:
        raise _fail(f"shape {mask.shape} differs from input_ids' {ids.shape}",
                    "attention_mask", "pass a 0/1 mask [batch, prompt_len], 0 on the "
                    "(left) padding")
    if step.vocab is not None and (ids.min() < 0 or ids.max() >= step.vocab):
        bad = ids[(ids < 0) | (ids >= step.vocab)][0]
        raise _fail(f"token id {bad} is outside the vocabulary [0, {step.vocab})",
                    "input_ids", f"pass ids in [0, {step.vocab})")
    if step.max_positions is not None and ids.shape[1] > step.max_positions:
        raise _fail(f"a prompt of {ids.shape[1]} tokens is longer than the model's "
                    f"{step.max_positions} positions", "input_ids",
                    f"pass at most {step.max_positions} tokens")
    total = ids.shape[1] + int(max_new)
    if step.table is not None and total > step.table:
        raise _fail(f"prompt + max_new_tokens = {total} exceeds the model's {step.table} "
                    "learned positions", "max_new_tokens",
                    f"pass max_new_tokens <= {step.table - ids.shape[1]}")
    top_p, temp = sampling["top_p"], sampling["temperature"]
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise _fail(f"must be in (0, 1], got {top_p!r}", "top_p", "pass e.g. top_p=0.9")
    top_k = sampling["top_k"]
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(
            top_k, (int, np.integer)) or top_k < 1):
        raise _fail(f"must be an integer >= 1, got {top_k!r}", "top_k", "pass e.g. top_k=50")
    if sampling["do_sample"] and not (isinstance(temp, (int, float)) and temp > 0):
        raise _fail(f"must be > 0 when sampling, got {temp!r}", "temperature",
                    "pass temperature=1.0 (or do_sample=False for greedy)")


def _filtered(logits: np.ndarray, temperature: float, top_k: int | None,
              top_p: float | None) -> np.ndarray:
    """transformers' warpers in their order (temperature, top-k, top-p) on ``logits
    [batch, vocab]``: the removed entries become -inf."""
    x = logits / np.float32(temperature)
    if top_k is not None and top_k < x.shape[-1]:
        kth = np.partition(x, -top_k, axis=-1)[:, -top_k, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(x, axis=-1, kind="stable")  # ascending, as transformers sorts
        sorted_x = np.take_along_axis(x, order, axis=-1)
        cum = np.cumsum(_softmax(sorted_x), axis=-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # min_tokens_to_keep=1
        remove = np.zeros_like(drop)
        np.put_along_axis(remove, order, drop, axis=-1)
        x = np.where(remove, -np.inf, x)
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cum = np.cumsum(_softmax(x.astype(np.float64)), axis=-1)
    u = rng.random((x.shape[0], 1)) * cum[:, -1:]
    return np.minimum((cum <= u).sum(axis=-1), x.shape[-1] - 1)


def _last_logits(out: Any) -> np.ndarray:
    last = out["logits"][:, -1]
    if hasattr(last, "detach"):
        last = last.detach().float().cpu().numpy()
    return np.asarray(last, dtype=np.float32)


def generate(model: Node, state: Any, input_ids: Any, max_new_tokens: int = 32, *,
             attention_mask: Any = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             backend: str = "numpy", device: Any = None,
             stream: Callable[[np.ndarray], Any] | None = None) -> np.ndarray:
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens, as transformers' ``generate``.

    One prefill over the prompt, then one decoder step per token over the key/value cache
    (``decoder``), never a pass over the whole prefix. Greedy decoding gives
    transformers' tokens exactly. Every causal LM family (LLaMA, Mistral, Qwen2, GPT-2),
    plain, adapted (DoRA/LoRA, unmerged) or merged.

    Args:
        model: a causal LM (from ``graphdsl.models`` / ``graphdsl.hf``).
        state: its values.
        input_ids: int ``[batch, prompt_len]`` (a list of lists is fine).
        max_new_tokens: the most tokens to add, >= 1.
        attention_mask: 0/1 ``[batch, prompt_len]`` for a left-padded batch of prompts;
            positions count the kept tokens (transformers' ``cumsum(mask) - 1``).
        do_sample: False: greedy (argmax); True: sample.
        temperature: the logits' divisor when sampling, > 0.
        top_k: keep the ``top_k`` most likely tokens (None: no filter; transformers'
            default is 50).
        top_p: nucleus filter in ``(0, 1]``, after ``top_k``.
        seed: seeds the NumPy generator sampling draws from (reproducible).
        eos_token_id: an int or a list; a row ends when it emits one and continues with
            ``pad_token_id``; generation stops when every row has ended.
        pad_token_id: the id after the end (default: the first eos id).
        backend: ``"numpy"`` or ``"torch"``.
        device: the torch device.
        stream: ``stream(tokens)`` is called with each step's new tokens, int64 ``[batch]``.

    Returns:
        (np.ndarray): int64 ``[batch, prompt_len + generated]``, the prompt included.

    Raises:
        GraphDSLError: not a causal LM, ids outside the vocabulary or of the wrong shape, a
            prompt plus ``max_new_tokens`` longer than the position table, a bad sampling
            option (each names the argument and the fix).

    Examples:
        >>> from graphdsl import models
        >>> cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...        "num_key_value_heads": 1}
        >>> model = models.llama(cfg)
        >>> state = gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})
        >>> ids = gd.generate(model, state, [[1, 2, 3]], max_new_tokens=4)
        >>> ids.shape, ids.dtype, ids[0, :3].tolist()
        ((1, 7), dtype('int64'), [1, 2, 3])
    """
    step = _step(model, backend, device)
    ids = _ids_array(input_ids, "input_ids")
    mask = np.ones_like(ids) if attention_mask is None else \
        _ids_array(attention_mask, "attention_mask")
    _check(step, ids, mask, max_new_tokens,
           {"do_sample": do_sample, "temperature": temperature, "top_k": top_k,
            "top_p": top_p})
    eos = [] if eos_token_id is None else [int(eos_token_id)] if np.ndim(eos_token_id) == 0 \
        else [int(e) for e in eos_token_id]
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else None)
    rng = np.random.default_rng(seed)
    b = ids.shape[0]
    feed: dict[str, Any] = {
        f"past_key_values_{i}_{kind}": np.zeros((b, kvh, 0, hd), np.float32)
        for i, (kvh, hd) in enumerate(step.kv) for kind in ("key", "value")}
    pos = np.where(mask == 0, 0, np.cumsum(mask, axis=-1) - 1)
    tokens, out_ids, alive = ids, [ids], np.ones(b, dtype=bool)
    for _ in range(int(max_new_tokens)):
        feed.update(input_ids=tokens, attention_mask=mask, position_ids=pos)
        out = step.run(state, {k: v for k, v in feed.items() if k in step.inputs})
        logits = _last_logits(out)
        if do_sample:
            new = _sample(_filtered(logits, temperature, top_k, top_p), rng)
        else:
            new = logits.argmax(axis=-1)
        new = new.astype(np.int64)
        if pad is not None:
            new = np.where(alive, new, pad)
        if eos:
            alive &= ~np.isin(new, eos)
        out_ids.append(new[:, None])
        if stream is not None:
            stream(new)
        if eos and not alive.any():
            break
        feed.update({f"past_key_values_{i}_{kind}": out[f"present.{i}.{kind}"]
                     for i in range(len(step.kv)) for kind in ("key", "value")})
        tokens, pos = new[:, None], pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((b, 1), mask.dtype)], axis=1)
    return np.concatenate(out_ids, axis=1)
