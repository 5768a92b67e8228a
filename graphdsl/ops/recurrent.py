"""Axon's recurrent layers: lstm, gru, conv_lstm and bidirectional.

Each recurrent layer is one node whose output packs the final state and the output
sequence along the time axis (axis 1), states first: lstm ``[batch, 2 + seq, units]``
(cell, hidden, then the sequence), gru ``[batch, 1 + seq, units]``, conv_lstm ``[batch,
2 + seq, units, *spatial]``. The constructors return Axon's structure of ``slice`` /
``reshape`` views of it: ``(output_sequence, (cell, hidden))`` (gru: ``(output_sequence,
(hidden,))``), so every backend, file format and ONNX export handles them as plain nodes.

Parameters are flat arrays with the gates concatenated on the last axis in Axon's order:
lstm ``input_kernel [features, 4u]``, ``hidden_kernel [u, 4u]``, ``bias [4u]`` (i, f, g, o);
gru ``[features, 3u]``, ``[u, 3u]`` (r, z, n) and ``bias [4u]`` (br, bz, bin, bhn); each
gate block is drawn by the initializer on its own, as Axon draws its per-gate maps.
conv_lstm: Axon's channels-first conv kernels ``input_kernel [4u, C, *k]``, ``hidden_kernel
[4u, u, *k]``, ``bias [4u]`` (gates i, g, f, o; forget gate ``sigmoid(f + 1)``).

``recurrent_state`` is Axon's random initial state (``rnn_state``): without ``hidden_state``
and with a ``recurrent_initializer`` other than zeros, each state is such a layer of x,
drawing ``initializer(shape, rng)`` from its ``key`` state entry (advanced in train mode).

``reverse`` (x flipped along one axis) is the op bidirectional runs the backward pass on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

from ..block import block as make_block
from ..errors import GraphDSLError, OptionError, RuleError, fmt_shape
from ..initializers import INITIALIZERS, check_initializer, param_rng
from ..node import Node, caller_location, make_node
from ..registry import RNG_KEY, OpDef, ParamSpec, register_op
from ..shapes import normalize_axis
from ..windows import expand, padding_option, spatial_option, window
from ._attrs import boolean, positive_int
from .nn import activation_name
from .tensor import concatenate

#: gates per op, and how many state tensors lead the packed output
GATES = {"lstm": 4, "gru": 3, "conv_lstm": 4}
STATES = {"lstm": 2, "gru": 1, "conv_lstm": 2}
RECURRENT = frozenset(GATES)


def per_gate(init: Any, gates: int) -> Callable:
    """An initializer drawing each of ``gates`` blocks of the last axis on its own (Axon's
    per-gate maps ``wii, wif, ...``), the blocks concatenated."""
    return partial(_draw_gates, init, gates)  # a partial of the name: models pickle


def _draw_gates(init: Any, gates: int, shape: tuple, dtype: Any,
                rng: np.random.Generator) -> np.ndarray:
    fn = INITIALIZERS[init] if isinstance(init, str) else init
    part = (*shape[:-1], shape[-1] // gates)
    return np.concatenate([np.asarray(fn(part, dtype, rng)) for _ in range(gates)], -1)


def _attrs(op: str) -> Callable[[dict], dict]:
    def check(a: dict) -> dict:
        unroll = a.get("unroll", "dynamic")
        if unroll not in ("dynamic", "static"):
            raise RuleError(f"unroll must be 'dynamic' or 'static', got {unroll!r}",
                            "pass unroll='dynamic' (a loop) or 'static'", OptionError)
        out = {"units": positive_int(a.get("units"), "units"), "unroll": unroll,
               "use_bias": boolean(a.get("use_bias", True), "use_bias"),
               "kernel_initializer": check_initializer(
                   a.get("kernel_initializer", "glorot_uniform"), "kernel_initializer"),
               "bias_initializer": check_initializer(a.get("bias_initializer", "zeros"),
                                                     "bias_initializer"),
               "state": boolean(a.get("state", False), "state"),
               "mask": boolean(a.get("mask", False), "mask")}
        if op == "conv_lstm":
            return {**out, "kernel_size": spatial_option(a.get("kernel_size", 1), "kernel_size"),
                    "strides": spatial_option(a.get("strides", 1), "strides"),
                    "padding": padding_option(a.get("padding", "same"))}
        return {**out, "activation": activation_name(a.get("activation", "tanh")),
                "gate": activation_name(a.get("gate", "sigmoid"))}

    return check


def _check_state(op: str, s: list, want: tuple, a: dict) -> None:
    """The state inputs (after x) have the shape the layer's state has; the mask [batch, seq]."""
    k, n = 1, 1 + STATES[op] * a["state"] + a["mask"]
    if len(s) != n:
        raise RuleError(f"{op} has {len(s)} inputs, its options (state={a['state']}, "
                        f"mask={a['mask']}) ask for {n}", f"build it with gd.{op}(...)")
    if a["state"]:
        for j in range(STATES[op]):
            got = s[k + j]
            if len(got) != len(want) or any(g is not None and w is not None and g != w
                                             for g, w in zip(got, want)):
                raise RuleError(f"{op} hidden state {j} has shape {fmt_shape(got)}, the layer's "
                            f"state is {fmt_shape(want)}", "pass states of that shape (as a "
                            f"previous {op} layer returns them)")
        k += STATES[op]
    if a["mask"] and (len(s[k]) != 2 or None not in (s[k][1], s[0][1]) and s[k][1] != s[0][1]):
        raise RuleError(f"{op} mask must be [batch, seq] for the input {fmt_shape(s[0])}, got "
                        f"{fmt_shape(s[k])}",
                    "pass a [batch, seq] mask (1: keep the previous state at that step)")


def check_input(op: str, x: tuple) -> tuple:
    """``x`` when its rank and feature (channel) axis suit ``op``'s input."""
    if op == "conv_lstm" and (not 4 <= len(x) <= 6 or x[2] is None):
        raise RuleError(f"conv_lstm input must be [batch, seq, channels, *spatial] with 1 to 3 "
                    f"spatial axes and known channels, got {fmt_shape(x)}",
                    "pass e.g. gd.input('x', (None, 4, 3, 8, 8)) (channels first, as Axon)")
    if op != "conv_lstm" and (len(x) != 3 or x[2] is None):
        raise RuleError(f"{op} input must be rank 3 [batch, seq, features] with known "
                        f"features, got {fmt_shape(x)}", "pass e.g. gd.input('x', (None, 10, 8))")
    return x


def _seq(x: tuple, op: str) -> Any:
    if x[1] == 0:
        raise RuleError(f"{op} over a sequence of 0 steps (input {fmt_shape(x)})",
                        "give the sequence at least one step")
    return None if x[1] is None else x[1] + STATES[op]


def _rnn_shape(op: str) -> Callable:
    def shape(s: list, a: dict) -> tuple:
        x = check_input(op, s[0])
        _check_state(op, s, (x[0], a["units"]), a)
        return (x[0], _seq(x, op), a["units"])

    return shape


def _rnn_params(op: str) -> Callable:
    def params(s: list, a: dict) -> list[ParamSpec]:
        u, g = a["units"], GATES[op]
        ps = [ParamSpec("input_kernel", (s[0][2], g * u), per_gate(a["kernel_initializer"], g)),
              ParamSpec("hidden_kernel", (u, g * u), per_gate(a["kernel_initializer"], g))]
        if a["use_bias"]:
            nb = 4 if op == "gru" else g
            ps.append(ParamSpec("bias", (nb * u,), per_gate(a["bias_initializer"], nb)))
        return ps

    return params


def conv_geometry(x: tuple, a: Any) -> tuple[int, tuple]:
    """conv_lstm's ``(channels, spatial)`` of ``x [batch, seq, C, *spatial]``; the convs of
    the input and of the hidden state must keep the spatial sizes (Axon adds them)."""
    check_input("conv_lstm", x)
    spatial = tuple(x[3:])
    w = window(spatial, a["kernel_size"], {**a, "channels": "first"}, "the conv_lstm window")
    if any(o is not None and o != n for o, n in zip(w.out, spatial)):
        raise RuleError(f"conv_lstm's conv maps the spatial sizes {spatial} to {w.out}; the gates "
                    "are added to a state of the input's spatial size", "use strides=1 and "
                    "padding='same' (Axon's default), or pads that keep the size")
    return x[2], spatial


def _conv_shape(s: list, a: dict) -> tuple:
    _, spatial = conv_geometry(s[0], a)
    x = s[0]
    _check_state("conv_lstm", s, (x[0], 1, a["units"], *spatial), a)
    return (x[0], _seq(x, "conv_lstm"), a["units"], *spatial)


def _conv_params(s: list, a: dict) -> list[ParamSpec]:
    c, spatial = conv_geometry(s[0], a)
    k = expand(a["kernel_size"], len(spatial), "kernel_size")
    u = a["units"]
    ps = [ParamSpec("input_kernel", (4 * u, c, *k), a["kernel_initializer"]),
          ParamSpec("hidden_kernel", (4 * u, u, *k), a["kernel_initializer"])]
    if a["use_bias"]:
        ps.append(ParamSpec("bias", (4 * u,), a["bias_initializer"]))
    return ps


_DOC = ("Output packs the final state(s) then the sequence on axis 1 (the constructor "
        "returns Axon's (output_sequence, state) views of it). Optional inputs after x: the "
        "initial state (attr state) and a [batch, seq] mask (attr mask; 1 keeps the previous "
        "state at that step). unroll 'static' and 'dynamic' compute the same values.")
register_op(OpDef(
    "lstm", _rnn_shape("lstm"), params=_rnn_params("lstm"), check_attrs=_attrs("lstm"),
    arity=(1, 4), doc="Axon's LSTM over x [batch, seq, features]: i, f, g, o gates, "
    "c' = f*c + i*g, h' = o*activation(c'); input_kernel [features, 4u], hidden_kernel "
    "[u, 4u], bias [4u]. Output [batch, 2 + seq, u]. " + _DOC))
register_op(OpDef(
    "gru", _rnn_shape("gru"), params=_rnn_params("gru"), check_attrs=_attrs("gru"),
    arity=(1, 3), doc="Axon's GRU over x [batch, seq, features]: r, z gates, n = "
    "activation(x W_n + bin + r*(h U_n + bhn)), h' = (1-z)*n + z*h; input_kernel "
    "[features, 3u], hidden_kernel [u, 3u], bias [4u] (br, bz, bin, bhn). Output "
    "[batch, 1 + seq, u]. " + _DOC))
register_op(OpDef(
    "conv_lstm", _conv_shape, params=_conv_params, check_attrs=_attrs("conv_lstm"),
    arity=(1, 3), doc="Axon's ConvLSTM over x [batch, seq, C, *spatial] (channels first): "
    "gates i, g, f, o from conv(x, input_kernel [4u, C, *k]) + bias + conv(h, hidden_kernel "
    "[4u, u, *k]), forget gate sigmoid(f + 1); states [batch, 1, u, *spatial]. Output "
    "[batch, 2 + seq, u, *spatial]. " + _DOC))


def _reverse_attrs(a: dict) -> dict:
    return {"axis": a.get("axis", 1)}


def _reverse_shape(s: list, a: dict) -> tuple:
    normalize_axis(a["axis"], len(s[0]))
    return s[0]


register_op(OpDef(
    "reverse", _reverse_shape, check_attrs=_reverse_attrs, infer_dtype=lambda d, a: d[0],
    doc="x with the order of `axis` reversed (Nx.reverse); the shape unchanged."))


def reverse(x: Node, axis: int = 1, name: str | None = None) -> Node:
    """``x`` (any shape) reversed along ``axis`` (``Nx.reverse``), shape unchanged."""
    return make_node("reverse", [x], {"axis": axis}, name, where=caller_location())


# -- recurrent_state: Axon's rnn_state --------------------------------------------------------
def state_shape(x: tuple, units: int, rnn: str) -> tuple:
    """``Axon.Shape.rnn_hidden_state`` of input ``x``: ``[batch, units]`` (lstm, gru) or
    ``[batch, 1, units, *spatial]`` (conv_lstm)."""
    return (x[0], 1, units, *x[3:]) if rnn == "conv_lstm" else (x[0], units)


def _state_attrs(a: dict) -> dict:
    rnn, seed, part = a.get("rnn"), a.get("seed"), a.get("part", "h")
    if rnn not in RECURRENT or part not in ("c", "h"):
        raise RuleError(f"recurrent_state needs rnn in {sorted(RECURRENT)} and part 'c' or "
                        f"'h', got {rnn!r}, {part!r}", "build it with gd.lstm / gd.gru / "
                        "gd.conv_lstm", OptionError)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise RuleError(f"seed must be an integer or None, got {seed!r}",
                        "pass seed=42, or leave it out (the key then comes from the build "
                        "seed)", OptionError)
    return {"units": positive_int(a.get("units"), "units"), "rnn": rnn, "part": part,
            "seed": None if seed is None else int(seed),
            "initializer": check_initializer(a.get("initializer", "glorot_uniform"),
                                             "recurrent_initializer")}


def _seeded_key(seed: int, part: str) -> ParamSpec:
    """The key entry drawn from ``seed`` alone (Axon's ``Nx.Random.key(seed)``), not the
    build seed; c and h get keys of their own."""
    def draw(shape: tuple, dtype: Any, rng: np.random.Generator) -> np.ndarray:
        return INITIALIZERS["rng_key"](shape, dtype, param_rng(seed, "recurrent_state", part))

    return ParamSpec("key", (), draw, False, kind="state", dtype="uint64")


register_op(OpDef(
    "recurrent_state", lambda s, a: state_shape(check_input(a["rnn"], s[0]), a["units"],
                                                a["rnn"]),
    check_attrs=_state_attrs, params=lambda s, a: [
        RNG_KEY if a["seed"] is None else _seeded_key(a["seed"], a["part"])],
    doc="Axon's random initial RNN state (rnn_state) of x [batch, seq, ...]: "
        "initializer(shape, rng) with shape [batch, units] (lstm, gru) or [batch, 1, units, "
        "*spatial] (conv_lstm), the rng from the key state entry; in train mode the key "
        "advances, at inference it stays. State: key (from seed=, else the build seed)."))


# -- constructors ------------------------------------------------------------------------------
def _unpack(op: str, node: Node, units: int, spatial: tuple, name: str | None, where: str
            ) -> tuple:
    """Axon's ``(output_sequence, states)`` views of the packed output."""
    def named(suffix: str) -> str | None:
        return None if name is None else f"{name}_{suffix}"

    n = STATES[op]
    seq = make_node("slice", [node], {"start": n, "stop": None, "axis": 1},
                    named("output_sequence"), where=where)
    lead = (1,) if op == "conv_lstm" else ()
    labels = ["c_hidden_state", "h_hidden_state"] if n == 2 else ["hidden_state"]
    states = tuple(make_node("reshape", [make_node("slice", [node], {
        "start": j, "stop": j + 1, "axis": 1}, where=where)], {
            "shape": (None, *lead, units, *spatial)}, named(labels[j]), where=where)
        for j in range(n))
    return seq, states


def _rnn(op: str, x: Node, units: int, hidden_state: Any, mask: Node | None, attrs: dict,
         name: str | None, where: str) -> tuple:
    states = []
    if hidden_state is not None:
        if not isinstance(hidden_state, (tuple, list)) or len(hidden_state) != STATES[op]:
            want = "(cell, hidden)" if STATES[op] == 2 else "(hidden,)"
            raise GraphDSLError(f"{op} hidden_state must be a tuple {want} of nodes, got "
                                f"{hidden_state!r}", layer=name, op=op, where=where,
                                fix=f"pass hidden_state={want} (e.g. a previous {op}'s state)")
        states = list(hidden_state)
    init, seed = attrs.pop("recurrent_initializer"), attrs.pop("seed")
    if hidden_state is not None and (seed is not None or init != "glorot_uniform"):
        raise GraphDSLError(f"{op} was given hidden_state and also "
                            f"{'seed' if seed is not None else 'recurrent_initializer'}, "
                            "which only draw a state when none is given", layer=name, op=op,
                            where=where, fix="drop recurrent_initializer/seed, or drop "
                            "hidden_state to draw the initial state (Axon refuses both too)")
    if hidden_state is None and not (isinstance(init, str) and init == "zeros"):
        states = [make_node("recurrent_state", [x], {
            "units": units, "rnn": op, "part": part, "initializer": init, "seed": seed},
            None if name is None else f"{name}_{part}_initial_state", where=where)
            for part in ("c", "h")[2 - STATES[op]:]]
    ins = [x, *states] + ([mask] if mask is not None else [])
    node = make_node(op, ins, {"units": units, "state": bool(states),
                               "mask": mask is not None, **attrs}, name, where=where)
    spatial = tuple(node.shape[3:])
    return _unpack(op, node, units, spatial, name, where)


def lstm(x: Node, units: int, hidden_state: tuple[Node, Node] | None = None, *,
         activation: str = "tanh", gate: str = "sigmoid", unroll: str = "dynamic",
         use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
         recurrent_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
         mask: Node | None = None, seed: int | None = None, name: str | None = None) -> tuple:
    """Axon's LSTM over ``x [batch, seq, features]``.

    Per step (Axon's ``lstm_cell``): ``z = x_t @ input_kernel + bias + h @ hidden_kernel``
    split into gates i, f, g, o; ``c' = gate(f)*c + gate(i)*activation(g)``, ``h' =
    gate(o)*activation(c')``. Parameters ``input_kernel [features, 4u]``, ``hidden_kernel
    [u, 4u]``, ``bias [4u]``, gates concatenated in that order (torch's ``weight_ih_l0`` is
    ``input_kernel.T``, ``bias_ih_l0`` the bias and ``bias_hh_l0`` zeros).

    Without ``hidden_state``, as Axon's ``rnn_state``, each state is a ``recurrent_state``
    layer ``{name}_c_initial_state`` / ``{name}_h_initial_state`` ``[batch, units]`` drawn
    by ``recurrent_initializer`` from its ``key`` state entry: repeatable at inference, the
    key advancing per train-mode call.

    Args:
        x: input node ``[batch, seq, features]``.
        units: hidden size ``u``.
        hidden_state: ``(cell, hidden)`` nodes ``[batch, units]``, or None (see above).
        activation: the cell activation (element-wise, default ``"tanh"``).
        gate: the gate activation (default ``"sigmoid"``).
        unroll: ``"dynamic"`` or ``"static"`` (changes nothing in the values).
        use_bias: add the bias.
        kernel_initializer: initializer for ``input_kernel`` (default ``"glorot_uniform"``).
        recurrent_initializer: initializer for ``hidden_kernel`` and the random initial
            state (default ``"glorot_uniform"``; ``"zeros"`` starts from zeros with no extra
            layer, torch's default, and exports to ONNX, a random state does not).
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        mask: optional ``[batch, seq]`` node (e.g. ``graphdsl.mask``): where nonzero the
            step keeps the previous state and outputs the previous hidden, as Axon's.
        seed: the initial state's RNG seed (Axon's option, which Axon defaults to the
            clock); default from the build seed and the layer's name.
        name: layer name (default ``"lstm_{n}"``).

    Returns:
        (tuple): ``(output_sequence [batch, seq, units], (cell, hidden))``, states ``[batch,
        units]``.

    Raises:
        ShapeError: ``x`` is not rank 3 or ``hidden_state`` does not fit.
        OptionError: a bad ``units``, activation, ``unroll`` or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 5, 3))
        >>> seq, (c, h) = gd.lstm(x, 4, recurrent_initializer="zeros")
        >>> gd.get_output_shape(seq, (2, 5, 3)), gd.get_output_shape(h, (2, 5, 3))
        ((2, 5, 4), (2, 4))
    """
    return _rnn("lstm", x, units, hidden_state, mask, {
        "activation": activation, "gate": gate, "unroll": unroll, "use_bias": use_bias,
        "kernel_initializer": kernel_initializer, "bias_initializer": bias_initializer,
        "recurrent_initializer": recurrent_initializer, "seed": seed}, name,
        caller_location())


def gru(x: Node, units: int, hidden_state: tuple[Node] | None = None, *,
        activation: str = "tanh", gate: str = "sigmoid", unroll: str = "dynamic",
        use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
        mask: Node | None = None, seed: int | None = None, name: str | None = None) -> tuple:
    """Axon's GRU over ``x [batch, seq, features]``.

    Per step (Axon's ``gru_cell``): ``r = gate(x W_r + br + h U_r)``, ``z = gate(x W_z + bz
    + h U_z)``, ``n = activation(x W_n + bin + r*(h U_n + bhn))``, ``h' = (1-z)*n + z*h``.
    Parameters ``input_kernel [features, 3u]`` and ``hidden_kernel [u, 3u]`` (r, z, n),
    ``bias [4u]`` (br, bz, bin, bhn): torch's ``bias_ih_l0`` is ``[br, bz, bin]`` with
    ``bias_hh_l0 = [0, 0, bhn]``. Initial state, ``mask``, ``unroll`` and ``seed`` as
    ``lstm``.

    Args:
        x: input node ``[batch, seq, features]``.
        units: hidden size ``u``.
        hidden_state: ``(hidden,)``, a 1-tuple of a ``[batch, units]`` node, or None.
        activation: the candidate activation (default ``"tanh"``).
        gate: the gate activation (default ``"sigmoid"``).
        unroll: ``"dynamic"`` or ``"static"`` (changes nothing in the values).
        use_bias: add the bias.
        kernel_initializer: initializer for ``input_kernel`` (default ``"glorot_uniform"``).
        recurrent_initializer: initializer for ``hidden_kernel`` and the random initial
            state (default ``"glorot_uniform"``; ``"zeros"`` starts from zeros with no extra
            layer, torch's default, and exports to ONNX, a random state does not).
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        mask: optional ``[batch, seq]`` node; nonzero steps keep the previous state.
        seed: the initial state's RNG seed.
        name: layer name (default ``"gru_{n}"``).

    Returns:
        (tuple): ``(output_sequence [batch, seq, units], (hidden [batch, units],))``.

    Raises:
        ShapeError: ``x`` is not rank 3 or ``hidden_state`` does not fit.
        OptionError: a bad option.

    Examples:
        >>> x = gd.input("x", shape=(None, 5, 3))
        >>> seq, (h,) = gd.gru(x, 4, recurrent_initializer="zeros")
        >>> gd.get_output_shape(seq, (2, 5, 3))
        (2, 5, 4)
    """
    return _rnn("gru", x, units, hidden_state, mask, {
        "activation": activation, "gate": gate, "unroll": unroll, "use_bias": use_bias,
        "kernel_initializer": kernel_initializer, "bias_initializer": bias_initializer,
        "recurrent_initializer": recurrent_initializer, "seed": seed}, name,
        caller_location())


def conv_lstm(x: Node, units: int, hidden_state: tuple[Node, Node] | None = None, *,
              padding: Any = "same", kernel_size: int | tuple = 1, strides: int | tuple = 1,
              unroll: str = "dynamic", use_bias: bool = True,
              kernel_initializer: Any = "glorot_uniform",
              recurrent_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
              mask: Node | None = None, seed: int | None = None, name: str | None = None
              ) -> tuple:
    """Axon's ConvLSTM over ``x [batch, seq, C, *spatial]`` (channels first, 1-3 spatial axes).

    Per step (Axon's ``conv_lstm_cell``): gates = ``conv(x_t, input_kernel) + bias +
    conv(h, hidden_kernel)`` split into i, g, f, o; ``c' = sigmoid(f + 1)*c +
    sigmoid(i)*tanh(g)``, ``h' = sigmoid(o)*tanh(c')``. Parameters ``input_kernel [4u, C,
    *k]``, ``hidden_kernel [4u, u, *k]``, ``bias [4u]``. Both convs use ``strides`` and
    ``padding`` and must keep the spatial sizes. Initial state, ``unroll`` and ``seed`` as
    ``lstm``.

    Args:
        x: input node ``[batch, seq, C, *spatial]``.
        units: hidden channels ``u``.
        hidden_state: ``(cell, hidden)`` nodes ``[batch, 1, units, *spatial]``, or None.
        padding: the convs' padding (default ``"same"``).
        kernel_size: the convs' window, an int or one per spatial axis.
        strides: the convs' strides.
        unroll: ``"dynamic"`` or ``"static"`` (changes nothing in the values).
        use_bias: add the bias.
        kernel_initializer: initializer for ``input_kernel`` (default ``"glorot_uniform"``).
        recurrent_initializer: initializer for ``hidden_kernel`` and the random initial
            state (default ``"glorot_uniform"``; ``"zeros"`` starts from zeros with no extra
            layer, torch's default, and exports to ONNX, a random state does not).
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        mask: refused (Axon ignores a mask here).
        seed: the initial state's RNG seed.
        name: layer name (default ``"conv_lstm_{n}"``).

    Returns:
        (tuple): ``(output_sequence [batch, seq, units, *spatial], (cell, hidden))``, the
        states ``[batch, 1, units, *spatial]`` as Axon shapes them.

    Raises:
        ShapeError: the convs change the spatial sizes, or a bad rank.
        GraphDSLError: a ``mask`` was given.
        OptionError: a bad option.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 2, 6, 6))
        >>> seq, _ = gd.conv_lstm(x, 3, kernel_size=3, recurrent_initializer="zeros")
        >>> gd.get_output_shape(seq, (1, 4, 2, 6, 6))
        (1, 4, 3, 6, 6)
    """
    where = caller_location()
    if mask is not None:
        raise GraphDSLError("conv_lstm takes no mask (Axon's conv_lstm_cell ignores it)",
                            layer=name, op="conv_lstm", where=where,
                            fix="drop mask=, or use gd.lstm / gd.gru for masked sequences")
    return _rnn("conv_lstm", x, units, hidden_state, None, {
        "padding": padding, "kernel_size": kernel_size, "strides": strides, "unroll": unroll,
        "use_bias": use_bias, "kernel_initializer": kernel_initializer,
        "bias_initializer": bias_initializer, "recurrent_initializer": recurrent_initializer,
        "seed": seed}, name, where)


# -- bidirectional ------------------------------------------------------------------------------
def _leaves(out: Any) -> list[Node]:
    if isinstance(out, Node):
        return [out]
    return [leaf for item in (out.values() if isinstance(out, dict) else out)
            for leaf in _leaves(item)]


def _rebuild_like(out: Any, leaves: Iterator[Node]) -> Any:
    if isinstance(out, Node):
        return next(leaves)
    if isinstance(out, dict):
        return {k: _rebuild_like(v, leaves) for k, v in out.items()}
    return tuple(_rebuild_like(item, leaves) for item in out)


def bidirectional(x: Node, forward_fun: Callable[[Node], Any],
                  merge_fun: Callable[[Node, Node], Node] | None = None, *, axis: int = 1,
                  name: str | None = None) -> Any:
    """Axon's ``bidirectional``: ``forward_fun`` over ``x`` and over ``x`` reversed, merged.

    ``fun = gd.block(forward_fun, name=name)`` is applied to ``x`` and to ``x`` reversed
    along ``axis``; each leaf of the backward output is reversed back along ``axis`` (the
    states too, as Axon does) and merged with its forward leaf. Both directions are calls of
    the one block, so they share its parameters, which live under the block's name
    (``"{name}.lstm_0"``; unnamed ``"block_0.lstm_0"``; Axon nests them,
    ``%{"bidirectional" => %{"lstm" => ...}}``).

    Args:
        x: input node ``[batch, seq, ...]``.
        forward_fun: function of a node returning a node or a tuple/dict of nodes (e.g.
            ``lambda t: gd.lstm(t, 8)``); it may hold any layers.
        merge_fun: ``merge_fun(fwd, bwd) -> Node`` per leaf (default: concatenate on the
            last axis).
        axis: the reversed (time) axis.
        name: the block's name.

    Returns:
        (Any): ``forward_fun``'s structure with merged leaves (for lstm ``(sequence, (cell,
        hidden))``).

    Raises:
        GraphDSLError: ``forward_fun`` or ``merge_fun`` is not callable or returns no node.

    Examples:
        >>> x = gd.input("x", shape=(None, 5, 3))
        >>> seq, _ = gd.bidirectional(x, lambda t: gd.lstm(t, 4, recurrent_initializer="zeros"))
        >>> gd.get_output_shape(seq, (2, 5, 3))
        (2, 5, 8)
    """
    where = caller_location()
    fun = make_block(forward_fun, name=name)
    fwd = fun(x)
    bwd = fun(make_node("reverse", [x], {"axis": axis}, where=where))
    back = [make_node("reverse", [b], {"axis": axis}, where=where) for b in _leaves(bwd)]
    merge = merge_fun or (lambda a, b: concatenate([a, b], axis=-1))
    return _rebuild_like(fwd, iter([merge(f, b) for f, b in zip(_leaves(fwd), back)]))


__all__ = ["bidirectional", "conv_lstm", "gru", "lstm", "reverse"]
