"""The recurrent loops (lstm, gru, conv_lstm) written once for NumPy and torch (``ctx.xp``).

A backend gives the input projections of every step at once, time major (``xw [seq,
batch, gates*u, ...]``: one matmul or conv over the whole sequence, bias included), a
``hidden(h)`` projection per step and its activation functions; the loop does one hidden
projection and the gate arithmetic per step, functional (no in-place writes), so torch's
autograd runs through it. 'static' and 'dynamic' unroll run this same loop.

The result is the packed output of the op (see :mod:`graphdsl.ops.recurrent`): the final
state(s) then the sequence, stacked on axis 1.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphdsl.initializers import INITIALIZERS
from graphdsl.ops.recurrent import state_shape

from .base import KernelContext, Stateful

Fn = Callable[[Any], Any]


def _gate(z: Any, k: int, u: int) -> Any:
    """Gate block ``k`` (of size ``u``) of ``z [batch, gates*u, ...]`` on axis 1."""
    return z[:, k * u:(k + 1) * u]


def _keep(mask: Any, t: int, like: Any) -> Any:
    """Axon's mask at step t as a boolean broadcasting over ``like`` (nonzero: keep)."""
    return (mask[:, t] != 0).reshape(like.shape[0], *(1,) * (like.ndim - 1))


def initial_states(ins: list, a: Mapping, n: int, zeros: Callable[[int], Any]
                   ) -> tuple[list, Any]:
    """``(states, mask)`` from the op's inputs: the given states (conv_lstm's ``[batch, 1,
    u, ...]`` squeezed) or ``zeros(j)`` each, and the mask or None."""
    k = 1 + (n if a["state"] else 0)
    states = [s.reshape(s.shape[0], *s.shape[2:]) if s.ndim > 2 else s
              for s in ins[1:k]] if a["state"] else [zeros(j) for j in range(n)]
    return states, ins[k] if a["mask"] else None


def lstm_loop(xw: Any, c: Any, h: Any, mask: Any, hidden: Fn, gate: Fn, act: Fn, xp: Any,
              order: str = "ifgo", forget_bias: float = 0.0) -> Any:
    """Axon's lstm_cell over ``xw [seq, batch, 4u, ...]``; gates in ``order`` (conv_lstm:
    "igfo" with ``forget_bias`` 1). Returns ``[batch, 2 + seq, u, ...]`` (c, h, outputs)."""
    u, outs = c.shape[1], []
    idx = {g: k for k, g in enumerate(order)}
    for t in range(xw.shape[0]):
        z = xw[t] + hidden(h)
        f = _gate(z, idx["f"], u)
        new_c = gate(f + forget_bias if forget_bias else f) * c + \
            gate(_gate(z, idx["i"], u)) * act(_gate(z, idx["g"], u))
        new_h = gate(_gate(z, idx["o"], u)) * act(new_c)
        if mask is not None:
            keep = _keep(mask, t, h)
            new_c, new_h = xp.where(keep, c, new_c), xp.where(keep, h, new_h)
        c, h = new_c, new_h
        outs.append(h)
    return xp.stack([c, h, *outs], axis=1)


def gru_loop(xw: Any, h: Any, mask: Any, Wh: Any, bhn: Any, gate: Fn, act: Fn, xp: Any
             ) -> Any:
    """Axon's gru_cell over ``xw [seq, batch, 3u]`` (x W + [br, bz, bin]): ``n = act(x W_n +
    bin + r*(h U_n + bhn))``. Returns ``[batch, 1 + seq, u]`` (h, outputs)."""
    u, outs = h.shape[1], []
    for t in range(xw.shape[0]):
        hw = h @ Wh
        r = gate(_gate(xw[t], 0, u) + _gate(hw, 0, u))
        z = gate(_gate(xw[t], 1, u) + _gate(hw, 1, u))
        hn = _gate(hw, 2, u)
        n = act(_gate(xw[t], 2, u) + r * (hn if bhn is None else hn + bhn))
        new_h = n + z * (h - n)
        h = new_h if mask is None else xp.where(_keep(mask, t, h), h, new_h)
        outs.append(h)
    return xp.stack([h, *outs], axis=1)


def rnn_kernel(op: str, acts: Mapping[str, Fn], zeros: Callable[[tuple, Any], Any]
               ) -> Callable:
    """The lstm / gru kernel of a backend whose activation functions are ``acts`` (name ->
    fn) and ``zeros(shape, like)`` makes a zero state like an array."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        x, u = ins[0], a["units"]
        Wi, Wh, b = p["input_kernel"], p["hidden_kernel"], p.get("bias")
        n = 2 if op == "lstm" else 1
        states, mask = initial_states(ins, a, n, lambda j: zeros((x.shape[0], u), x))
        B, T, F = x.shape
        xw = (x.reshape(B * T, F) @ Wi).reshape(B, T, Wi.shape[1]).swapaxes(0, 1)
        gate, act = acts[a["gate"]], acts[a["activation"]]
        if op == "lstm":
            return lstm_loop(xw if b is None else xw + b, *states, mask,
                             lambda h: h @ Wh, gate, act, ctx.xp)
        if b is not None:
            xw = xw + b[:3 * u]
        return gru_loop(xw, states[0], mask, Wh, None if b is None else b[3 * u:], gate, act,
                        ctx.xp)

    return kernel


def conv_lstm_kernel(conv: Callable[[Any, Any, Any, Mapping], Any], sigmoid: Fn, tanh: Fn,
                     zeros: Callable[[tuple, Any], Any]) -> Callable:
    """The conv_lstm kernel of a backend whose channels-first ``conv(x, K, bias, attrs)``
    runs Axon's conv (kernel ``[F, C, *k]``)."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        x, u = ins[0], a["units"]
        B, T, spatial = x.shape[0], x.shape[1], tuple(x.shape[3:])
        st = {"strides": a["strides"], "padding": a["padding"], "input_dilation": 1,
              "kernel_dilation": 1, "feature_group_size": 1}
        states, _ = initial_states(ins, a, 2, lambda j: zeros((B, u, *spatial), x))
        flat = x.swapaxes(0, 1).reshape(T * B, *x.shape[2:])
        xw = conv(flat, p["input_kernel"], p.get("bias"), st).reshape(T, B, 4 * u, *spatial)
        return lstm_loop(xw, *states, None, lambda h: conv(h, p["hidden_kernel"], None, st),
                         sigmoid, tanh, ctx.xp, order="igfo", forget_bias=1.0)

    return kernel


def draw_state(x_shape: tuple, a: Mapping, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """Axon's ``rnn_state`` in NumPy on every backend (so they agree): ``(initializer(shape,
    float32, rng), next key)``, shape :func:`state_shape` of the input's, ``key`` (uint64)
    split in two as Axon splits its key: one seeds the draw, the other is the next key."""
    sub, nxt = np.random.default_rng(int(key)).integers(0, 2**63 - 1, 2)
    init = a["initializer"]
    fn = INITIALIZERS[init] if isinstance(init, str) else init
    shape = state_shape(tuple(int(d) for d in x_shape), a["units"], a["rnn"])
    y = np.asarray(fn(shape, np.dtype(np.float32), np.random.default_rng(int(sub))))
    return y.reshape(shape), np.asarray(nxt, np.uint64)


def state_kernel(convert: Callable[[np.ndarray, Any, KernelContext], Any]) -> Callable:
    """The recurrent_state kernel of a backend: ``convert(y, x, ctx)`` makes the NumPy draw
    its array (compute dtype, x's device); in train mode it returns the next key too."""
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
        y, key = draw_state(tuple(ins[0].shape), a, p["key"])
        y = convert(y, ins[0], ctx)
        return Stateful(y, {"key": key}) if ctx.training else y

    return kernel


def reverse(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """x flipped along ``attrs["axis"]`` (a copy)."""
    x = ins[0]
    return ctx.xp.flip(x, (a["axis"] % x.ndim,))
