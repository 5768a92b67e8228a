"""Neural-network layers: dense, activations, dropout, layer_norm, embedding."""
from __future__ import annotations

import math
from typing import Any

from ..errors import OptionError, RuleError, fmt_shape
from ..initializers import check_initializer
from ..node import Node, caller_location, make_node
from ..registry import RNG_KEY, OpDef, ParamSpec, register_op
from ..shapes import check_rank, feature_dim, merge_dim, normalize_axis
from ._attrs import boolean, number, positive_int

# activation -> its options with defaults (axis counts the batch axis, like NumPy): the one
# place they are said; a backend's activation function gets every option (the activation
# node's checked attrs)
ACTIVATIONS: dict[str, dict[str, Any]] = {
    "relu": {}, "gelu": {"approximate": False}, "sigmoid": {}, "tanh": {},
    "softmax": {"axis": -1}, "log_softmax": {"axis": -1}, "silu": {},
    "elu": {"alpha": 1.0}, "leaky_relu": {"alpha": 0.01}, "softplus": {},
    # Axon's others, with Axon's defaults (hard_sigmoid: alpha 0.2, beta 0.2, not torch's)
    "celu": {"alpha": 1.0}, "exp": {}, "hard_sigmoid": {"alpha": 0.2, "beta": 0.2},
    "hard_silu": {"alpha": 0.2, "beta": 0.2}, "hard_tanh": {}, "linear": {},
    "log_sigmoid": {}, "log_sumexp": {"axis": -1}, "mish": {}, "relu6": {},
    "selu": {"alpha": 1.6732632423543772848170429916717,
             "gamma": 1.0507009873554804934193349852946},
    "softsign": {},
}
#: activations that reduce an axis (kept, of size 1, as Axon does)
REDUCING = frozenset({"log_sumexp"})


def _known(name: Any) -> str:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise RuleError(f"unknown activation {name!r}",
                        f"use one of: {', '.join(ACTIVATIONS)}", OptionError)
    return name


def activation_name(name: Any) -> str:
    """``name`` if it names an element-wise activation (all but the reducing ones), as a
    recurrent cell's ``activation``/``gate`` must, else a RuleError."""
    if _known(name) in REDUCING:
        raise RuleError(f"activation {name!r} reduces an axis, so it cannot be a cell's "
                        "activation", "use an element-wise one (tanh, sigmoid, relu, ...)",
                        OptionError)
    return name


def with_activation(layer: Node, act: Any, where: str) -> Node:
    """Axon's ``activation:`` option of a layer constructor (dense, conv, ..., the adapter
    layers): ``layer`` followed by an activation node of op ``act`` with its default
    options and a default name (``relu_0``, as Axon names it), so ``get_op_counts``,
    ``map_nodes`` and ``rewrite_nodes`` see two layers; ``layer`` itself for None. An
    unknown ``act`` is an OptionError naming ``layer``."""
    if act is None:
        return layer
    try:
        _known(act)
    except RuleError as e:
        raise OptionError(e.what, layer=layer.name, op=layer.op, where=where, fix=e.fix,
                          shapes={f"input{i}": x.shape for i, x in enumerate(layer.inputs)}
                          ) from None
    return make_node(act, [layer], {}, None, where=where)


# -- dense -----------------------------------------------------------------------------
def kernel_options(a: dict) -> dict:
    """``use_bias`` and the kernel/bias initializers of a layer with a kernel (dense, conv),
    checked, with Axon's defaults (``activation=`` is a node of its own)."""
    return {
        "use_bias": boolean(a.get("use_bias", True), "use_bias"),
        "kernel_initializer": check_initializer(a.get("kernel_initializer", "glorot_uniform"),
                                                "kernel_initializer"),
        "bias_initializer": check_initializer(a.get("bias_initializer", "zeros"),
                                              "bias_initializer"),
    }


def _dense_attrs(a: dict) -> dict:
    return {"units": positive_int(a.get("units"), "units"), **kernel_options(a)}


def _dense_shape(s: list, a: dict) -> tuple:
    feature_dim(s[0], "dense")
    return s[0][:-1] + (a["units"],)


def kernel_and_bias(kernel_shape: tuple, n_out: int, a: dict) -> list[ParamSpec]:
    """``kernel`` of ``kernel_shape`` and, with ``use_bias``, ``bias [n_out]``, from the
    layer's ``kernel_initializer`` / ``bias_initializer`` (dense, conv)."""
    ps = [ParamSpec("kernel", kernel_shape, a["kernel_initializer"])]
    if a["use_bias"]:
        ps.append(ParamSpec("bias", (n_out,), a["bias_initializer"]))
    return ps


def dense_params(s: list, a: dict) -> list[ParamSpec]:
    return kernel_and_bias((feature_dim(s[0], "dense"), a["units"]), a["units"], a)


register_op(OpDef(
    "dense", _dense_shape, params=dense_params, check_attrs=_dense_attrs,
    doc="y = x @ kernel + bias on the last axis of any rank. "
        "kernel [in, units], bias [units]; (..., in) -> (..., units).",
))


def dense(x: Node, units: int, activation: str | None = None, use_bias: bool = True,
          kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
          name: str | None = None) -> Node:
    """Fully connected layer on the last axis: ``(..., in) -> (..., units)``.

    Computes ``x @ kernel + bias`` on inputs of any rank (rank 1 included, unlike Axon).
    Parameters ``kernel [in, units]`` (Axon layout; torch's ``weight`` transposed) and
    ``bias [units]``.

    Args:
        x: input node ``(..., in)``, float dtype, ``in`` known.
        units: output size, a positive int.
        activation: name of an activation (``"relu"``, ...) added as its own node after
            the layer, as Axon does (``relu(dense(x, units))``); None for none.
        use_bias: add ``bias [units]``.
        kernel_initializer: initializer name or callable for ``kernel`` (default
            ``"glorot_uniform"``).
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        name: layer name (default ``"dense_{n}"``).

    Returns:
        (Node): ``(..., units)``, the activation node when ``activation`` is given.

    Raises:
        OptionError: ``units`` not a positive int, an unknown activation or initializer.
        ShapeError: ``x``'s last axis is unknown (None).
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 16))
        >>> y = gd.dense(x, 4, activation="relu", name="fc1")
        >>> gd.get_output_shape(y, (8, 16))
        (8, 4)
        >>> init_fn, predict_fn = gd.build(y)
        >>> init_fn(np.zeros((1, 16), np.float32)).data["fc1"]["kernel"].shape
        (16, 4)
    """
    where = caller_location()
    return with_activation(make_node("dense", [x], {
        "units": units, "use_bias": use_bias,
        "kernel_initializer": kernel_initializer, "bias_initializer": bias_initializer,
    }, name, where=where), activation, where)


# -- bilinear --------------------------------------------------------------------------
def _bilinear_shape(s: list, a: dict) -> tuple:
    x1, x2 = s
    if len(x1) < 2 or len(x1) != len(x2):
        raise RuleError(f"bilinear needs two inputs of one rank >= 2, got {fmt_shape(x1)} "
                        f"and {fmt_shape(x2)}", "pass e.g. (None, in1) and (None, in2)")
    try:
        lead = tuple(merge_dim(d1, d2) for d1, d2 in zip(x1[:-1], x2[:-1]))
    except ValueError:
        raise RuleError(f"bilinear's inputs must agree on every axis but the last, got "
                        f"{fmt_shape(x1)} and {fmt_shape(x2)}",
                        "give both inputs the same leading sizes") from None
    feature_dim(x1, "bilinear")
    feature_dim(x2, "bilinear")
    return (*lead, a["units"])


def _bilinear_params(s: list, a: dict) -> list[ParamSpec]:
    k = (a["units"], feature_dim(s[0][-1:], "bilinear"), feature_dim(s[1][-1:], "bilinear"))
    return kernel_and_bias(k, a["units"], a)


register_op(OpDef(
    "bilinear", _bilinear_shape, params=_bilinear_params, arity=2,
    check_attrs=lambda a: {"units": positive_int(a.get("units"), "units"),
                           **kernel_options({**a, "activation": None})},
    doc="y[..., u] = sum_ij x1[..., i] kernel[u, i, j] x2[..., j] + bias[u]: kernel [units, "
        "in1, in2], bias [units]; (..., in1), (..., in2) -> (..., units) (torch's bilinear).",
))


def bilinear(input1: Node, input2: Node, units: int, *, activation: str | None = None,
             use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
             bias_initializer: Any = "zeros", name: str | None = None) -> Node:
    """Axon's bilinear layer: ``y[..., u] = x1 @ kernel[u] @ x2 + bias[u]``.

    Parameters ``kernel [units, in1, in2]`` (torch's ``nn.Bilinear`` weight) and
    ``bias [units]``.

    Args:
        input1: node ``(..., in1)``.
        input2: node ``(..., in2)``, the same leading axes as ``input1``.
        units: output size, a positive int.
        activation: activation added after the layer (as in ``dense``), or None.
        use_bias: add ``bias [units]``.
        kernel_initializer: initializer for ``kernel`` (default ``"glorot_uniform"``).
        bias_initializer: initializer for ``bias`` (default ``"zeros"``).
        name: layer name (default ``"bilinear_{n}"``).

    Returns:
        (Node): ``(..., units)``.

    Raises:
        ShapeError: ranks differ, are below 2, or leading axes disagree.
        OptionError: a bad ``units``, activation or initializer.

    Examples:
        >>> a, b = gd.input("a", shape=(None, 3)), gd.input("b", shape=(None, 5))
        >>> gd.get_output_shape(gd.bilinear(a, b, 2), {"a": (4, 3), "b": (4, 5)})
        (4, 2)
    """
    where = caller_location()
    node = make_node("bilinear", [input1, input2], {
        "units": units, "use_bias": use_bias, "kernel_initializer": kernel_initializer,
        "bias_initializer": bias_initializer}, name, where=where)
    return with_activation(node, activation, where)


# -- activations -------------------------------------------------------------------------
def _act_attrs(op: str):
    defaults = ACTIVATIONS[op]

    def check(a: dict) -> dict:
        out = {k: a.get(k, d) for k, d in defaults.items()}  # make_node names other keys
        for k in ("alpha", "beta", "gamma"):
            if k in out:  # only elu and leaky_relu bound alpha; an infinity gives NaNs
                out[k] = number(out[k], k, 0.0 if op in ("elu", "leaky_relu") else -math.inf,
                                math.inf, finite=True)
        if op == "celu" and out["alpha"] == 0:
            raise RuleError("alpha must be non-zero in CELU activation",
                            "pass a non-zero alpha", OptionError)
        if "approximate" in out:
            out["approximate"] = boolean(out["approximate"], "approximate")
        return out

    return check


def _act_shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        if "axis" in a:
            check_rank(s[0], 1, op, "pass a tensor of rank >= 1")
            axis = normalize_axis(a["axis"], len(s[0]))
            if op in REDUCING:
                return s[0][:axis] + (1,) + s[0][axis + 1:]
        return s[0]

    return rule


for _op in ACTIVATIONS:
    register_op(OpDef(_op, _act_shape(_op), check_attrs=_act_attrs(_op),
                      category="activation",
                      doc=f"{_op} (options: {ACTIVATIONS[_op] or 'none'}); "
                          + ("the axis kept, of size 1." if _op in REDUCING
                             else "element-wise, shape unchanged.")))


def activation(x: Node, fn: str, name: str | None = None, **opts: Any) -> Node:
    """Apply the activation named ``fn`` with its options (Axon's ``activation/3``).

    Args:
        x: input node, float dtype.
        fn: one of ``relu gelu sigmoid tanh softmax log_softmax silu elu leaky_relu
            softplus celu exp hard_sigmoid hard_silu hard_tanh linear log_sigmoid log_sumexp
            mish relu6 selu softsign``.
        name: layer name (default ``"{fn}_{n}"``).
        **opts: the activation's options (``axis`` for softmax, ``alpha`` for elu, ...).

    Returns:
        (Node): the shape of ``x`` (``log_sumexp`` keeps its axis with size 1).

    Raises:
        OptionError: an unknown ``fn`` (the message lists them) or option.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> y = gd.activation(x, "leaky_relu", alpha=0.5)
        >>> gd.predict(y, gd.ModelState.empty(), np.array([[-2.0, 0.0, 2.0]], np.float32))
        array([[-1.,  0.,  2.]], dtype=float32)
    """
    where = caller_location()
    try:
        _known(fn)
    except RuleError as e:
        raise OptionError(e.what, layer=name, op="activation", where=where,
                              fix=e.fix) from None
    return make_node(fn, [x], opts, name, where=where)




def relu(x: Node, name: str | None = None) -> Node:
    """Rectified linear unit ``max(x, 0)``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"relu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.relu(x), gd.ModelState.empty(), xs).round(4)
        array([[0., 0., 2.]], dtype=float32)
    """
    return make_node("relu", [x], {}, name, where=caller_location())


def gelu(x: Node, approximate: bool = False, name: str | None = None) -> Node:
    """Gaussian error linear unit ``x * Phi(x)``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        approximate: False for the exact erf form (BERT's), True for the tanh form.
        name: layer name (default ``"gelu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.gelu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.1587,  0.    ,  1.9545]], dtype=float32)
    """
    return make_node("gelu", [x], {"approximate": approximate}, name, where=caller_location())


def sigmoid(x: Node, name: str | None = None) -> Node:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"sigmoid_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.sigmoid(x), gd.ModelState.empty(), xs).round(4)
        array([[0.2689, 0.5   , 0.8808]], dtype=float32)
    """
    return make_node("sigmoid", [x], {}, name, where=caller_location())


def tanh(x: Node, name: str | None = None) -> Node:
    """Hyperbolic tangent, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"tanh_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.tanh(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.7616,  0.    ,  0.964 ]], dtype=float32)
    """
    return make_node("tanh", [x], {}, name, where=caller_location())


def softmax(x: Node, axis: int = -1, name: str | None = None) -> Node:
    """Softmax ``exp(x) / sum(exp(x))`` along ``axis``.

    Args:
        x: input node, any shape, float dtype.
        axis: the axis to normalize (NumPy convention, counts the batch axis).
        name: layer name (default ``"softmax_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[0.0, 0.0, 0.0]], np.float32)
        >>> gd.predict(gd.softmax(x), gd.ModelState.empty(), xs).round(4)
        array([[0.3333, 0.3333, 0.3333]], dtype=float32)
    """
    return make_node("softmax", [x], {"axis": axis}, name, where=caller_location())


def log_softmax(x: Node, axis: int = -1, name: str | None = None) -> Node:
    """Log-softmax ``x - logsumexp(x)`` along ``axis``, computed stably.

    Args:
        x: input node, any shape, float dtype.
        axis: the axis to normalize (NumPy convention).
        name: layer name (default ``"log_softmax_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[0.0, 0.0, 0.0]], np.float32)
        >>> gd.predict(gd.log_softmax(x), gd.ModelState.empty(), xs).round(4)
        array([[-1.0986, -1.0986, -1.0986]], dtype=float32)
    """
    return make_node("log_softmax", [x], {"axis": axis}, name, where=caller_location())


def silu(x: Node, name: str | None = None) -> Node:
    """SiLU (swish) ``x * sigmoid(x)``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"silu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.silu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.2689,  0.    ,  1.7616]], dtype=float32)
    """
    return make_node("silu", [x], {}, name, where=caller_location())


def elu(x: Node, alpha: float = 1.0, name: str | None = None) -> Node:
    """ELU: ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``.

    Args:
        x: input node, any shape, float dtype.
        alpha: scale of the negative part, >= 0.
        name: layer name (default ``"elu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.elu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.6321,  0.    ,  2.    ]], dtype=float32)
    """
    return make_node("elu", [x], {"alpha": alpha}, name, where=caller_location())


def leaky_relu(x: Node, alpha: float = 0.01, name: str | None = None) -> Node:
    """Leaky ReLU: ``x`` if ``x > 0`` else ``alpha * x``.

    Args:
        x: input node, any shape, float dtype.
        alpha: slope of the negative part, >= 0.
        name: layer name (default ``"leaky_relu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.leaky_relu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.01,  0.  ,  2.  ]], dtype=float32)
    """
    return make_node("leaky_relu", [x], {"alpha": alpha}, name, where=caller_location())


def softplus(x: Node, name: str | None = None) -> Node:
    """Softplus ``log(1 + exp(x))``, computed stably.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"softplus_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.softplus(x), gd.ModelState.empty(), xs).round(4)
        array([[0.3133, 0.6931, 2.1269]], dtype=float32)
    """
    return make_node("softplus", [x], {}, name, where=caller_location())


def celu(x: Node, alpha: float = 1.0, name: str | None = None) -> Node:
    """CELU: ``x`` if ``x > 0`` else ``alpha * (exp(x / alpha) - 1)``.

    Args:
        x: input node, any shape, float dtype.
        alpha: a finite non-zero float.
        name: layer name (default ``"celu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.celu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.6321,  0.    ,  2.    ]], dtype=float32)
    """
    return make_node("celu", [x], {"alpha": alpha}, name, where=caller_location())


def exp(x: Node, name: str | None = None) -> Node:
    """Exponential ``exp(x)``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"exp_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[0.0, 1.0, 2.0]], np.float32)
        >>> gd.predict(gd.exp(x), gd.ModelState.empty(), xs).round(4)
        array([[1.    , 2.7183, 7.3891]], dtype=float32)
    """
    return make_node("exp", [x], {}, name, where=caller_location())


def hard_sigmoid(x: Node, alpha: float = 0.2, beta: float = 0.2, name: str | None = None
                 ) -> Node:
    """Hard sigmoid ``clip(alpha * x + beta, 0, 1)``.

    Axon's defaults, not torch's 1/6 and 1/2.

    Args:
        x: input node, any shape, float dtype.
        alpha: slope.
        beta: offset.
        name: layer name (default ``"hard_sigmoid_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.hard_sigmoid(x), gd.ModelState.empty(), xs).round(4)
        array([[0. , 0.2, 0.6]], dtype=float32)
    """
    return make_node("hard_sigmoid", [x], {"alpha": alpha, "beta": beta}, name,
                     where=caller_location())


def hard_silu(x: Node, alpha: float = 0.2, beta: float = 0.2, name: str | None = None
              ) -> Node:
    """Hard SiLU ``x * hard_sigmoid(x, alpha, beta)``.

    Args:
        x: input node, any shape, float dtype.
        alpha: slope of the hard sigmoid.
        beta: offset of the hard sigmoid.
        name: layer name (default ``"hard_silu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.hard_silu(x), gd.ModelState.empty(), xs).round(4)
        array([[-0. ,  0. ,  1.2]], dtype=float32)
    """
    return make_node("hard_silu", [x], {"alpha": alpha, "beta": beta}, name,
                     where=caller_location())


def hard_tanh(x: Node, name: str | None = None) -> Node:
    """Hard tanh ``clip(x, -1, 1)``.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"hard_tanh_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.hard_tanh(x), gd.ModelState.empty(), xs).round(4)
        array([[-1.,  0.,  1.]], dtype=float32)
    """
    return make_node("hard_tanh", [x], {}, name, where=caller_location())


def linear(x: Node, name: str | None = None) -> Node:
    """The identity as a layer (Axon's ``linear`` activation).

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"linear_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.linear(x), gd.ModelState.empty(), xs).round(4)
        array([[-1.,  0.,  2.]], dtype=float32)
    """
    return make_node("linear", [x], {}, name, where=caller_location())


def log_sigmoid(x: Node, name: str | None = None) -> Node:
    """``log(sigmoid(x)) = -softplus(-x)``, computed stably.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"log_sigmoid_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.log_sigmoid(x), gd.ModelState.empty(), xs).round(4)
        array([[-1.3133, -0.6931, -0.1269]], dtype=float32)
    """
    return make_node("log_sigmoid", [x], {}, name, where=caller_location())


def log_sumexp(x: Node, axis: int = -1, name: str | None = None) -> Node:
    """``log(sum(exp(x)))`` along ``axis``, kept with size 1.

    ``(..., n) -> (..., 1)`` for the last axis.

    Args:
        x: input node, any shape, float dtype.
        axis: the reduced axis (NumPy convention).
        name: layer name (default ``"log_sumexp_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[0.0, 0.0, 0.0]], np.float32)
        >>> gd.predict(gd.log_sumexp(x), gd.ModelState.empty(), xs).round(4)
        array([[1.0986]], dtype=float32)
    """
    return make_node("log_sumexp", [x], {"axis": axis}, name, where=caller_location())


def mish(x: Node, name: str | None = None) -> Node:
    """Mish ``x * tanh(softplus(x))``, element-wise.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"mish_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.mish(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.3034,  0.    ,  1.944 ]], dtype=float32)
    """
    return make_node("mish", [x], {}, name, where=caller_location())


def relu6(x: Node, name: str | None = None) -> Node:
    """ReLU6 ``clip(x, 0, 6)``.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"relu6_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 3.0, 8.0]], np.float32)
        >>> gd.predict(gd.relu6(x), gd.ModelState.empty(), xs).round(4)
        array([[0., 3., 6.]], dtype=float32)
    """
    return make_node("relu6", [x], {}, name, where=caller_location())


def selu(x: Node, alpha: float = 1.6732632423543772848170429916717,
         gamma: float = 1.0507009873554804934193349852946, name: str | None = None) -> Node:
    """SELU ``gamma * elu(x, alpha)`` (self-normalizing constants by default).

    Args:
        x: input node, any shape, float dtype.
        alpha: scale of the negative part.
        gamma: overall scale.
        name: layer name (default ``"selu_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        OptionError: an option is out of range.
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.selu(x), gd.ModelState.empty(), xs).round(4)
        array([[-1.1113,  0.    ,  2.1014]], dtype=float32)
    """
    return make_node("selu", [x], {"alpha": alpha, "gamma": gamma}, name,
                     where=caller_location())


def softsign(x: Node, name: str | None = None) -> Node:
    """Softsign ``x / (1 + |x|)``.

    Args:
        x: input node, any shape, float dtype.
        name: layer name (default ``"softsign_{n}"``).

    Returns:
        (Node): the activation's output, the shape of ``x``.

    Raises:
        LayerNameError: ``name`` is malformed.

    Examples:
        >>> x = gd.input("x", shape=(None, 3))
        >>> xs = np.array([[-1.0, 0.0, 2.0]], np.float32)
        >>> gd.predict(gd.softsign(x), gd.ModelState.empty(), xs).round(4)
        array([[-0.5   ,  0.    ,  0.6667]], dtype=float32)
    """
    return make_node("softsign", [x], {}, name, where=caller_location())


# -- dropout ---------------------------------------------------------------------------
register_op(OpDef(
    "dropout", lambda s, a: s[0], output_alias="inputs",
    check_attrs=lambda a: {"rate": number(a.get("rate", 0.5), "rate", 0.0, 1.0, hi_open=True)},
    params=lambda s, a: [RNG_KEY],
    doc="Zeroes a fraction `rate` of the inputs in training and scales the rest by "
        "1/(1-rate); identity at inference. Shape unchanged. State: key (RNG seed).",
))


def dropout(x: Node, rate: float = 0.5, name: str | None = None) -> Node:
    """Inverted dropout: in ``mode="train"`` zeroes each value with probability ``rate``
    and scales the rest by ``1 / (1 - rate)``; the identity at inference.

    Its RNG key is state (``state.data[name]["key"]``), advanced by every training call.

    Args:
        x: input node, any shape.
        rate: drop probability in ``[0, 1)``.
        name: layer name (default ``"dropout_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        OptionError: ``rate`` outside ``[0, 1)``.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> y = gd.dropout(x, rate=0.5)
        >>> init_fn, predict_fn = gd.build(y)            # inference: the identity
        >>> predict_fn(init_fn(np.ones((1, 4), np.float32)), np.ones((1, 4), np.float32))
        array([[1., 1., 1., 1.]], dtype=float32)
    """
    return make_node("dropout", [x], {"rate": rate}, name, where=caller_location())


# -- layer_norm ----------------------------------------------------------------------------
def norm_initializers(a: dict) -> dict:
    """The checked ``gamma_initializer`` / ``beta_initializer`` of a norm layer. Defaults
    ``"ones"`` / ``"zeros"`` (Axon's group_norm defaults; Axon's other norms default
    gamma to glorot_uniform, kept at ones here as before)."""
    return {"gamma_initializer": check_initializer(a.get("gamma_initializer", "ones"),
                                                   "gamma_initializer"),
            "beta_initializer": check_initializer(a.get("beta_initializer", "zeros"),
                                                  "beta_initializer")}


def _ln_attrs(a: dict) -> dict:
    return {"axis": a.get("axis", -1),
            "epsilon": number(a.get("epsilon", 1e-5), "epsilon", 0.0),
            "center": boolean(a.get("center", True), "center"),
            "scale": boolean(a.get("scale", True), "scale"),
            **norm_initializers(a)}


def _ln_dim(s: tuple, a: dict) -> int:
    check_rank(s, 1, "layer_norm", "pass a tensor of rank >= 1")
    ax = normalize_axis(a["axis"], len(s))
    if s[ax] is None:
        raise RuleError(f"layer_norm needs a known size on axis {a['axis']}",
                        "normalize over a fixed-size feature axis")
    return s[ax]


def _ln_params(s: list, a: dict) -> list[ParamSpec]:
    d = _ln_dim(s[0], a)
    ps = []
    if a["scale"]:
        ps.append(ParamSpec("gamma", (d,), a["gamma_initializer"]))
    if a["center"]:
        ps.append(ParamSpec("beta", (d,), a["beta_initializer"]))
    return ps


def _ln_shape(s: list, a: dict) -> tuple:
    _ln_dim(s[0], a)
    return s[0]


register_op(OpDef(
    "layer_norm", _ln_shape, params=_ln_params, check_attrs=_ln_attrs,
    doc="(x - mean) / sqrt(var + epsilon) * gamma + beta over `axis`; shape unchanged. "
        "gamma, beta: [size of axis].",
))


def layer_norm(x: Node, axis: int = -1, epsilon: float = 1e-5, center: bool = True,
               scale: bool = True, gamma_initializer: Any = "ones",
               beta_initializer: Any = "zeros", name: str | None = None) -> Node:
    """Layer normalization over ``axis``.

    ``(x - mean) / sqrt(var + epsilon) * gamma + beta``.

    Parameters ``gamma`` and ``beta``, each ``[size of axis]``.

    Args:
        x: input node, rank >= 1, float dtype, known size on ``axis``.
        axis: normalized axis (NumPy convention).
        epsilon: added to the variance, >= 0.
        center: learn ``beta`` (else none is added).
        scale: learn ``gamma`` (else none is multiplied).
        gamma_initializer: initializer for ``gamma`` (default ``"ones"``).
        beta_initializer: initializer for ``beta`` (default ``"zeros"``).
        name: layer name (default ``"layer_norm_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: the size on ``axis`` is unknown, or ``axis`` is out of range.
        OptionError: a bad ``epsilon`` or initializer.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> y = gd.layer_norm(x, name="ln")
        >>> state = gd.build(y)[0](np.zeros((1, 4), np.float32))
        >>> gd.predict(y, state, np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)).round(3)
        array([[-1.342, -0.447,  0.447,  1.342]], dtype=float32)
    """
    return make_node("layer_norm", [x], {"axis": axis, "epsilon": epsilon, "center": center,
                                         "scale": scale, "gamma_initializer": gamma_initializer,
                                         "beta_initializer": beta_initializer},
                     name, where=caller_location())


# -- embedding -------------------------------------------------------------------------------
def _emb_attrs(a: dict) -> dict:
    return {"vocab_size": positive_int(a.get("vocab_size"), "vocab_size"),
            "embedding_size": positive_int(a.get("embedding_size"), "embedding_size"),
            "kernel_initializer": check_initializer(a.get("kernel_initializer", "uniform"),
                                                    "kernel_initializer")}


def _emb_dtype(d: list, a: dict) -> str:
    if d[0] not in ("int32", "int64"):
        raise RuleError(f"embedding needs integer ids, but its input has dtype {d[0]}",
                        "declare the input with dtype='int64', e.g. gd.input('ids', "
                        "(None, 8), dtype='int64')", OptionError)
    return "float32"


register_op(OpDef(
    "embedding", lambda s, a: tuple(s[0]) + (a["embedding_size"],), check_attrs=_emb_attrs,
    infer_dtype=_emb_dtype,
    params=lambda s, a: [ParamSpec("kernel", (a["vocab_size"], a["embedding_size"]),
                                   a["kernel_initializer"])],
    doc="Looks up integer ids in kernel [vocab_size, embedding_size]: "
        "(...) int -> (..., embedding_size).",
))


def embedding(x: Node, vocab_size: int, embedding_size: int,
              kernel_initializer: Any = "uniform", name: str | None = None) -> Node:
    """Look up integer ids in ``kernel [vocab_size, embedding_size]``.

    ``(...) -> (..., embedding_size)``, ids as rows of the kernel.

    Args:
        x: node of integer ids (dtype ``int32``/``int64``), any shape.
        vocab_size: number of rows, a positive int.
        embedding_size: vector size, a positive int.
        kernel_initializer: initializer for ``kernel`` (default ``"uniform"``).
        name: layer name (default ``"embedding_{n}"``).

    Returns:
        (Node): float32 ``(*x.shape, embedding_size)``.

    Raises:
        OptionError: ``x`` is not an integer input, or a size is not a positive int.

    Examples:
        >>> ids = gd.input("ids", shape=(None, 5), dtype="int64")
        >>> gd.get_output_shape(gd.embedding(ids, 100, 8), (2, 5))
        (2, 5, 8)
    """
    return make_node("embedding", [x], {"vocab_size": vocab_size,
                                        "embedding_size": embedding_size,
                                        "kernel_initializer": kernel_initializer},
                     name, where=caller_location())
