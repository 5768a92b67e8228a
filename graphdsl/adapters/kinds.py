"""The kinds of layer an adapter (dora / lora) wraps: one ``AdaptableKind`` record
per kind in ``KINDS`` (dense, conv, embedding; PEFT's LoRA/DoRA for Linear, Conv and
Embedding). The adapter contract, the op specs, the constructors, the backends and the
PEFT files ask the record instead of switching on the kind; a new kind is one record
(each backend finds the base op's own kernel by the record's name and keeps one row per
kind for the unmerged forward).

Layouts (Axon): the base kernel ``K`` in the base layer's own layout; its flat view
``[fan_in, out]`` (``AdaptableKind.flat``), on which the DoRA column norm and the
merge are computed; ``A`` whose leading axes flatten to ``fan_in`` (``A [fan_in..., r]``);
``B [r, out]``; ``magnitude [out]``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError, RuleError
from ..ops._attrs import positive_int
from ..ops.conv import conv_attrs, conv_kernel_shape, conv_shape
from ..shapes import feature_dim
from ..windows import kernel_from_hwio, kernel_hwio

#: the options an adapter keeps from a dense layer (and gives back on merge)
_DENSE = ("units", "use_bias", "kernel_initializer", "bias_initializer")
#: a conv's window options, kept by an adapter wrapping one
_WINDOW = ("kernel_size", "strides", "padding", "input_dilation", "kernel_dilation",
           "feature_group_size", "channels")


def _as_is(W: Any, *_: Any) -> Any:
    return W


def _no_checks(given: Mapping[str, Any], out: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class AdaptableKind:
    """What an adapter needs to know about the kind of layer it wraps.

    Shape rules take the adapter's input shapes ``s`` and its (checked) attributes ``a``.
    The plain forward is the base op's own (each backend's kernel and the ONNX rule of
    ``name``, given ``base_attrs``); the merge is the adapter op's, on the flat
    kernel (graphdsl.adapters.contract.merged_kernel), the same for every kind.
    """

    #: the base op (``layer_of(adapter)``)
    name: str
    #: the base layer's options the adapter keeps, by the adapter's names
    options: tuple[str, ...]
    #: ``(s, a) -> output shape``
    out_shape: Callable[[list, Mapping[str, Any]], tuple]
    #: ``(s, a) -> K's shape``, the base layer's kernel in its own layout
    kernel_shape: Callable[[list, Mapping[str, Any]], tuple]
    #: adapter option -> the base op's name for it
    renames: Mapping[str, str] = field(default_factory=dict)
    #: ``(K shape, rank, a) -> A's shape`` (its leading axes: the flat fan-in)
    a_shape: Callable[[tuple, int, Mapping[str, Any]], tuple] = (
        lambda k, r, a: (*k[:-1], r))
    #: ``(K, a) -> [fan_in, out]`` (a view where it can be; NumPy arrays or tensors)
    flat: Callable[[Any, Mapping[str, Any]], Any] = _as_is
    #: ``(W [fan_in, out], K shape, a) -> W`` in K's layout (NumPy), the inverse of flat
    unflat: Callable[[np.ndarray, tuple, Mapping[str, Any]], np.ndarray] = _as_is
    #: ``(given attrs, checked attrs) -> None``: checks the kind's own options and adds
    #: them to the checked attrs (RuleError with OptionError for a wrong one)
    check: Callable[[Mapping[str, Any], dict[str, Any]], None] = _no_checks
    #: adapter attributes this kind fixes (an embedding has no bias)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: the input is integer ids, looked up in K (the adapter checks its dtype)
    ids: bool = False
    #: PEFT's ``(A, B)`` initializers when no ``A_initializer`` is given (None: A ~
    #: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B from ``B_initializer``)
    init: tuple[Any, Any] | None = None
    #: the input axis that ``wrap`` matches against K's axis 0 before building the
    #: adapter (None: the adapter's shape rule is the check)
    input_axis: int | None = None
    #: adapter parameter -> (PEFT key suffix, stored transposed); None: PEFT adapter
    #: files of this kind are not supported
    peft_keys: Mapping[str, tuple[str, bool]] | None = None

    def base_attrs(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """The base layer's attributes (its own option names) from adapter attrs ``a``."""
        return {self.renames.get(k, k): a[k] for k in self.options}


def _dense_in(s: list) -> int:
    return feature_dim(s[0], "an adapter (dora/lora)")


def _dense_shape(s: list, a: Mapping[str, Any]) -> tuple:
    _dense_in(s)
    return tuple(s[0][:-1]) + (a["units"],)


def _conv_like(a: Mapping[str, Any]) -> dict[str, Any]:
    return {k: a[k] for k in _WINDOW} | {"filters": a["units"]}


def _check_conv(given: Mapping[str, Any], out: dict[str, Any]) -> None:
    c = conv_attrs({k: given[k] for k in _WINDOW if k in given} | {"filters": out["units"]})
    out.update({k: c[k] for k in _WINDOW})
    if c["feature_group_size"] != 1:
        raise RuleError("adapters on a grouped conv (feature_group_size > 1) are not "
                        "supported: the low-rank update would not merge into the "
                        "grouped kernel (PEFT cannot merge them either)",
                        "leave this layer out of targets", OptionError)


def _hwio_shape(k: tuple, channels: str) -> tuple:
    """The shape of ``kernel_hwio`` of a conv kernel of shape ``k``."""
    return k if channels == "last" else (*k[2:], k[1], k[0])


def _conv_flat(K: Any, a: Mapping[str, Any]) -> Any:
    W = kernel_hwio(K, a["channels"])
    return W.reshape(-1, W.shape[-1])


def _conv_unflat(W: np.ndarray, k: tuple, a: Mapping[str, Any]) -> np.ndarray:
    ch = a["channels"]
    return np.ascontiguousarray(kernel_from_hwio(W.reshape(_hwio_shape(k, ch)), ch))


def _check_embedding(given: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["vocab_size"] = positive_int(given.get("vocab_size"), "vocab_size")
    if out["use_bias"] or out["dropout"] > 0:
        raise RuleError("an embedding adapter has no bias or dropout "
                        "(PEFT's embedding LoRA has none)",
                        "leave use_bias and dropout at their defaults",
                        OptionError)


def _standard_normal(shape: tuple, dtype: Any, rng: Any) -> Any:
    """PEFT's init of an embedding adapter's B (``nn.init.normal_``: N(0, 1))."""
    return rng.standard_normal(shape).astype(dtype)


#: PEFT's keys of a Linear (or GPT-2 Conv1D) adapter: ``lora_A.weight [r, in]``, ...
_PEFT_LINEAR = {"A": ("lora_A.weight", True), "B": ("lora_B.weight", True),
                "magnitude": ("lora_magnitude_vector", False)}

DENSE = AdaptableKind(
    "dense", _DENSE,
    out_shape=_dense_shape,
    kernel_shape=lambda s, a: (_dense_in(s), a["units"]),
    input_axis=-1, peft_keys=_PEFT_LINEAR)

CONV = AdaptableKind(
    "conv", _DENSE + _WINDOW, renames={"units": "filters"},
    out_shape=lambda s, a: conv_shape(s, _conv_like(a)),
    kernel_shape=lambda s, a: conv_kernel_shape(s[0], _conv_like(a)),
    a_shape=lambda k, r, a: (*_hwio_shape(k, a["channels"])[:-1], r),
    flat=_conv_flat, unflat=_conv_unflat, check=_check_conv)

EMBEDDING = AdaptableKind(
    "embedding", ("units", "vocab_size", "kernel_initializer"),
    renames={"units": "embedding_size"},
    out_shape=lambda s, a: tuple(s[0]) + (a["units"],),
    kernel_shape=lambda s, a: (a["vocab_size"], a["units"]),
    check=_check_embedding, fixed={"use_bias": False}, ids=True,
    init=("zeros", _standard_normal),
    # PEFT's Embedding keeps A [r, vocab] and B [dim, r] as bare parameters
    peft_keys={**_PEFT_LINEAR, "A": ("lora_embedding_A", True),
               "B": ("lora_embedding_B", True)})

#: the kinds by base op name, in the order error messages list them
KINDS: dict[str, AdaptableKind] = {k.name: k for k in (DENSE, CONV, EMBEDDING)}
#: the kind of an adapter without a ``layer`` attribute (its attributes stay as they
#: were before adapters wrapped other kinds)
DEFAULT = DENSE.name


def listed(last: str) -> str:
    """The kinds as prose: ``"dense, conv or embedding"`` for ``last="or"``."""
    names = list(KINDS)
    return f"{', '.join(names[:-1])} {last} {names[-1]}"
