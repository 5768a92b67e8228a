"""Kernels written once for every backend: they use only what NumPy arrays and torch
tensors share (``.shape``, ``.reshape``), so each backend's table takes them as they are.

A kernel is ``kernel(inputs, params, attrs, ctx) -> array`` (see :mod:`.base`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from graphdsl.errors import InputError, RuleError
from graphdsl.shapes import reshape_target

from .base import KernelContext, check_positions


def container(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The inputs as a tuple (``keys`` None) or a dict ``{key: array}``."""
    return dict(zip(a["keys"], ins)) if a["keys"] is not None else tuple(ins)


def reshape(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x -> x reshaped to ``attrs["shape"]`` (None keeps an axis, -1 infers one size)."""
    x = ins[0]
    return x.reshape(reshape_target(tuple(x.shape), a["shape"]))


def flatten(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x (N, d1, d2, ...) -> (N, d1*d2*...)."""
    x = ins[0]
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def param(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The layer's ``value`` parameter (any shape)."""
    return p["value"]


def optional(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The optional input's value when given (not None), else its default's."""
    return ins[0] if ins[0] is not None else ins[1]


def full_like(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x's shape filled with ``value``: int dtypes as named, floats in the compute dtype."""
    x, name = ins[0], a["dtype"]
    if name is None:
        name = str(x.dtype).removeprefix("torch.")
    dt = ctx.dtype if name.startswith("float") else getattr(ctx.xp, name)
    return ctx.xp.full_like(x, a["value"], dtype=dt)


def slice_axis(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x[start:stop] along ``attrs["axis"]`` (a view), the other axes unchanged."""
    x = ins[0]
    lead = (slice(None),) * (a["axis"] % x.ndim)
    return x[lead + (slice(a["start"], a["stop"]),)]


# -- attention and rotary helpers: the parts both backends write the same way ---------------
def grouped_queries(q: Any, kv_heads: int) -> Any:
    """q [b, heads, n, d] -> [b, kv_heads, (heads // kv_heads) * n, d]: the queries that share
    a key/value head (consecutive heads, as transformers' repeat_kv) in one matrix, so the
    scores are one batched matmul against k [b, kv_heads, m, d] without repeating k."""
    b, h, n, d = q.shape
    return q.reshape(b, kv_heads, (h // kv_heads) * n, d)


def attention_keep(ins: list, a: Mapping, arange: Callable[[int], Any]) -> Any:
    """The keep-mask of attention's scores [b, heads, n, m] (None: keep all), broadcastable:
    the mask input's nonzeros, and with ``causal`` query i sees key j iff j <= i + m - n and
    (with ``window``) i + m - n - j < window (transformers' sliding_window_overlay).
    ``arange(k)`` is the backend's 0..k-1 on the inputs' device."""
    n, m = ins[0].shape[2], ins[1].shape[2]
    keep = ins[3] != 0 if len(ins) > 3 else None
    if a["causal"]:
        i = arange(n).reshape(n, 1) + (m - n)
        j = arange(m).reshape(1, m)
        vis = j <= i
        if a["window"] is not None:
            vis = vis & (i - j < a["window"])
        keep = vis if keep is None else keep & vis
    return keep


def rotate(x: Any, cos: Any, sin: Any, cat: Callable) -> Any:
    """LLaMA's rotary embedding of x [b, heads, s, d] given cos/sin [b, 1, s, d] of the
    angles (in x's dtype, see :func:`rotary_tables`): x * cos + rotate_half(x) * sin, as
    transformers'. ``cat`` is the backend's concatenate."""
    h = x.shape[-1] // 2
    return x * cos + cat((-x[..., h:], x[..., :h]), -1) * sin


#: the last rotary tables made per (backend, d, theta, dtype, device): (positions, cos, sin)
_ROTARY: dict[tuple, tuple] = {}
#: positions with at most this many entries (a decode step's) have their tables kept
ROTARY_KEEP = 4096


def rotary_tables(key: tuple, pos: Any, make: Callable[[], tuple[Any, Any]],
                  same: Callable[[Any, Any], bool], keep: Callable[[Any], Any]
                  ) -> tuple[Any, Any]:
    """The cos/sin tables [b, 1, s, d] of ``pos`` [b, s] from ``make()``, reused when the
    previous call under ``key`` had equal positions: every layer's queries and keys of one
    decode step rotate by the same positions, so a step makes its tables once instead of
    once per attention input. Positions are compared by value (``same``) against a private
    copy (``keep``), never by identity, so an input edited in place between calls is seen.
    Only small position arrays (a decode step's, <= ROTARY_KEEP entries) are kept."""
    hit = _ROTARY.get(key)
    if hit is not None and same(hit[0], pos):
        return hit[1], hit[2]
    cos, sin = make()
    if math.prod(pos.shape) <= ROTARY_KEEP:
        _ROTARY[key] = (keep(pos), cos, sin)  # one store: safe for concurrent calls
    return cos, sin


def spatial_axes(x: Any, channels: str) -> tuple[int, ...]:
    """The spatial axes of ``x`` [N, *spatial, C] (channels "last") or [N, C, *spatial]."""
    return tuple(range(1, x.ndim - 1)) if channels == "last" else tuple(range(2, x.ndim))


def global_pool(reduce: Callable[[Any, tuple[int, ...], bool], Any]) -> Callable:
    """The kernel of a global pool: ``reduce(x, axes, keep_axes)`` over the spatial axes
    of x ([N, *spatial, C] or channels first), refused over 0 positions."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        x, axes = ins[0], spatial_axes(ins[0], a["channels"])
        check_positions(x.shape, axes, ctx.op)
        return reduce(x, axes, a["keep_axes"])

    return kernel


def _refuse_negative(v: Any, op: str, norm: float, what: str, nan: str) -> None:
    low = float(v.min()) if math.prod(v.shape) else 0.0
    if low < 0:
        raise RuleError(f"{op} with norm {norm:g} got a negative {what} ({low:g}): {nan} is "
                        "NaN there (Axon's (sum of x**norm) ** (1/norm) takes no abs)",
                        "pass inputs >= 0 (e.g. after relu), or an even norm such as 2",
                        InputError)


def lp_power(x: Any, norm: float, op: str) -> Any:
    """``x ** norm``, the first step of Axon's power average; a negative input with a
    fractional norm (NaN) is refused."""
    if norm != int(norm):
        _refuse_negative(x, op, norm, "input", "x ** norm")
    return x ** norm


def lp_root(sums: Any, norm: float, op: str) -> Any:
    """``sums ** (1/norm)``, the last step of Axon's power average (no abs); a negative
    sum with an odd norm above 1 (NaN) is refused (an even norm's sums are >= 0, 1's root
    is the sum, and a fractional norm's inputs were)."""
    if norm == int(norm) and norm % 2 and norm != 1:
        _refuse_negative(sums, op, norm, "window sum of x**norm", f"its root ** (1/{norm:g})")
    return sums ** (1 / norm)


def global_lp_pool(total: Callable[[Any, tuple[int, ...], bool], Any]) -> Callable:
    """The kernel of global_lp_pool: ``(total(x ** norm, axes, keep_axes)) ** (1/norm)``
    over the spatial axes (0 positions sum to 0, as Axon's ``Nx.sum``)."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        x, norm = ins[0], a["norm"]
        s = total(lp_power(x, norm, ctx.op), spatial_axes(x, a["channels"]), a["keep_axes"])
        return lp_root(s, norm, ctx.op)

    return kernel


def along(v: Any, x: Any, axis: int) -> Any:
    """A vector ``v`` of x's size on ``axis`` reshaped to broadcast along that axis of x."""
    return v.reshape([x.shape[axis] if i == axis else 1 for i in range(x.ndim)])


def shifted(gamma: Any, attrs: Any) -> Any:
    """``gamma + shift`` of a norm with Axon's ``shift`` option (rms_norm), ``gamma`` itself
    when the shift is 0."""
    return gamma + attrs["shift"] if attrs["shift"] else gamma


def check_ids(ids: Any, vocab: int) -> None:
    """Refuse token ``ids`` (integers, any shape) outside ``[0, vocab)``: the one rule of
    every backend's row lookup (embedding, its adapters), raised as an InputError naming
    the layer."""
    if math.prod(ids.shape) == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise RuleError(f"token ids must lie in [0, {vocab}), got values in [{lo}, {hi}] "
                        f"(ids of shape {tuple(ids.shape)})",
                        "check the tokenizer, or raise vocab_size", InputError)


def instance_values(shape: tuple, axis: int) -> int:
    """The values per instance and channel that instance_norm's training statistics
    average (the spatial size of ``shape``, channels on ``axis``); a RuleError when there
    is no instance or only one value, where the statistics have no value (both backends
    refuse alike)."""
    ax = axis % len(shape)
    n = math.prod(d for i, d in enumerate(shape) if i not in (0, ax))
    if n <= 1 or shape[0] == 0:
        raise RuleError(f"instance_norm in training needs more than 1 value per instance and "
                        f"channel, and at least one instance, got an input of shape "
                        f"{tuple(shape)}", "train with spatial axes of 2 or more values and a "
                        "batch of 1 or more, or use mode='inference'")
    return n


def activation_kernels(table: Mapping[str, Callable[[Any, Mapping[str, Any]], Any]]
                       ) -> dict[str, Callable]:
    """``{op: kernel}`` for a backend's activation table ``{op: fn(x, attrs)}``."""
    def kernel(fn: Callable) -> Callable:
        return lambda ins, p, a, ctx: fn(ins[0], a)

    return {op: kernel(fn) for op, fn in table.items()}


KERNELS: dict[str, Callable] = {"container": container, "reshape": reshape,
                                "flatten": flatten, "param": param, "optional": optional,
                                "full_like": full_like, "slice": slice_axis}
