"""The op case table: one row per sample of a registered op. The torch parity, ONNX, JSON,
model-file and empty-batch tests all parametrize over it (``cases_for(suite)``), and
tests/test_backend_coverage.py checks once that every registered op has a row in every
suite. Adding an op: one row here.

A row builds its model; it may give its inputs (else they are drawn from the declared
input shapes, batch 3), a tweak of the initialized state (so that parameters starting at
zero or one do something), a hand-written NumPy reference, a tolerance, and the suites it
stays out of, each with the reason.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from helpers import TOL, random_inputs

import graphdsl as gd
from graphdsl import dora, lora
from graphdsl import mixed_precision as mp
from graphdsl.node import make_node
from graphdsl.ops.recurrent import reverse

#: torch parity, ONNX export, JSON round trip, model files, batch 0 on every backend
SUITES = ("torch", "onnx", "json", "file", "empty")

R = np.random.default_rng(7)


@dataclass(frozen=True)
class Case:
    """One sample of ``op``. ``build() -> model``; ``inputs() -> {name: array}`` (None:
    drawn from the declared shapes); ``tweak(state)`` edits the initialized state in place;
    ``reference(inputs, state)`` is the expected output, computed by hand in NumPy."""

    op: str
    label: str
    build: Callable[[], gd.Node]
    inputs: Callable[[], dict[str, np.ndarray]] | None = None
    tweak: Callable[[gd.ModelState], None] | None = None
    reference: Callable[[dict[str, np.ndarray], gd.ModelState], Any] | None = None
    tol: dict[str, float] = field(default_factory=lambda: dict(TOL))
    skip: frozenset[str] = frozenset()  # suites this sample stays out of
    min_opset: int = 13  # the opset an ONNX export defaults to
    merged: tuple[str, str] | None = None  # adapters: (base kernel, adapter prefix) in ONNX
    train: bool = False  # also in the torch train-mode parity test

    @property
    def id(self) -> str:
        return f"{self.op}/{self.label}"

    def feed(self, model: gd.Node, rng: np.random.Generator | None = None
             ) -> dict[str, np.ndarray]:
        """The row's inputs, or ``model``'s drawn from ``rng`` (default: seed 0)."""
        if self.inputs is not None:
            return self.inputs()
        return random_inputs(model, rng if rng is not None else np.random.default_rng(0))

    def setup(self, rng: np.random.Generator | None = None
              ) -> tuple[gd.Node, dict[str, np.ndarray], gd.ModelState]:
        """``(model, inputs, state)``: the state initialized for the inputs, then tweaked."""
        model = self.build()
        inputs = self.feed(model, rng)
        state = gd.build(model)[0](dict(inputs))
        if self.tweak:
            self.tweak(state)
        return model, inputs, state


# -- custom-layer functions and initializers (registered, so the models save) --------------
@gd.register_function("cases_tanh_plus_square")
def custom_fn(a, b, xp, k=1.0):
    return xp.tanh(a) * k + b * b


@gd.register_onnx_rule(custom_fn)
def _custom_fn_onnx(b, a, z, k=1.0):
    return b.op("Add", [b.op("Mul", [b.op("Tanh", [a]), b.const(k)]), b.op("Mul", [z, z])])


@gd.register_function("ser_scaled_tanh")
def scaled_tanh(x, *, xp, k=1.0):
    return xp.tanh(x) * k


@gd.register_function("ser_pair_sum")
def pair_sum(a, b, *, xp):
    return a + 2 * b


@gd.register_function("ser_init_halves")
def init_halves(shape, dtype, rng):
    return np.full(shape, 0.5, dtype)


@gd.register_function("cases_sum_positive")
def sum_positive(x, *, xp):
    return xp.sum(x) > 0


@gd.register_onnx_rule(sum_positive)
def _sum_positive_onnx(b, x):
    return b.op("Greater", [b.op("ReduceSum", [x], keepdims=0), b.const(0.0)])


# -- builders --------------------------------------------------------------------------------
def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _x(shape=(None, 6), name="x"):
    return gd.input(name, shape)


def _ids(n=5, name="ids"):
    return gd.input(name, (None, n), dtype="int64")


def _img(c=3):
    return gd.input("img", (None, 6, 5, c))


def _on(f, shape=(None, 6)):
    return f(_x(shape))


def _normal(scale=1.0, offset=0.0, /, **shapes):
    """Inputs: standard normal draws of the given shapes, times ``scale`` plus ``offset``."""
    return lambda: {k: _f(*s) * scale + offset for k, s in shapes.items()}


def _token_ids():
    return {"ids": R.integers(0, 11, (3, 5))}


def _heads(x, n):  # (None, seq, n*4) -> (None, n, seq, 4)
    return gd.transpose(gd.reshape(x, (None, -1, n, 4)), (0, 2, 1, 3))


def _adapter(mod):
    def tweak(st):  # nonzero B and a moved magnitude, so the adapter does something
        st.data["ad"]["B"] = _f(2, 5)
        if "magnitude" in st.data["ad"]:
            st.data["ad"]["magnitude"] = st.data["ad"]["magnitude"] * 1.5

    def build():
        x = _x((None, 3, 6))
        return mod.wrap(x, gd.dense(x, 5, activation="tanh", name="base"), rank=2,
                        alpha=4.0, name="ad")

    return Case(mod.__name__.rsplit(".", 1)[-1], "values", build, _normal(x=(4, 3, 6)), tweak,
                merged=("base.kernel", "ad."), train=True)


def _attention():
    q, k, v = _x((None, 4, 5, 8), "q"), _x((None, 2, 7, 8), "k"), _x((None, 2, 7, 8), "v")
    mask = gd.reshape(_ids(7, "am"), (None, 1, 1, -1))
    return gd.container([gd.attention(q, k, v, mask=mask, causal=True, window=3),
                         gd.attention(q, k, v, scale=0.2)])


def _attention_inputs():
    return {**_normal(q=(3, 4, 5, 8), k=(3, 2, 7, 8), v=(3, 2, 7, 8))(),
            "am": np.array([[1] * 7, [0, 0] + [1] * 5, [1] * 4 + [0] * 3])}


def _tied():
    emb = gd.embedding(_ids(), 11, 6, name="emb", kernel_initializer="normal")
    return gd.tied_dense(gd.tanh(emb), emb, use_bias=True, name="head")


def _set(layer, **values):
    """A tweak: ``state.data[layer][param] = make()`` for each ``param=make``."""
    return lambda st: st.data[layer].update({k: make() for k, make in values.items()})


_Z = {"recurrent_initializer": "zeros"}  # the zero initial state (ONNX exports it)


def recurrent_state(x, **attrs):
    """A bare recurrent_state layer of ``x`` (gd.lstm & co. make it for a random state)."""
    return make_node("recurrent_state", [x], attrs)


def _rnn(out):
    """A recurrent layer's ``(sequence, states)`` as one container output."""
    seq, states = out
    return gd.container([seq, *states])




def _blurred(x, channels="last"):
    """blur_pool by hand: the padded input's 3x3 taps weighted by [1 2 1]^T [1 2 1] / 16."""
    if channels == "first":
        return np.moveaxis(_blurred(np.moveaxis(x, 1, -1)), -1, 1)
    h, w = x.shape[1:3]
    xp = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    taps = np.array([1.0, 2.0, 1.0])
    return sum(taps[i] * taps[j] / 16 * xp[:, i:i + h, j:j + w]
               for i in range(3) for j in range(3))


def _cond(offset):
    return Case("cond", "values" if offset > 0 else "attrs",
                lambda: _on(lambda x: gd.cond(x, sum_positive, gd.relu(x), gd.sigmoid(x),
                                              name=None if offset > 0 else "pick")),
                _normal(1.0, offset, x=(3, 6)),
                reference=lambda i, st: (np.maximum(i["x"], 0) if i["x"].sum() > 0
                                         else 1 / (1 + np.exp(-i["x"]))))


_IMG = (None, 7, 6, 4)
_IMG_IN = _normal(x=(3, 7, 6, 4))
_X = _normal(x=(3, 6))
_XZ = _normal(x=(3, 6), z=(3, 6))
_X46 = _normal(x=(3, 4, 6))
# without an ONNX rule, the export fails and ONNX Runtime cannot run the batch-0 sample
_NO_ONNX = frozenset({"onnx", "empty"})
_POS = (lambda: {"x": np.abs(_f(3, 3, 7, 6))})  # an odd norm's power average needs sums >= 0


def _block_twice():
    """A block used at two places (one after the other, and beside): one kernel pair."""
    blk = gd.block(lambda h: gd.dense(gd.dense(h, 5, activation="tanh"), 6), name="mlp")
    x = _x()
    return blk(blk(x)) + blk(x)


def _block_nested():
    """Axon's multiple-inputs block test: an inner block used on both inputs."""
    def body(a, b):
        inner = gd.block(lambda h: gd.dense(h, 4))
        return inner(b) + inner(a)
    return gd.dense(gd.block(body)(_x(), _x(name="z")), 3)


def _block_stateful():
    """A batch-norm body used twice: the state entries chain through the uses."""
    blk = gd.block(lambda h: gd.batch_norm(gd.dense(h, 6), momentum=0.3, name="bn"))
    return blk(blk(_x()))


def _block_outputs():
    """A block returning a tuple and a dict (nested), used twice; the outputs mixed."""
    blk = gd.block(lambda h: (gd.dense(h, 4, name="a"), {"r": gd.relu(h), "t": gd.tanh(
        gd.dense(h, 6))}), name="two")
    (a, d), (a2, d2) = blk(_x()), blk(_x(name="z"))
    return gd.container({"a": a * a2, "r": d2["r"], "t": d["t"] + d2["t"]})


# "values": chosen inputs and a tweaked state; "attrs": the op's non-default attributes
_ROWS = [
    Case("input", "values", lambda: gd.container([_x()]), _X),
    # float64 in: the to_torch module and the ONNX export compute in float32 and refuse it
    Case("input", "attrs", lambda: gd.input("x", (None, 3, 4), dtype="float64"),
         skip=frozenset({"torch", "onnx"})),
    Case("constant", "values", lambda: gd.add(_x(), gd.constant(np.linspace(-1, 1, 6))), _X),
    Case("constant", "attrs", lambda: gd.add(_x((None, 4)), gd.constant(
        np.arange(4, dtype=np.float32) / 3))),
    Case("constant", "int", lambda: gd.add(gd.input("i", (None, 3), dtype="int64"),
                                           gd.constant(np.array([1, 2, 3])))),
    Case("param", "values", lambda: gd.multiply(_x(), gd.param("p", (6,), "normal")), _X),
    Case("param", "attrs", lambda: gd.matmul(_x((None, 4)), gd.param(
        "w", (4, 2), initializer="he_normal", trainable=False))),
    Case("custom", "values", lambda: gd.layer(custom_fn, [_x(), _x(name="z")], k=2.0), _XZ),
    Case("custom", "attrs", lambda: gd.layer(scaled_tanh, _x(), name="custom", k=2.5),
         skip=_NO_ONNX),
    Case("custom", "two_inputs", lambda: gd.layer(pair_sum, [_x(), _x(name="z")],
                                                  name="pair"), skip=_NO_ONNX),
    # the optional input left out (its default runs) and given
    Case("optional", "values", lambda: _on(lambda x: gd.container([
        gd.add(x, gd.optional(_x(name="bias"), gd.full_like(x, 0.5))),
        gd.optional(_x(name="scale"), gd.full_like(x, 2.0))])),
        _normal(x=(3, 6), scale=(3, 6))),
    Case("optional", "attrs", lambda: _on(lambda x: gd.add(x, gd.optional(
        _x(name="bias"), gd.full_like(x, 0.5))))),
    Case("full_like", "values", lambda: (lambda ids: gd.container([
        gd.full_like(ids, 1), gd.full_like(ids, -1.5, dtype="float32")]))(_ids()),
        _token_ids),
    Case("full_like", "attrs", lambda: gd.full_like(_ids(), 1, dtype="float32")),
    Case("container", "values", lambda: _on(lambda x: gd.container({
        "a": gd.relu(x), "b": gd.container([gd.tanh(x), x])})), _X),
    Case("container", "attrs", lambda: _on(lambda x: gd.container({"a": gd.relu(x),
                                                                   "b": gd.tanh(x)}))),
    Case("container", "nested", lambda: _on(lambda x: gd.container(
        [gd.relu(x), gd.container({"t": gd.tanh(x)})]))),
    Case("dense", "values", lambda: gd.dense(_x((None, 2, 6)), 4, activation="silu"),
         _normal(x=(3, 2, 6)), train=True),
    Case("dense", "attrs", lambda: gd.dense(_x(), 3, activation="gelu", use_bias=False,
                                            kernel_initializer="he_uniform", name="fc")),
    Case("dense", "frozen", lambda: gd.freeze(gd.dense(gd.dense(_x(), 4, name="a"), 2,
                                                       name="b"), lambda n: n.name == "a")),
    Case("dense", "callable_init", lambda: gd.dense(_x(), 3, kernel_initializer=init_halves)),
    Case("dropout", "values", lambda: gd.dense(gd.dropout(_x(), 0.4), 3), _X),
    Case("dropout", "attrs", lambda: gd.dropout(gd.dense(_x(), 4), 0.25)),
    Case("layer_norm", "values", lambda: _on(lambda x: gd.add(gd.layer_norm(x), gd.layer_norm(
        x, axis=1, name="ln1")), (None, 4, 6)), _normal(3.0, 1.0, x=(3, 4, 6)), train=True),
    Case("layer_norm", "attrs", lambda: gd.layer_norm(_x(), epsilon=1e-3, center=False)),
    Case("embedding", "values", lambda: gd.embedding(_ids(), 11, 4,
                                                     kernel_initializer="normal"), _token_ids),
    Case("embedding", "attrs", lambda: gd.embedding(_ids(), 11, 4)),
    Case("add", "values", lambda: gd.add([_x(), _x((1, 6), name="z"),
                                          gd.constant(np.ones(6))]),
         _normal(x=(3, 6), z=(1, 6)), reference=lambda i, st: i["x"] + i["z"] + 1),
    Case("add", "attrs", lambda: _on(lambda x: gd.add([x, gd.dense(x, 6), gd.relu(x)]))),
    Case("add", "shared_input_diamond", lambda: _on(lambda x: gd.add(gd.relu(x),
                                                                     gd.tanh(x)))),
    Case("subtract", "values", lambda: gd.subtract([_x(), _x(name="z"),
                                                    _x((None, 1), name="w")]),
         _normal(x=(3, 6), z=(3, 6), w=(3, 1)),
         reference=lambda i, st: i["x"] - i["z"] - i["w"]),
    Case("subtract", "attrs", lambda: _on(lambda x: gd.subtract(x, gd.dense(x, 6)))),
    Case("multiply", "values", lambda: gd.multiply(_x(), _x(name="z")), _XZ,
         reference=lambda i, st: i["x"] * i["z"]),
    Case("multiply", "attrs", lambda: _on(lambda x: gd.multiply(x, gd.sigmoid(x)))),
    Case("concatenate", "values", lambda: gd.concatenate(
        [_x((None, 2, 6)), _x((None, 3, 6), "z")], axis=1), _normal(x=(4, 2, 6), z=(4, 3, 6)),
        reference=lambda i, st: np.concatenate([i["x"], i["z"]], axis=1)),
    Case("concatenate", "attrs", lambda: gd.concatenate([_x(), _x((None, 3), "y")], axis=-1)),
    # mixed precision's cast: float16 out (every backend returns it); the casts of a
    # policied dense computing in float16 (torch in float16, NumPy and ONNX in float32 on
    # values rounded to float16: float16's 2^-11 rounding of a 6-term dot product of
    # normal draws is well under 5e-3); integers unchanged
    Case("cast", "values", lambda: mp.cast(_x(), "float16"), _X,
         reference=lambda i, st: i["x"].astype(np.float16)),
    Case("cast", "compute", lambda: mp.apply_policy(gd.dense(_x(), 3), mp.create_policy(
        compute="float16", output="float32")), _X, tol={"rtol": 5e-3, "atol": 5e-3}),
    Case("cast", "ints", lambda: gd.embedding(mp.cast(_ids(), "float16"), 11, 4),
         _token_ids),
    Case("reshape", "values", lambda: gd.reshape(_x((None, 4, 6)), (None, -1, 2)), _X46,
         reference=lambda i, st: i["x"].reshape(3, 12, 2)),
    Case("reshape", "attrs", lambda: gd.reshape(_x(), (None, 3, -1))),
    Case("flatten", "values", lambda: gd.flatten(_x((None, 4, 6))), _X46),
    Case("flatten", "attrs", lambda: gd.flatten(gd.reshape(_x(), (None, 2, 3)))),
    Case("transpose", "values", lambda: gd.transpose(_x((None, 4, 6)), (0, -1, 1)), _X46,
         reference=lambda i, st: i["x"].transpose(0, 2, 1)),
    Case("transpose", "attrs", lambda: gd.transpose(gd.reshape(_x(), (None, 2, 3)),
                                                    (0, 2, 1))),
    Case("matmul", "values", lambda: gd.matmul(_x((None, 4, 6)), _x((None, 6, 2), "z")),
         _normal(x=(3, 4, 6), z=(3, 6, 2)), reference=lambda i, st: i["x"] @ i["z"]),
    Case("matmul", "attrs", lambda: gd.matmul(gd.reshape(_x(), (None, 2, 3)),
                                              gd.reshape(_x(name="y"), (None, 3, 2)))),
    Case("pad", "values", lambda: gd.pad(_img(), [(1, 0), (2, 1)], 2.0), reference=lambda i, st:
         np.pad(i["img"], [(0, 0), (1, 0), (2, 1), (0, 0)], constant_values=2.0)),
    Case("pad", "attrs", lambda: gd.pad(_x((None, 2, 3, 4, 2)), [(0, 1), (1, 1), (2, 0)], -1.0,
                                        channels="first")),
    Case("pad", "int", lambda: gd.pad(gd.input("ids", (None, 4, 2), dtype="int64"), [(1, 2)], 3),
         lambda: {"ids": R.integers(0, 9, (3, 4, 2))}),
    Case("bias", "values", lambda: gd.bias(_x((None, 4, 6)), bias_initializer="normal"), _X46),
    Case("bias", "attrs", lambda: gd.bias(gd.dense(_x(), 3), bias_initializer="ones")),
    _adapter(dora),
    Case("dora", "attrs", lambda: _on(lambda x: dora.wrap(
        x, gd.dense(x, 5, activation="relu", name="attn"), rank=2, alpha=4.0,
        name="dora_attn", dropout=0.1))),
    Case("dora", "layer_eps", lambda: dora.dora_layer(_x(), 6, 3, rank=2, eps=1e-6,
                                                      use_bias=True, activation="tanh",
                                                      name="dl")),
    Case("dora", "adapt", lambda: dora.adapt(gd.dense(gd.dense(_x(), 4, name="attn_q"), 2,
                                                      name="out"), targets=r"attn_.*",
                                             rank=2)),
    _adapter(lora),
    Case("lora", "attrs", lambda: lora.lora_layer(_x(), 6, 4, rank=3, alpha=6.0, name="lo",
                                                  rslora=True)),
    Case("lora", "wrap", lambda: _on(lambda x: lora.wrap(x, gd.dense(x, 4, name="v"), rank=2,
                                                         name="lv"))),
    # the activations: one graph-wide sample each ("values"), then their options
    *[Case(act, "values", lambda a=act, o=opts: gd.activation(_x((None, 4, 6)), a, **o),
           _normal(4.0, x=(3, 4, 6)))
      for act, opts in [("relu", {}), ("gelu", {}), ("sigmoid", {}), ("tanh", {}),
                        ("softmax", {"axis": 1}), ("log_softmax", {}), ("silu", {}),
                        ("elu", {"alpha": 0.7}), ("leaky_relu", {"alpha": 0.2}),
                        ("softplus", {}), ("celu", {"alpha": 0.5}), ("exp", {}),
                        ("hard_sigmoid", {}), ("hard_silu", {}), ("hard_tanh", {}),
                        ("linear", {}), ("log_sigmoid", {}), ("log_sumexp", {"axis": 1}),
                        ("mish", {}), ("relu6", {}), ("selu", {}), ("softsign", {})]],
    Case("gelu", "tanh_approx", lambda: gd.gelu(_x(), approximate=True), _normal(3.0, x=(3, 6))),
    Case("relu", "attrs", lambda: gd.relu(_x())),
    Case("gelu", "attrs", lambda: gd.gelu(_x(), approximate=True)),
    Case("sigmoid", "attrs", lambda: gd.sigmoid(_x())),
    Case("tanh", "attrs", lambda: gd.tanh(_x())),
    Case("softmax", "attrs", lambda: gd.softmax(gd.reshape(_x(), (None, 2, 3)), axis=1)),
    Case("log_softmax", "attrs", lambda: gd.log_softmax(_x(), axis=-1)),
    Case("silu", "attrs", lambda: gd.silu(_x())),
    Case("elu", "attrs", lambda: gd.elu(_x(), alpha=0.7)),
    Case("leaky_relu", "attrs", lambda: gd.leaky_relu(_x(), alpha=0.2)),
    Case("softplus", "attrs", lambda: gd.softplus(_x())),
    Case("celu", "attrs", lambda: gd.celu(_x(), alpha=-0.7)),
    Case("exp", "attrs", lambda: gd.exp(_x())),
    Case("hard_sigmoid", "attrs", lambda: gd.hard_sigmoid(_x(), alpha=1 / 6, beta=0.5)),
    Case("hard_silu", "attrs", lambda: gd.hard_silu(_x(), alpha=1 / 6, beta=0.5)),
    Case("hard_tanh", "attrs", lambda: gd.hard_tanh(_x())),
    Case("linear", "attrs", lambda: gd.linear(_x())),
    Case("log_sigmoid", "attrs", lambda: gd.log_sigmoid(_x())),
    Case("log_sumexp", "attrs", lambda: gd.log_sumexp(_x(), axis=-1)),
    Case("mish", "attrs", lambda: gd.mish(_x())),
    Case("relu6", "attrs", lambda: gd.relu6(_x())),
    Case("selu", "attrs", lambda: gd.selu(_x(), alpha=1.5, gamma=0.9)),
    Case("softsign", "attrs", lambda: gd.softsign(_x())),
    # the transformer ops (graphdsl/ops/transformer.py)
    Case("attention", "values", _attention, _attention_inputs, min_opset=14),
    Case("attention", "attrs", lambda: (lambda q, kv: gd.attention(
        _heads(q, 4), _heads(kv, 2), _heads(kv, 2), causal=True, window=3, scale=0.4,
        mask=gd.reshape(_ids(3, "am"), (None, 1, 1, -1))))(
            gd.input("q", (None, 3, 16)), gd.input("kv", (None, 3, 8))), min_opset=14),
    Case("rms_norm", "values", lambda: gd.rms_norm(_x((None, 4, 6)), epsilon=1e-5,
                                                   name="rms"),
         _normal(2.0, 1.0, x=(3, 4, 6)), _set("rms", gamma=lambda: _f(6))),
    Case("rms_norm", "attrs", lambda: gd.rms_norm(_x(), epsilon=1e-5, name="norm")),
    Case("rms_norm", "shift", lambda: gd.rms_norm(_x((None, 4, 6)), shift=1.0, name="rms",
                                                  gamma_initializer="zeros"),
         tweak=_set("rms", gamma=lambda: _f(6))),
    Case("rotary_embedding", "values", lambda: gd.rotary_embedding(
        _x((None, 2, 5, 8)), _ids(5, "pos"), theta=500.0),
        lambda: {"x": _f(3, 2, 5, 8), "pos": R.integers(0, 100, (3, 5))}),
    Case("rotary_embedding", "attrs", lambda: gd.rotary_embedding(
        _heads(gd.input("x", (None, 3, 8)), 2), gd.positions(_ids(3)), theta=5e5)),
    Case("slice", "values", lambda: _on(lambda x: gd.container([
        *gd.split(x, [2, 4], name="sp"), gd.slice(x, -3, None, axis=1)]), (None, 4, 6)), _X46),
    Case("slice", "attrs", lambda: _on(lambda x: gd.container([*gd.split(x, 3, name="parts"),
                                                               gd.slice(x, -2, None)]))),
    Case("cache_append", "values", lambda: gd.cache_append(
        gd.input("past", (None, 2, None, 3)), gd.input("new", (None, 2, None, 3))),
        lambda: {"past": _f(2, 2, 4, 3), "new": _f(2, 2, 1, 3)},
        reference=lambda i, st: np.concatenate([i["past"], i["new"]], axis=2)),
    Case("cache_append", "attrs", lambda: gd.cache_append(
        gd.input("past", (None, 5, 3)), gd.input("new", (None, 2, 3)), axis=1)),
    Case("positions", "values", lambda: gd.positions(_ids(), offset=2), _token_ids),
    Case("positions", "attrs", lambda: gd.positions(_ids(), offset=3)),
    Case("tied_dense", "values", _tied, _token_ids, _set("head", bias=lambda: _f(11))),
    Case("tied_dense", "attrs", lambda: (lambda emb: gd.tied_dense(
        emb, emb, use_bias=True, name="lm_head"))(gd.embedding(_ids(), 11, 4,
                                                               name="embed.tokens"))),
    # the convolutional ops (their reference tests: tests/test_conv.py)
    Case("conv", "values", lambda: gd.conv(_x(_IMG), 6, 3, strides=(2, 1), padding="same",
                                           feature_group_size=2, activation="relu"), _IMG_IN),
    Case("conv", "attrs", lambda: gd.conv(_img(4), 6, (3, 2), strides=(2, 1),
                                          padding=[(1, 1), (0, 1)], kernel_dilation=(1, 2),
                                          feature_group_size=2, activation="relu")),
    Case("max_pool", "values", lambda: gd.max_pool(_x(_IMG), 3, strides=2, padding="same"),
         _IMG_IN),
    Case("max_pool", "attrs", lambda: gd.max_pool(_img(), 2, strides=1, padding="same")),
    Case("avg_pool", "values", lambda: gd.avg_pool(_x(_IMG), 2, padding=[(1, 0), (0, 1)]),
         _IMG_IN),
    Case("avg_pool", "attrs", lambda: gd.avg_pool(gd.input("img", (None, 3, 6, 5)), 2,
                                                  channels="first")),
    Case("global_avg_pool", "values", lambda: gd.global_avg_pool(_x(_IMG)), _IMG_IN),
    Case("global_avg_pool", "attrs", lambda: gd.global_avg_pool(_img(), keep_axes=True)),
    Case("global_max_pool", "values", lambda: gd.global_max_pool(_x(_IMG), keep_axes=True),
         _IMG_IN),
    Case("global_max_pool", "attrs", lambda: gd.global_max_pool(_img())),
    # the pools of issue 22 (their reference tests: tests/test_pool_axon.py)
    Case("max_pool", "dilations", lambda: gd.max_pool(_x(_IMG), 2, strides=1, dilations=2,
                                                      padding="same"), _IMG_IN),
    Case("avg_pool", "dilations", lambda: gd.avg_pool(
        gd.input("img", (None, 3, 7, 6)), 2, strides=(1, 2), dilations=(2, 3),
        padding=[(1, 1), (0, 2)], channels="first")),
    Case("lp_pool", "values", lambda: gd.lp_pool(_x(_IMG), 2, strides=1, padding="same"),
         _IMG_IN),
    Case("lp_pool", "attrs", lambda: gd.lp_pool(_x((None, 3, 7, 6)), (2, 3), dilations=(2, 1),
                                                norm=3, channels="first"), _POS),
    Case("lp_pool", "fractional", lambda: gd.lp_pool(_x((None, 9, 2)), 3, strides=2,
                                                     padding=[(1, 1)], norm=1.5),
         lambda: {"x": np.abs(_f(3, 9, 2))}),
    Case("adaptive_avg_pool", "values", lambda: gd.adaptive_avg_pool(_x(_IMG), (3, 4)),
         _IMG_IN),
    Case("adaptive_avg_pool", "attrs", lambda: gd.adaptive_avg_pool(
        gd.input("vol", (None, 2, 6, 5, 4)), 2, channels="first")),
    Case("adaptive_max_pool", "values", lambda: gd.adaptive_max_pool(_x(_IMG), (2, 5)),
         _IMG_IN),
    Case("adaptive_max_pool", "attrs", lambda: gd.adaptive_max_pool(_img())),
    Case("adaptive_lp_pool", "values", lambda: gd.adaptive_lp_pool(_x(_IMG), (3, 3)),
         _IMG_IN),
    Case("adaptive_lp_pool", "attrs", lambda: gd.adaptive_lp_pool(
        _x((None, 4, 9)), 4, norm=1, channels="first")),
    Case("global_lp_pool", "values", lambda: gd.global_lp_pool(_x(_IMG)), _IMG_IN),
    Case("global_lp_pool", "attrs", lambda: gd.global_lp_pool(
        _x((None, 3, 7, 6)), keep_axes=True, channels="first", norm=3), _POS),
    Case("batch_norm", "values", lambda: gd.batch_norm(_x(_IMG), name="bn"), _IMG_IN,
         _set("bn", mean=lambda: _f(4), var=lambda: np.abs(_f(4)) + 0.5, gamma=lambda: _f(4),
              beta=lambda: _f(4))),
    Case("batch_norm", "attrs", lambda: gd.batch_norm(_img(), momentum=0.2, epsilon=1e-3,
                                                      name="bn")),
    Case("instance_norm", "values", lambda: gd.instance_norm(_x(_IMG), name="in"), _IMG_IN,
         _set("in", mean=lambda: _f(4), var=lambda: np.abs(_f(4)) + 0.5, gamma=lambda: _f(4),
              beta=lambda: _f(4))),
    Case("instance_norm", "attrs", lambda: gd.instance_norm(
        gd.input("img", (None, 3, 6, 5)), axis=1, momentum=0.2, epsilon=1e-3,
        gamma_initializer="zeros", name="in")),
    Case("group_norm", "values", lambda: gd.group_norm(_x(_IMG), 2), _IMG_IN),
    Case("group_norm", "attrs", lambda: gd.group_norm(_img(4), 2, name="gn")),
    # a block: its body's parameters once, shared by its calls (tests/test_block_axon.py)
    Case("block", "shared", _block_twice, _X),
    Case("block", "nested", _block_nested, _XZ),
    Case("block", "stateful", _block_stateful, _X),
    Case("block_output", "tuple_and_dict", _block_outputs, _XZ),
    # Axon's special layers (their reference tests: tests/test_axon_misc.py)
    Case("blur_pool", "values", lambda: gd.blur_pool(_x(_IMG)), _IMG_IN,
         reference=lambda i, st: _blurred(i["x"])),
    Case("blur_pool", "attrs", lambda: gd.blur_pool(gd.input("x", (None, 3, 5, 4)),
                                                    channels="first"),
         _normal(x=(2, 3, 5, 4)), reference=lambda i, st: _blurred(i["x"], "first")),
    Case("mask", "values", lambda: gd.mask(_ids(), 0), _token_ids,
         reference=lambda i, st: (i["ids"] == 0).astype(np.int64)),
    Case("mask", "attrs", lambda: gd.mask(_x(), -1, name="eos"), _normal(1.5, x=(3, 6)),
         reference=lambda i, st: (np.trunc(i["x"]) == -1).astype(np.int64)),
    _cond(1.0),
    _cond(-1.0),
    # Axon's conv variants (their reference tests: tests/test_conv_axon.py)
    Case("conv_transpose", "values", lambda: gd.conv_transpose(
        _x(_IMG), 5, 3, strides=2, padding="same", name="ct"), _IMG_IN,
        _set("ct", bias=lambda: _f(5))),
    Case("conv_transpose", "attrs", lambda: gd.conv_transpose(  # pads wider than the window
        gd.input("img", (None, 3, 6, 5)), 4, (2, 3), strides=(1, 2), kernel_dilation=(2, 1),
        padding=[(0, 1), (3, 4)], channels="first", activation="relu")),
    Case("depthwise_conv", "values", lambda: gd.depthwise_conv(
        _x(_IMG), 2, 3, strides=(2, 1), padding="same", name="dw"), _IMG_IN,
        _set("dw", bias=lambda: _f(8))),
    Case("depthwise_conv", "attrs", lambda: gd.depthwise_conv(
        gd.input("img", (None, 3, 6, 5)), 3, 2, padding=[(1, 0), (0, 1)],
        input_dilation=(1, 2), kernel_dilation=2, channels="first")),
    Case("separable_conv2d", "values", lambda: gd.separable_conv2d(
        _x(_IMG), 2, 3, padding="same", name="sep"), _IMG_IN,
        _set("sep", bias_1=lambda: _f(8), bias_2=lambda: _f(8))),
    Case("separable_conv2d", "attrs", lambda: gd.separable_conv2d(
        _img(), 1, (3, 2), strides=(2, 1), kernel_dilation=(1, 2), activation="tanh")),
    Case("separable_conv3d", "values", lambda: gd.separable_conv3d(
        _x((None, 5, 4, 6, 2)), 2, (3, 2, 3), padding="same", name="sep"),
        _normal(x=(3, 5, 4, 6, 2)),
        _set("sep", bias_1=lambda: _f(4), bias_2=lambda: _f(4), bias_3=lambda: _f(4))),
    Case("separable_conv3d", "attrs", lambda: gd.separable_conv3d(
        gd.input("vol", (None, 2, 6, 5, 4)), 1, 2, strides=(2, 1, 1), channels="first")),
    # Axon's recurrent layers (their reference tests: tests/test_rnn_axon.py)
    Case("lstm", "values", lambda: _rnn(gd.lstm(_x((None, 5, 4)), 3, name="rnn", **_Z)),
         tweak=_set("rnn", bias=lambda: _f(12))),
    Case("lstm", "attrs", lambda: _rnn(gd.lstm(
        _x((None, 4, 3)), 2, (_x((None, 2), "c0"), _x((None, 2), "h0")), activation="relu",
        unroll="static", use_bias=False))),
    Case("lstm", "mask", lambda: _rnn(gd.lstm(_x((None, 5, 4)), 3, mask=_ids(5, "m"),
                                              name="rnn", **_Z)),
         lambda: {"x": _f(3, 5, 4), "m": R.integers(0, 2, (3, 5))},
         _set("rnn", bias=lambda: _f(12))),
    Case("gru", "values", lambda: _rnn(gd.gru(_x((None, 5, 4)), 3, name="rnn", **_Z)),
         tweak=_set("rnn", bias=lambda: _f(12))),
    Case("gru", "attrs", lambda: _rnn(gd.gru(
        _x((None, 4, 3)), 2, (_x((None, 2), "h0"),), gate="softsign", unroll="static",
        use_bias=False))),
    Case("gru", "mask", lambda: _rnn(gd.gru(_x((None, 5, 4)), 3, mask=_ids(5, "m"),
                                            name="rnn", **_Z)),
         lambda: {"x": _f(3, 5, 4), "m": R.integers(0, 2, (3, 5))},
         _set("rnn", bias=lambda: _f(12))),
    Case("conv_lstm", "values", lambda: _rnn(gd.conv_lstm(
        _x((None, 3, 2, 5, 4)), 3, kernel_size=3, name="rnn", **_Z)),
         tweak=_set("rnn", bias=lambda: _f(12))),
    Case("conv_lstm", "attrs", lambda: _rnn(gd.conv_lstm(
        _x((None, 2, 3, 6)), 2, (_x((None, 1, 2, 6), "c0"), _x((None, 1, 2, 6), "h0")),
        kernel_size=3, padding=[(1, 1)], use_bias=False))),
    # Axon's random initial state (rnn_state): no ONNX export, zeros exports
    Case("recurrent_state", "values", lambda: _rnn(gd.lstm(_x((None, 5, 4)), 3, name="rnn")),
         skip=_NO_ONNX, train=True),
    Case("recurrent_state", "attrs", lambda: _rnn(gd.conv_lstm(
        _x((None, 2, 3, 6)), 2, kernel_size=3, recurrent_initializer="he_normal", seed=5)),
         skip=_NO_ONNX, train=True),
    Case("recurrent_state", "zeros", lambda: recurrent_state(
        _x((None, 2, 3, 5, 4)), units=4, rnn="conv_lstm", initializer="zeros"),
         reference=lambda i, st: np.zeros((3, 1, 4, 5, 4), np.float32)),
    Case("reverse", "values", lambda: reverse(_x((None, 4, 3)), axis=1)),
    Case("reverse", "bidirectional", lambda: _rnn(gd.bidirectional(
        _x((None, 4, 3)), lambda x: gd.gru(x, 2, name="g", **_Z),
        lambda a, b: gd.concatenate([a, b], axis=1)))),
    # resize, bilinear and the dropouts of issue 22 (their reference tests:
    # tests/test_resize_axon.py)
    Case("resize", "values", lambda: gd.resize(_x(_IMG), (4, 9), method="bicubic"), _IMG_IN),
    Case("resize", "attrs", lambda: gd.resize(gd.input("img", (None, 3, 6, 5)), (9, 5),
                                              channels="first")),
    Case("resize", "lanczos", lambda: gd.resize(_img(), (3, 8), method="lanczos3",
                                                antialias=False)),
    Case("resize", "bilinear", lambda: gd.resize(_x(_IMG), (3, 2), method="bilinear"),
         _IMG_IN),
    Case("bilinear", "values", lambda: gd.bilinear(_x((None, 2, 6)), _x((None, 2, 4), "z"), 3,
                                                   name="bl"),
         _normal(x=(3, 2, 6), z=(3, 2, 4)), _set("bl", bias=lambda: _f(3))),
    Case("bilinear", "attrs", lambda: gd.bilinear(_x(), _x((None, 5), "z"), 2, use_bias=False,
                                                  activation="tanh",
                                                  kernel_initializer="he_uniform")),
    Case("spatial_dropout", "values", lambda: gd.dense(gd.spatial_dropout(_x(_IMG), 0.4), 3),
         _IMG_IN),
    Case("spatial_dropout", "attrs", lambda: gd.spatial_dropout(
        gd.input("img", (None, 3, 6, 5)), 0.25, channels="first")),
    Case("alpha_dropout", "values", lambda: gd.dense(gd.alpha_dropout(_x(), 0.4), 3), _X),
    Case("alpha_dropout", "attrs", lambda: gd.alpha_dropout(gd.dense(_x(), 4), 0.25)),
    Case("feature_alpha_dropout", "values", lambda: gd.dense(gd.feature_alpha_dropout(
        _x(_IMG), 0.4), 3), _IMG_IN),
    Case("feature_alpha_dropout", "attrs", lambda: gd.feature_alpha_dropout(
        gd.input("seq", (None, 3, 5)), 0.25, channels="first")),
]

#: ``{"op/label": Case}``, every sample
CASES: dict[str, Case] = {c.id: c for c in _ROWS}
assert len(CASES) == len(_ROWS), "two rows share an op/label"


def cases_for(suite: str | None = None, where: Callable[[Case], bool] = lambda c: True
              ) -> list:
    """The rows in ``suite`` (None: every row) that pass ``where``, as pytest params with
    their ids."""
    assert suite is None or suite in SUITES, suite
    return [pytest.param(c, id=c.id) for c in CASES.values()
            if suite not in c.skip and where(c)]
