"""Transformer ops: attention, rms_norm, rotary_embedding, slice/split, positions,
tied_dense.

Layouts follow transformers' eager code: attention acts on ``[batch, heads, seq, head_dim]``
with fewer key/value heads allowed (grouped-query attention), the rotary embedding is
LLaMA's ``rotate_half`` form, and ``positions`` gives transformers' default ``position_ids``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..dtypes import is_float
from ..errors import GraphDSLError, OptionError, RuleError, ShapeError, fmt_shape
from ..initializers import check_initializer
from ..node import Node, caller_location, is_valid_name, make_node, validate_name
from ..registry import RNG_KEY, OpDef, ParamSpec, register_op
from ..shapes import check_rank, is_int, merge_dim, normalize_axis
from ._attrs import boolean, number, positive_int
from .tensor import concat_shape


def _merge(a: int | None, b: int | None, what: str, shapes: Sequence[tuple], fix: str
           ) -> int | None:
    try:
        return merge_dim(a, b)
    except ValueError:
        raise RuleError(f"{what} differ ({a} vs {b}) in " +
                        " and ".join(fmt_shape(s) for s in shapes), fix) from None


def _floats(op: str, n: int):
    """An infer_dtype: the first ``n`` inputs must be float; the output is float."""
    def rule(d: Sequence[str], a: Any) -> str:
        bad = [i for i, x in enumerate(d[:n]) if not is_float(x)]  # bfloat16 too
        if bad:
            raise RuleError(f"{op} needs float inputs, but input {bad[0]} has dtype "
                            f"{d[bad[0]]}", "pass the float activations, not ids or masks",
                            OptionError)
        return "float32"

    return rule


def _int(value: Any, what: str, lo: int | None = None) -> int:
    if not is_int(value) or (lo is not None and int(value) < lo):
        raise RuleError(f"{what} must be an integer{f' >= {lo}' if lo is not None else ''}, "
                        f"got {value!r}", f"pass {what}=<int>", OptionError)
    return int(value)


# -- attention ------------------------------------------------------------------------------
def _attn_attrs(a: dict) -> dict:
    scale = a.get("scale")
    if scale is not None:
        scale = number(scale, "scale", 0.0)
        if scale <= 0:
            raise RuleError(f"scale must be > 0 or None, got {scale}",
                            "pass scale=None for 1/sqrt(head_dim)", OptionError)
    window = a.get("window")
    out = {"causal": boolean(a.get("causal", False), "causal"), "scale": scale,
           "window": None if window is None else positive_int(window, "window")}
    if out["window"] is not None and not out["causal"]:
        raise RuleError("a sliding window needs causal=True",
                        "pass causal=True with window=, or drop window", OptionError)
    rate = number(a.get("dropout", 0.0), "dropout", 0.0, 1.0, hi_open=True)
    if rate > 0:  # kept only when on, so graphs (and their JSON) without it are unchanged
        out["dropout"] = rate
    return out


def _attn_params(s: list, a: dict) -> list[ParamSpec]:
    return [RNG_KEY] if a.get("dropout", 0.0) > 0 else []


def _attn_shape(s: list, a: dict) -> tuple:
    q, k, v = s[:3]
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x) != 4:
            raise RuleError(f"attention needs rank-4 {name} [batch, heads, seq, head_dim], "
                            f"got {fmt_shape(x)}",
                            "reshape to [batch, seq, heads, head_dim] and transpose "
                            "with axes (0, 2, 1, 3)")
    fix_kv = "k and v must have the same shape [batch, kv_heads, k_len, head_dim]"
    kv_shape = tuple(_merge(x, y, "k and v sizes", (k, v), fix_kv) for x, y in zip(k, v))
    b = _merge(q[0], kv_shape[0], "batch sizes", (q, k), "give q, k and v the same batch")
    d = _merge(q[3], kv_shape[3], "head_dim sizes", (q, k),
               "q and k must have the same head_dim")
    h, kvh = q[1], kv_shape[1]
    if h is not None and kvh is not None and h % kvh:
        raise RuleError(f"q has {h} heads, not a multiple of the {kvh} key/value heads",
                        "use a number of query heads divisible by the k/v heads")
    out = (b, h, q[2], d)
    if len(s) > 3:
        m, want = s[3], (b, h, q[2], kv_shape[2])
        ok = len(m) <= 4 and all(x in (1, None) or y is None or x == y
                                 for x, y in zip(reversed(m), reversed(want)))
        if not ok:
            raise RuleError(f"attention mask {fmt_shape(m)} does not broadcast to the "
                            f"scores [batch, heads, q_len, k_len] = {fmt_shape(want)}",
                            "pass a mask such as [batch, 1, 1, k_len] (padding) or "
                            "[batch, 1, q_len, k_len]")
    return out


register_op(OpDef(
    "attention", _attn_shape, check_attrs=_attn_attrs, arity=(3, 4), params=_attn_params,
    infer_dtype=_floats("attention", 3), category="combinator",
    doc="softmax(q @ k^T * scale + mask) @ v on q [batch, heads, q_len, head_dim], "
        "k/v [batch, kv_heads, k_len, head_dim] (heads a multiple of kv_heads: query head i "
        "uses k/v head i // (heads // kv_heads)). Optional 4th input: a keep-mask "
        "broadcastable to [batch, heads, q_len, k_len] (nonzero = may attend). causal: query "
        "i sees keys j <= i + k_len - q_len; window: also i + k_len - q_len - j < window. "
        "Masked scores take the dtype's lowest finite value; scale None = head_dim^-0.5. "
        "dropout: inverted dropout on the probabilities, train mode only (state: key). "
        "-> [batch, heads, q_len, head_dim].",
))


def attention(q: Node, k: Node, v: Node, mask: Node | None = None, causal: bool = False,
              scale: float | None = None, window: int | None = None,
              name: str | None = None, dropout: float = 0.0) -> Node:
    """Scaled dot-product attention with grouped-query k/v (transformers' eager math).

    ``softmax(q @ k.T * scale + masks) @ v``; each k/v head serves ``heads // kv_heads``
    consecutive query heads.

    Args:
        q: queries ``[batch, heads, q_len, head_dim]``.
        k: keys ``[batch, kv_heads, k_len, head_dim]``, ``heads`` a multiple of ``kv_heads``.
        v: values, the shape of ``k``.
        mask: optional node broadcasting to ``[batch, heads, q_len, k_len]``, nonzero = keep
            (e.g. an int ``attention_mask`` reshaped to ``(None, 1, 1, -1)``).
        causal: hide later keys (the queries are the last ``q_len`` positions).
        scale: score scale, default ``head_dim ** -0.5``.
        window: with ``causal``, keep only the last ``window`` keys (Mistral/Qwen2 sliding
            window); None for all.
        name: layer name (default ``"attention_{n}"``).
        dropout: in ``[0, 1)``: inverted dropout on the probabilities in train mode only
            (transformers' ``attention_dropout``), drawn from the layer's RNG ``key``.

    Returns:
        (Node): ``[batch, heads, q_len, head_dim]``.

    Raises:
        ShapeError: head counts or sizes disagree, or the mask does not broadcast.
        OptionError: a bad ``scale``, ``window`` or ``dropout``.

    Examples:
        >>> q = gd.input("q", shape=(None, 4, 5, 8))
        >>> kv = gd.input("kv", shape=(None, 2, 5, 8))
        >>> gd.get_output_shape(gd.attention(q, kv, kv, causal=True),
        ...                     {"q": (1, 4, 5, 8), "kv": (1, 2, 5, 8)})
        (1, 4, 5, 8)
    """
    ins = [q, k, v] + ([mask] if mask is not None else [])
    attrs = {"causal": causal, "scale": scale, "window": window}
    if dropout != 0.0:
        attrs["dropout"] = dropout
    return make_node("attention", ins, attrs, name, where=caller_location())


# -- rms_norm --------------------------------------------------------------------------------
def _rms_dim(s: tuple, a: dict) -> int:
    check_rank(s, 1, "rms_norm", "pass a tensor with a feature axis")
    ax = normalize_axis(a["axis"], len(s))
    if s[ax] is None:
        raise RuleError(f"rms_norm needs a known size on axis {a['axis']}, got {fmt_shape(s)}",
                        "normalize over a fixed-size feature axis")
    return s[ax]


def _rms_shape(s: list, a: dict) -> tuple:
    _rms_dim(s[0], a)
    return s[0]


register_op(OpDef(
    "rms_norm", _rms_shape,
    params=lambda s, a: [ParamSpec("gamma", (_rms_dim(s[0], a),), a["gamma_initializer"])],
    check_attrs=lambda a: {"axis": a.get("axis", -1),
                           "epsilon": number(a.get("epsilon", 1e-6), "epsilon", 0.0),
                           "shift": number(a.get("shift", 0.0), "shift", finite=True),
                           "gamma_initializer": check_initializer(
                               a.get("gamma_initializer", "ones"), "gamma_initializer")},
    infer_dtype=_floats("rms_norm", 1),
    doc="(shift + gamma) * x / sqrt(mean(x^2 over axis) + epsilon) (LLaMA's RMSNorm: "
        "epsilon inside the square root; Axon's shift, 0 by default, 1 for Gemma); shape "
        "unchanged. gamma: [size of axis], from gamma_initializer (ones).",
))


def rms_norm(x: Node, axis: int = -1, epsilon: float = 1e-6, shift: float = 0.0,
             gamma_initializer: Any = "ones", name: str | None = None) -> Node:
    """Root-mean-square normalization over ``axis``: ``(shift + gamma) * x / rms(x)``.

    ``rms(x) = sqrt(mean(x**2) + epsilon)``, computed in float32 (LLaMA's RMSNorm); a
    learnable ``gamma [size of axis]``; Axon's options and defaults.

    Args:
        x: input node, known size on ``axis``.
        axis: normalized axis.
        epsilon: added inside the square root, >= 0.
        shift: added to ``gamma`` (Gemma-style ``1 + gamma`` with ``shift=1``).
        gamma_initializer: initializer for ``gamma`` (default ``"ones"``).
        name: layer name (default ``"rms_norm_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: unknown size on ``axis``.
        OptionError: a bad ``epsilon`` or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 2))
        >>> y = gd.rms_norm(x, epsilon=0.0)
        >>> state = gd.build(y)[0](np.zeros((1, 2), np.float32))
        >>> gd.predict(y, state, np.array([[3.0, 4.0]], np.float32)).round(4)
        array([[0.8485, 1.1314]], dtype=float32)
    """
    return make_node("rms_norm", [x], {"axis": axis, "epsilon": epsilon, "shift": shift,
                                       "gamma_initializer": gamma_initializer}, name,
                     where=caller_location())


# -- rotary_embedding -------------------------------------------------------------------------
def _rope_shape(s: list, a: dict) -> tuple:
    x, pos = s
    if len(x) != 4:
        raise RuleError(f"rotary_embedding needs x [batch, heads, seq, head_dim], got "
                        f"{fmt_shape(x)}", "apply it to q or k after the head transpose")
    if x[3] is not None and x[3] % 2:
        raise RuleError(f"rotary_embedding needs an even head_dim, got {x[3]}",
                        "use an even head_dim")
    if len(pos) != 2:
        raise RuleError(f"rotary_embedding needs positions [batch, seq], got {fmt_shape(pos)}",
                        "pass gd.positions(input_ids) or a position_ids input")
    seq = _merge(x[2], pos[1], "sequence lengths", (x, pos),
                 "positions need one entry per token of x")
    if pos[0] not in (1, None) and x[0] is not None and pos[0] != x[0]:
        raise RuleError(f"positions batch {pos[0]} does not match x batch {x[0]}",
                        "pass positions [batch, seq] or [1, seq]")
    return (x[0], x[1], seq, x[3])


def _rope_dtype(d: Sequence[str], a: Any) -> str:
    _floats("rotary_embedding", 1)(d, a)
    if not d[1].startswith("int"):
        raise RuleError(f"rotary_embedding needs integer positions, got dtype {d[1]}",
                        "declare position_ids with dtype='int64', or use gd.positions",
                        OptionError)
    return "float32"


def _rope_attrs(a: dict) -> dict:
    theta = number(a.get("theta", 10000.0), "theta", 0.0)
    if theta <= 0.0:
        raise RuleError(f"theta must be > 0, got {theta}", "pass theta=10000.0 (rope_theta)",
                        OptionError)
    return {"theta": theta}


register_op(OpDef(
    "rotary_embedding", _rope_shape, check_attrs=_rope_attrs, arity=2,
    infer_dtype=_rope_dtype, category="combinator",
    doc="LLaMA's rotary embedding: x * cos + rotate_half(x) * sin with angles "
        "positions * theta^(-2i/head_dim) (float32, as transformers' default rope). "
        "x [batch, heads, seq, head_dim] (even head_dim), positions int [batch or 1, seq]; "
        "shape of x.",
))


def rotary_embedding(x: Node, positions: Node, theta: float = 10000.0,
                     name: str | None = None) -> Node:
    """Rotary position embedding (transformers' ``rotate_half`` form).

    Args:
        x: ``[batch, heads, seq, head_dim]``, ``head_dim`` even.
        positions: integer ``[batch, seq]`` (see ``positions``).
        theta: the base (``rope_theta``).
        name: layer name (default ``"rotary_embedding_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: ``head_dim`` is odd or ``positions`` does not fit.

    Examples:
        >>> q = gd.input("q", shape=(None, 2, 3, 4))
        >>> ids = gd.input("ids", shape=(None, 3), dtype="int64")
        >>> y = gd.rotary_embedding(q, gd.positions(ids))
        >>> gd.get_output_shape(y, {"q": (1, 2, 3, 4), "ids": (1, 3)})
        (1, 2, 3, 4)
    """
    return make_node("rotary_embedding", [x, positions], {"theta": theta}, name,
                     where=caller_location())


# -- slice / split ------------------------------------------------------------------------------
def _slice_attrs(a: dict) -> dict:
    stop = a.get("stop")
    return {"start": _int(a.get("start", 0), "start"),
            "stop": None if stop is None else _int(stop, "stop"), "axis": a.get("axis", -1)}


def _slice_len(start: int, stop: int | None, size: int | None) -> int | None:
    """The length of ``x[start:stop]`` on an axis of ``size`` (None: unknown), or a
    RuleError for bounds outside the axis or an empty result."""
    if size is None:
        same_sign = stop is not None and (start >= 0) == (stop >= 0)
        n = stop - start if same_sign else None
    else:
        lo = start + size if start < 0 else start
        hi = size if stop is None else stop + size if stop < 0 else stop
        if not (0 <= lo <= size and 0 <= hi <= size):
            raise RuleError(f"slice [{start}:{stop}] is out of bounds for an axis of size "
                            f"{size}", f"use bounds within [-{size}, {size}]", OptionError)
        n = hi - lo
    if n is not None and n <= 0:
        raise RuleError(f"slice [{start}:{stop}] is empty", "use start < stop", OptionError)
    return n


def _slice_shape(s: list, a: dict) -> tuple:
    x = s[0]
    check_rank(x, 1, "slice", "pass a tensor")
    ax = normalize_axis(a["axis"], len(x))
    return x[:ax] + (_slice_len(a["start"], a["stop"], x[ax]),) + x[ax + 1:]


register_op(OpDef(
    "slice", _slice_shape, check_attrs=_slice_attrs, infer_dtype=lambda d, a: d[0],
    output_alias="inputs",
    doc="x[start:stop] along `axis` (Python bounds: negatives count from the end, stop None "
        "= the end); the other axes unchanged. gd.split is made of these.",
))


def slice(x: Node, start: int, stop: int | None, axis: int = -1,
          name: str | None = None) -> Node:
    """``x[start:stop]`` along ``axis`` (negative bounds count from the end).

    Args:
        x: input node.
        start: first index.
        stop: end index (exclusive), None for the end.
        axis: the sliced axis.
        name: layer name (default ``"slice_{n}"``).

    Returns:
        (Node): the shape of ``x`` with the sliced size on ``axis``.

    Raises:
        ShapeError: ``axis`` is out of range.

    Examples:
        >>> x = gd.input("x", shape=(None, 10))
        >>> gd.get_output_shape(gd.slice(x, 2, -1), (3, 10))
        (3, 7)
    """
    return make_node("slice", [x], {"start": start, "stop": stop, "axis": axis}, name,
                     where=caller_location())


def split(x: Node, n_or_sizes: int | Sequence[int], axis: int = -1,
          name: str | None = None) -> tuple[Node, ...]:
    """Split ``x`` along ``axis`` into ``n`` equal parts or parts of the given sizes.

    Like ``Axon.split``; the parts are ``slice`` nodes, named ``f"{name}_{i}"`` when
    ``name`` is given.

    Args:
        x: input node, known size on ``axis``.
        n_or_sizes: a number of equal parts, or a list of sizes summing to the axis size.
        axis: the split axis.
        name: base name of the parts.

    Returns:
        (tuple[Node, ...]): the parts, in order.

    Raises:
        OptionError: the size is not divisible by ``n``, or the sizes do not sum to it.
        ShapeError: the size on ``axis`` is unknown.

    Examples:
        >>> x = gd.input("x", shape=(None, 12))
        >>> q, k, v = gd.split(x, 3)
        >>> gd.get_output_shape(k, (2, 12))
        (2, 4)
    """
    where = caller_location()

    def fail(what: str, fix: str, cls: type[GraphDSLError] = OptionError) -> GraphDSLError:
        return cls(what, layer=name, op="split", where=where,
                   shapes={"input0": x.shape}, fix=fix)

    if not isinstance(x, Node) or x.op == "container":  # the usual not-a-tensor error
        make_node("slice", [x], {"start": 0, "stop": None, "axis": axis}, where=where)
    if name is not None:
        validate_name(name, "split", where)
    try:
        size = x.shape[normalize_axis(axis, len(x.shape))]
    except RuleError as e:
        raise fail(e.what, e.fix or "pass an axis of x", ShapeError) from None
    if size is None:
        raise fail(f"split needs a known size on axis {axis}, got {fmt_shape(x.shape)}",
                   "split a fixed-size axis, or use gd.slice with explicit bounds", ShapeError)
    if is_int(n_or_sizes):
        n = int(n_or_sizes)
        if n <= 0 or size % n:
            raise fail(f"cannot split an axis of size {size} into {n} equal parts",
                       f"pass a number of parts that divides {size}, or a list of sizes")
        sizes = [size // n] * n
    elif isinstance(n_or_sizes, (list, tuple)) and all(
            is_int(d) and int(d) > 0 for d in n_or_sizes) and n_or_sizes:
        sizes = [int(d) for d in n_or_sizes]
        if sum(sizes) != size:
            raise fail(f"split sizes {sizes} sum to {sum(sizes)}, not the axis size {size}",
                       f"pass sizes that sum to {size}")
    else:
        raise fail(f"split takes a number of parts or a list of positive sizes, got "
                   f"{n_or_sizes!r}", "pass e.g. 3 or [64, 32, 32]")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(make_node("slice", [x], {"start": b, "stop": b + d, "axis": axis},
                           None if name is None else f"{name}_{i}", where=where)
                 for i, (b, d) in enumerate(zip(starts, sizes)))


# -- positions ------------------------------------------------------------------------------------
def _pos_shape(s: list, a: dict) -> tuple:
    x = s[0]
    check_rank(x, 1, "positions", "pass e.g. input_ids [batch, seq]")
    return tuple(x[:normalize_axis(a["axis"], len(x)) + 1])


register_op(OpDef(
    "positions", _pos_shape, infer_dtype=lambda d, a: "int64",
    check_attrs=lambda a: {"axis": a.get("axis", 1),
                           "offset": _int(a.get("offset", 0), "offset", 0)},
    doc="int64 positions offset, offset+1, ... along `axis` of x, broadcast over the axes "
        "before it: x [batch, seq, ...] -> [batch, seq] (transformers' default position_ids).",
))


def positions(x: Node, axis: int = 1, offset: int = 0, name: str | None = None) -> Node:
    """Integer positions ``offset .. offset+n-1`` along ``axis`` of ``x``.

    Args:
        x: node (e.g. ``input_ids [batch, seq]``).
        axis: the counted axis.
        offset: the first position.
        name: layer name (default ``"positions_{n}"``).

    Returns:
        (Node): int64 of shape ``x.shape[:axis+1]``.

    Raises:
        ShapeError: ``axis`` is out of range.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 4), dtype="int64")
        >>> gd.predict(gd.positions(ids, offset=2), gd.ModelState.empty(),
        ...            np.zeros((1, 4), np.int64))
        array([[2, 3, 4, 5]])
    """
    return make_node("positions", [x], {"axis": axis, "offset": offset}, name,
                     where=caller_location())


# -- cache_append ---------------------------------------------------------------------------
register_op(OpDef(
    "cache_append", concat_shape, arity=(2, 2), infer_dtype=lambda d, a: d[0],
    check_attrs=lambda a: {"axis": _int(a.get("axis", 2), "axis")}, category="combinator",
    doc="A key/value cache grown by new entries: concatenate([past, new], axis). On NumPy "
        "the result is a view of a buffer with room to grow, so a decode step writes only "
        "the new entries.",
))


def cache_append(past: Node, new: Node, axis: int = 2, name: str | None = None) -> Node:
    """``concatenate([past, new], axis)`` for a key/value cache, amortized O(1) per step.

    Same values as ``concatenate`` on every backend. On NumPy the result is a view of a
    buffer whose capacity doubles when full, and passing that result back as ``past`` (as a
    decode loop does) writes the new entries in place; the result then shares memory with
    ``past``. Any other ``past`` is copied once into a fresh buffer, so no array a caller
    holds ever changes.

    Args:
        past: the cache ``[batch, kv_heads, cache, head_dim]``.
        new: this step's entries ``[batch, kv_heads, seq, head_dim]``.
        axis: the growing axis.
        name: layer name (default ``"cache_append_{n}"``).

    Returns:
        (Node): ``[batch, kv_heads, cache + seq, head_dim]``.

    Raises:
        ShapeError: the other axes differ.

    Examples:
        >>> past = gd.input("past", shape=(None, 2, None, 8))
        >>> new = gd.input("new", shape=(None, 2, 1, 8))
        >>> gd.get_output_shape(gd.cache_append(past, new),
        ...                     {"past": (1, 2, 6, 8), "new": (1, 2, 1, 8)})
        (1, 2, 7, 8)
    """
    return make_node("cache_append", [past, new], {"axis": axis}, name,
                     where=caller_location())


# -- tied_dense ----------------------------------------------------------------------------------
def _tied_attrs(a: dict) -> dict:
    emb = a.get("embedding")
    if not is_valid_name(emb):
        raise RuleError(f"embedding must be the name of an embedding layer, got {emb!r}",
                        "pass an embedding node built with name=", OptionError)
    return {"embedding": emb,
            "vocab_size": positive_int(a.get("vocab_size"), "vocab_size"),
            "embedding_size": positive_int(a.get("embedding_size"), "embedding_size"),
            "kernel_initializer": check_initializer(a.get("kernel_initializer", "uniform"),
                                                    "kernel_initializer"),
            "use_bias": boolean(a.get("use_bias", False), "use_bias")}


def _tied_shape(s: list, a: dict) -> tuple:
    x = s[0]
    if not x or x[-1] not in (None, a["embedding_size"]):
        raise RuleError(f"tied_dense needs x (..., {a['embedding_size']}) to match the "
                        f"embedding {a['embedding']!r}, got {fmt_shape(x)}",
                        "feed the hidden states of the embedding's width")
    return tuple(x[:-1]) + (a["vocab_size"],)


def _tied_params(s: list, a: dict) -> list[ParamSpec]:
    ps = [ParamSpec("kernel", (a["vocab_size"], a["embedding_size"]),
                    a["kernel_initializer"], owner=a["embedding"])]
    if a["use_bias"]:
        ps.append(ParamSpec("bias", (a["vocab_size"],), "zeros"))
    return ps


register_op(OpDef(
    "tied_dense", _tied_shape, params=_tied_params, check_attrs=_tied_attrs,
    infer_dtype=_floats("tied_dense", 1),
    doc="Output projection tied to an embedding: x @ E^T (+ bias) where E is the kernel "
        "[vocab, dim] of layer `embedding` (one shared parameter); (..., dim) -> "
        "(..., vocab). bias [vocab] when use_bias.",
))


def tied_dense(x: Node, embedding: Node, use_bias: bool = False,
               name: str | None = None) -> Node:
    """Logits ``x @ E.T`` (+ own ``bias [vocab]``) with ``E`` an embedding's kernel.

    ``E`` is the ``kernel [vocab, dim]`` of ``embedding``, so the two layers share one
    parameter (tied input and output embeddings).

    Args:
        x: hidden states ``(..., dim)``.
        embedding: an ``embedding`` layer with an explicit name.
        use_bias: add a ``bias [vocab]`` of its own.
        name: layer name (default ``"tied_dense_{n}"``).

    Returns:
        (Node): ``(..., vocab)``.

    Raises:
        OptionError: ``embedding`` is not a named embedding layer.
        ShapeError: ``dim`` differs from the embedding's.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 5), dtype="int64")
        >>> emb = gd.embedding(ids, 50, 8, name="wte")
        >>> gd.get_output_shape(gd.tied_dense(emb, emb), (2, 5))
        (2, 5, 50)
    """
    where = caller_location()
    if not isinstance(embedding, Node) or embedding.op != "embedding" or not embedding.name:
        what = ("an embedding layer without a name" if isinstance(embedding, Node)
                and embedding.op == "embedding" else
                f"a {getattr(embedding, 'op', type(embedding).__name__)} "
                f"{'layer' if isinstance(embedding, Node) else 'value'}")
        raise OptionError(f"tied_dense needs a named embedding layer, got {what}",
                          layer=name, op="tied_dense", where=where,
                          fix="build it with gd.embedding(ids, vocab, dim, name=\"embed\")")
    ea = embedding.attrs
    return make_node("tied_dense", [x], {
        "embedding": embedding.name, "vocab_size": ea["vocab_size"],
        "embedding_size": ea["embedding_size"],
        "kernel_initializer": ea["kernel_initializer"], "use_bias": use_bias,
    }, name, where=where)
