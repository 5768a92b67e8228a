"""ONNX rules of Axon's recurrent layers (opset 13): lstm as one ``LSTM`` node, gru as one
``GRU`` node (``linear_before_reset=1``: Axon's ``r * (h U_n + bhn)``), conv_lstm unrolled
over its known sequence length (a ``Conv`` pair and the gate arithmetic per step), reverse
as a ``Slice`` with step -1. A masked lstm / gru (Axon's mask keeps the state at the masked
steps, which the ONNX nodes cannot) is unrolled too, with a ``Where`` per step.

The weights are laid out at export time: ONNX orders the LSTM gates i, o, f, c (graphdsl,
as Axon: i, f, g, o) and the GRU gates z, r, h (graphdsl: r, z, n), and takes ``W [1,
gates*u, features]``, ``R [1, gates*u, u]``, ``B [1, 2*gates*u]`` (input then recurrent
biases; gru's bhn is the recurrent bias of h).
"""
from __future__ import annotations

import numpy as np

from graphdsl.errors import GraphDSLError
from graphdsl.ops.nn import ACTIVATIONS as OPTIONS

from .builder import Builder
from .conv import conv_nd
from .layer import ACTIVATIONS, Layer, Rule

_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}  # ONNX's gate k is graphdsl's _ORDER[k]
_ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign",
         "softplus": "Softplus"}
_INT64_MIN = -(2**63)


def _refuse(layer: Layer, what: str, fix: str) -> GraphDSLError:
    return GraphDSLError(what, layer=layer.name, op=layer.op, fix=fix,
                         where=layer.node.where if layer.node else None)


def _permuted(m: np.ndarray, op: str) -> np.ndarray:
    blocks = np.split(np.asarray(m, np.float32), len(_ORDER[op]), axis=-1)
    return np.concatenate([blocks[k] for k in _ORDER[op]], axis=-1)


def _onnx_weights(layer: Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W, R, B`` in ONNX's layout and gate order."""
    op, a, arr = layer.op, layer.attrs, layer.arrays
    u, g = a["units"], len(_ORDER[layer.op])
    W = _permuted(arr["input_kernel"], op).T[None]
    R = _permuted(arr["hidden_kernel"], op).T[None]
    bias = np.asarray(arr["bias"], np.float32) if "bias" in arr else np.zeros(
        (g + (op == "gru")) * u, np.float32)
    if op == "lstm":
        wb, rb = bias, np.zeros_like(bias)
    else:
        wb, rb = bias[:3 * u], np.concatenate([np.zeros(2 * u, np.float32), bias[3 * u:]])
    return W, R, np.concatenate([_permuted(wb, op), _permuted(rb, op)])[None]


def _rnn(b: Builder, layer: Layer) -> str:
    a, op = layer.attrs, layer.op
    if a["mask"]:
        return _masked(b, layer)
    bad = [act for act in (a["gate"], a["activation"]) if act not in _ACTS]
    if bad:
        raise _refuse(layer, f"ONNX {op.upper()} has no activation {bad[0]!r}",
                      f"use one of {sorted(_ACTS)} for gate and activation")
    W, R, B = _onnx_weights(layer)
    n = 2 if op == "lstm" else 1
    # ONNX Runtime aborts the process on an LSTM/GRU over a batch of 0 (one zero row is
    # padded on the batch axis, axis 1 of every ONNX tensor here, and sliced off after) and
    # on a GRU over 0 steps (refused at run time, as the other backends refuse it)
    pad, x = b.ints([0, 0, 0, 0, 1, 0]), layer.ins[0]
    if layer.in_shapes[0][1] is None:
        x = b.refuse(x, b.op("Equal", [b.dim(x, 1), b.ints([0])]))
    x = b.op("Pad", [b.op("Transpose", [x], perm=[1, 0, 2]), pad])
    states = [b.op("Pad", [b.unsqueeze(s, [0]), pad]) for s in layer.ins[1:1 + n]] \
        if a["state"] else ["", ""]
    acts = [_ACTS[a["gate"]], _ACTS[a["activation"]]] + (
        [_ACTS[a["activation"]]] if op == "lstm" else [])
    # named by the parameters' owner: the calls of one block (bidirectional's two
    # directions) share one W, R, B as they share the parameters
    owner = (layer.node.params[0].owner if layer.node else None) or layer.name
    names = [f"{owner}.{k}" for k in "WRB"]
    ins = [x, *(n if n in b.initializers else b.weight(v, n)
                for n, v in zip(names, (W, R, B))), ""]
    if op == "lstm":  # initial_h, initial_c: graphdsl's states are (c, h)
        ins += [states[1], states[0]]
        y, yh, yc = b.op("LSTM", ins, 3, hidden_size=a["units"], activations=acts)
        last = [yc, yh]
    else:
        ins += [states[0]]
        y, yh = b.op("GRU", ins, 2, hidden_size=a["units"], activations=acts,
                     linear_before_reset=1)
        last = [yh]
    seq = b.op("Squeeze", [y, b.ints([1])])
    outs = [b.op("Transpose", [b.slice(v, 0, -1, 1)], perm=[1, 0, 2]) for v in [*last, seq]]
    return b.op("Concat", outs, axis=1)


def _steps(layer: Layer) -> int:
    shape = layer.in_shapes[0]
    if shape[1] is None:
        what = "a masked " + layer.op if layer.op != "conv_lstm" else "conv_lstm"
        raise _refuse(layer, f"{what} exports to ONNX unrolled, over a known sequence "
                      f"length (input {tuple(shape)})", "declare the sequence length in "
                      "the input's shape, e.g. (None, 8, 16)")
    return shape[1]


def _step(b: Builder, x: str, t: int) -> str:
    """``x[:, t]``."""
    return b.op("Squeeze", [b.op("Gather", [x, b.ints([t])], axis=1), b.ints([1])])


def _masked(b: Builder, layer: Layer) -> str:
    """A masked lstm / gru unrolled: Axon's cell per step, the state kept where the mask
    is nonzero."""
    a, op, u = layer.attrs, layer.op, layer.attrs["units"]
    T, n, x = _steps(layer), 2 if layer.op == "lstm" else 1, layer.ins[0]
    gate, act = (lambda v, k=k: ACTIVATIONS[a[k]](b, v, OPTIONS[a[k]])
                 for k in ("gate", "activation"))
    xw = b.op("MatMul", [x, layer.param("input_kernel")])
    bias = layer.param("bias") if "bias" in layer.arrays else None
    if bias is not None:
        xw = b.op("Add", [xw, bias if op == "lstm" else b.slice(bias, 0, 3 * u, 0)])
    zeros = b.full(b.op("Concat", [b.dim(x, 0), b.ints([u])], axis=0))
    states = list(layer.ins[1:1 + n]) if a["state"] else [zeros] * n
    m = b.op("Cast", [layer.ins[-1]], to=b.elem("float32"))
    outs = []
    for t in range(T):
        keep = b.op("Not", [b.op("Equal", [b.op("Gather", [m, b.ints([t])], axis=1),
                                           b.const(0.0)])])
        h = states[-1]
        xs = b.op("Split", [_step(b, xw, t), b.ints([u] * len(_ORDER[op]))], len(_ORDER[op]),
                  axis=1)
        hs = b.op("Split", [b.op("MatMul", [h, layer.param("hidden_kernel")]),
                            b.ints([u] * len(_ORDER[op]))], len(_ORDER[op]), axis=1)
        if op == "lstm":
            i, f, g, o = (b.op("Add", [p, q]) for p, q in zip(xs, hs))
            c = b.op("Add", [b.op("Mul", [gate(f), states[0]]),
                             b.op("Mul", [gate(i), act(g)])])
            new = [c, b.op("Mul", [gate(o), act(c)])]
        else:
            r, z = (gate(b.op("Add", [p, q])) for p, q in zip(xs[:2], hs[:2]))
            hn = hs[2] if bias is None else b.op("Add", [hs[2], b.slice(bias, 3 * u, None, 0)])
            nn = act(b.op("Add", [xs[2], b.op("Mul", [r, hn])]))
            new = [b.op("Add", [nn, b.op("Mul", [z, b.op("Sub", [h, nn])])])]
        states = [b.op("Where", [keep, s, v]) for s, v in zip(states, new)]
        outs.append(b.unsqueeze(states[-1], [1]))
    return b.op("Concat", [b.unsqueeze(s, [1]) for s in states] + outs, axis=1)


def _conv_lstm(b: Builder, layer: Layer) -> str:
    a, shape = layer.attrs, layer.in_shapes[0]
    T = _steps(layer)
    conv = {"channels": "first", "kernel_size": a["kernel_size"], "strides": a["strides"],
            "padding": a["padding"], "input_dilation": 1, "kernel_dilation": 1,
            "feature_group_size": 1}
    wi, wh = layer.param("input_kernel"), layer.param("hidden_kernel")
    bias = layer.param("bias") if "bias" in layer.arrays else None
    h_shape = (shape[0], a["units"], *shape[3:])
    c = h = None
    if a["state"]:
        c, h = (b.op("Squeeze", [s, b.ints([1])]) for s in layer.ins[1:3])
    outs = []
    for t in range(T):
        z = conv_nd(b, _step(b, layer.ins[0], t), (shape[0], *shape[2:]), conv, wi, bias)
        if h is not None:  # a zero state adds nothing: step 0 without a state skips it
            z = b.op("Add", [z, conv_nd(b, h, h_shape, conv, wh, None)])
        i, g, f, o = b.op("Split", [z, b.ints([a["units"]] * 4)], 4, axis=1)
        new = b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [g])])
        if c is not None:
            forget = b.op("Sigmoid", [b.op("Add", [f, b.const(1.0)])])
            new = b.op("Add", [b.op("Mul", [forget, c]), new])
        c = new
        h = b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [c])])
        outs.append(b.unsqueeze(h, [1]))
    return b.op("Concat", [b.unsqueeze(c, [1]), b.unsqueeze(h, [1]), *outs], axis=1)


def _state(b: Builder, layer: Layer) -> str:
    """A zeros recurrent_state (its batch read from x); a random one has no exact export."""
    a, x = layer.attrs, layer.in_shapes[0]
    if not (isinstance(a["initializer"], str) and a["initializer"] == "zeros"):
        raise _refuse(layer, f"the random initial {a['rnn']} state (recurrent_initializer="
                      f"{a['initializer']!r}) has no ONNX export: ONNX cannot draw it from "
                      "the layer's key", f"pass hidden_state=(...) to gd.{a['rnn']} (e.g. "
                      "gd.input nodes) or recurrent_initializer='zeros'")
    dims = [b.dim(layer.ins[0], 0)] + ([b.ints([1, a["units"]])] + [
        b.dim(layer.ins[0], i, x[i]) for i in range(3, len(x))] if a["rnn"] == "conv_lstm"
        else [b.ints([a["units"]])])
    return b.full(b.op("Concat", dims, axis=0))


def _reverse(b: Builder, layer: Layer) -> str:
    ax = layer.attrs["axis"] % len(layer.in_shapes[0])
    return b.op("Slice", [layer.ins[0], b.ints([-1]), b.ints([_INT64_MIN]), b.ints([ax]),
                          b.ints([-1])])


RECURRENT_RULES: dict[str, Rule] = {"lstm": Rule(_rnn), "gru": Rule(_rnn),
                                    "conv_lstm": Rule(_conv_lstm), "reverse": Rule(_reverse),
                                    "recurrent_state": Rule(_state)}

__all__ = ["RECURRENT_RULES"]
