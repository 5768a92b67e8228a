"""Axon's other dropout layers: spatial_dropout, alpha_dropout, feature_alpha_dropout.

Like ``graphdsl.dropout`` each draws its mask from the layer's RNG ``key`` state entry
(or torch's RNG in a ``to_torch`` module) in train mode only, and is the identity at
inference (``rate`` 0: always). With ``q = 1 - rate``:

- ``spatial_dropout`` (Axon's code): one keep/drop draw per (batch, spatial position),
  shared by every channel there (Axon's ``spatial_dropout_noise_shape`` sets the channel
  axis of the noise to 1); kept values scaled by 1/q. torch's ``Dropout2d`` instead draws
  one per (batch, channel), shared over the positions.
- ``alpha_dropout``: per element, ``a * x + b`` kept and ``a * alpha' + b`` dropped,
  ``alpha' = -selu_alpha * selu_scale``, ``a = (q + alpha'^2 q (1-q))^-1/2``, ``b = -a
  (1-q) alpha'`` (the paper's and torch's, which keep mean 0 and variance 1; Axon's code
  has ``a = (q alpha'^2)^-1/2``, which keeps neither the variance nor, at rate 0, x).
- ``feature_alpha_dropout`` (Axon's code): the mask of spatial_dropout; kept ``x / q``,
  dropped ``-selu(x)``. torch's ``FeatureAlphaDropout`` shares one draw per (batch,
  channel) and maps as alpha_dropout does.
"""
from __future__ import annotations

from ..errors import RuleError, fmt_shape
from ..node import Node, caller_location, make_node
from ..registry import RNG_KEY, OpDef, register_op
from ..windows import channels_option
from ._attrs import number
from .nn import ACTIVATIONS

SELU_ALPHA = ACTIVATIONS["selu"]["alpha"]
SELU_SCALE = ACTIVATIONS["selu"]["gamma"]
#: the ops whose mask is shared over the channel axis (and so take ``channels``)
SPATIAL = ("spatial_dropout", "feature_alpha_dropout")


def noise_shape(shape: tuple, op: str, channels: str = "last") -> tuple:
    """The mask's shape for an input of ``shape``: the channel axis (last, or 1 with
    ``channels="first"``) set to 1 for the SPATIAL ops, ``shape`` itself otherwise."""
    if op not in SPATIAL:
        return tuple(shape)
    axis = len(shape) - 1 if channels == "last" else 1
    return tuple(1 if i == axis else d for i, d in enumerate(shape))


def _attrs(op: str):
    def check(a: dict) -> dict:
        out = {"rate": number(a.get("rate", 0.5), "rate", 0.0, 1.0, hi_open=True)}
        if op in SPATIAL:
            out["channels"] = channels_option(a.get("channels", "last"))
        return out

    return check


def _shape(op: str):
    def rule(s: list, a: dict) -> tuple:
        if op in SPATIAL and len(s[0]) < 3:
            raise RuleError(f"{op} needs an input of rank >= 3 ([batch, *spatial, "
                            f"channels]), got {fmt_shape(s[0])}",
                            "reshape the input to e.g. (None, 8, 8, 3), or use gd.dropout")
        return s[0]

    return rule


_DOCS = {
    "spatial_dropout": "Axon's spatial dropout: one draw per (batch, position) shared by "
                       "all channels (channels last/first); kept x/(1-rate), dropped 0.",
    "alpha_dropout": "Alpha dropout (SELU nets): kept a*x+b, dropped a*alpha'+b with the "
                     "paper's a, b (mean 0, variance 1 kept).",
    "feature_alpha_dropout": "Axon's feature alpha dropout: spatial_dropout's mask; kept "
                             "x/(1-rate), dropped -selu(x).",
}
for _op, _doc in _DOCS.items():
    register_op(OpDef(_op, _shape(_op), output_alias="inputs", check_attrs=_attrs(_op),
                      params=lambda s, a: [RNG_KEY],
                      doc=_doc + " Train mode only; identity at inference. Shape unchanged. "
                                 "State: key (RNG seed)."))


def spatial_dropout(x: Node, rate: float = 0.5, channels: str = "last",
                    name: str | None = None) -> Node:
    """Axon's spatial dropout: whole channels dropped together, in train mode only.

    Every channel at a (batch, position) is kept (scaled by ``1/(1-rate)``) or zeroed
    together; the identity at inference.

    Args:
        x: input node ``[batch, *spatial, C]`` (rank >= 3; ``channels="first"``:
            ``[batch, C, *spatial]``).
        rate: drop probability in ``[0, 1)``.
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"spatial_dropout_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: rank below 3.
        OptionError: ``rate`` outside ``[0, 1)`` or a bad ``channels``.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 4, 3))
        >>> gd.get_output_shape(gd.spatial_dropout(x, 0.2), (1, 4, 4, 3))
        (1, 4, 4, 3)
    """
    return make_node("spatial_dropout", [x], {"rate": rate, "channels": channels}, name,
                     where=caller_location())


def alpha_dropout(x: Node, rate: float = 0.5, name: str | None = None) -> Node:
    """Alpha dropout (SELU networks), in train mode only.

    Each element is kept (``a*x + b``) or set to ``a*alpha' + b``, so a standard-normal
    input keeps mean 0 and variance 1 (the paper's and torch's constants).

    Args:
        x: input node, any shape.
        rate: drop probability in ``[0, 1)``.
        name: layer name (default ``"alpha_dropout_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        OptionError: ``rate`` outside ``[0, 1)``.

    Examples:
        >>> x = gd.input("x", shape=(None, 4))
        >>> y = gd.alpha_dropout(x, 0.1)
        >>> init_fn, predict_fn = gd.build(y)           # inference: the identity
        >>> predict_fn(init_fn(np.ones((1, 4), np.float32)), np.ones((1, 4), np.float32))
        array([[1., 1., 1., 1.]], dtype=float32)
    """
    return make_node("alpha_dropout", [x], {"rate": rate}, name, where=caller_location())


def feature_alpha_dropout(x: Node, rate: float = 0.5, channels: str = "last",
                          name: str | None = None) -> Node:
    """Axon's feature alpha dropout (rank >= 3), in train mode only.

    The mask of ``spatial_dropout``; kept elements become ``x/(1-rate)``, dropped ones
    ``-selu(x)``.

    Args:
        x: input node ``[batch, *spatial, C]``.
        rate: drop probability in ``[0, 1)``.
        channels: ``"last"`` or ``"first"``.
        name: layer name (default ``"feature_alpha_dropout_{n}"``).

    Returns:
        (Node): the shape of ``x``.

    Raises:
        ShapeError: rank below 3.
        OptionError: ``rate`` outside ``[0, 1)``.

    Examples:
        >>> x = gd.input("x", shape=(None, 4, 3))
        >>> gd.get_output_shape(gd.feature_alpha_dropout(x, 0.1), (2, 4, 3))
        (2, 4, 3)
    """
    return make_node("feature_alpha_dropout", [x], {"rate": rate, "channels": channels},
                     name, where=caller_location())
