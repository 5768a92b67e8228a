"""The two adapter ops, ``dora`` and ``lora`` (category ``"adapter"``).

One input ``x (..., in)`` (any rank >= 1, last axis known) -> ``(..., units)``.

Attributes: ``units``, ``rank``, ``alpha``, ``rslora``, ``scale`` (derived: alpha/rank,
or alpha/sqrt(rank) with rslora), ``dropout`` (PEFT's lora_dropout, train mode only),
``base`` (name of the layer owning ``kernel``/``bias`` when wrapping; None: the layer owns
``base_weight``), ``use_bias``, ``kernel_initializer``/``bias_initializer`` (used only when the base
weights are created), ``A_initializer`` (None: PEFT's U(-1/sqrt(in), 1/sqrt(in))),
``B_initializer`` (default zeros); DoRA adds ``detach_norm`` (no gradient through the
column norm, paper sec. 4.3) and ``eps`` (None: a zero-norm column is an error; a float
clamps the norm, ``c = max(c, eps)``). ``layer`` (dense, conv or embedding: a record of
graphdsl.adapters.kinds, which gives the shape rules below) is the kind of layer adapted,
with that layer's options (conv: its window options; embedding: ``vocab_size``). A conv
adapter reads ``x [batch, *spatial, C]`` and ``A [*kernel_size, C, r]`` is a conv with the
base layer's window, ``B [r, filters]`` a 1x1 conv (PEFT's conv LoRA); an embedding
adapter reads int ids, ``A [vocab, r]`` (PEFT's embedding LoRA: ``A = 0``, ``B ~ N(0, 1)``
unless ``A_initializer`` is given).

Parameters in this order: ``kernel [in, out]`` (owner=base, frozen) or ``base_weight
[in, out]`` (own, frozen); ``bias [out]`` (same owner, frozen) when ``use_bias``;
``A [in, rank]``; ``B [rank, out]``; DoRA: ``magnitude [out]`` (initialized to the
column norms of the kernel the layer really has); state ``key`` when ``dropout > 0``.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from ..errors import OptionError, RuleError
from ..initializers import check_initializer
from ..node import is_valid_name
from ..ops._attrs import boolean, number, positive_int
from ..registry import RNG_KEY, DerivedInit, OpDef, ParamSpec, register_op
from ._math import dora_column_norm, dora_merge, lora_merge, lora_scale, lora_uniform
from .contract import ADAPTABLE, base_kernel, flat_A, flat_kernel, kind_of
from .kinds import DEFAULT, KINDS, listed


def _layer_attrs(a: dict, out: dict) -> None:
    """The adapted layer's kind and options into ``out`` (checked)."""
    layer = a.get("layer", DEFAULT)
    if layer not in ADAPTABLE:
        raise RuleError(f"layer must be one of {ADAPTABLE}, got {layer!r}",
                        f"adapters wrap {listed('and')} layers", OptionError)
    if layer != DEFAULT:  # a dense adapter's attributes stay as they always were
        out["layer"] = layer
    KINDS[layer].check(a, out)


def _check(op: str):
    def check(a: dict) -> dict:  # an option it does not keep: make_node names it
        out: dict[str, Any] = {}
        out["units"] = positive_int(a.get("units"), "units (output_size)")
        out["rank"] = positive_int(a.get("rank", 8), "rank")
        alpha = number(a.get("alpha", 16.0), "alpha", 0.0)
        if alpha <= 0:
            raise RuleError(f"alpha must be > 0, got {alpha}", "pass alpha=16.0 (the default) "
                            "or another positive number", OptionError)
        out["alpha"] = alpha
        out["rslora"] = boolean(a.get("rslora", False), "rslora")
        out["scale"] = lora_scale(alpha, out["rank"], out["rslora"])  # always re-derived
        out["dropout"] = number(a.get("dropout", 0.0), "dropout", 0.0, 1.0, hi_open=True)
        base = a.get("base")
        if base is not None and not is_valid_name(base):
            raise RuleError(f"base must be the name of the wrapped layer, got {base!r}",
                            "wrap a dense layer that has an explicit name=", OptionError)
        out["base"] = base
        out["use_bias"] = boolean(a.get("use_bias", base is not None), "use_bias")
        out["kernel_initializer"] = check_initializer(
            a.get("kernel_initializer", "glorot_uniform"), "kernel_initializer")
        out["bias_initializer"] = check_initializer(a.get("bias_initializer", "zeros"),
                                                    "bias_initializer")
        ai = a.get("A_initializer")
        out["A_initializer"] = None if ai is None else check_initializer(ai, "A_initializer")
        out["B_initializer"] = check_initializer(a.get("B_initializer", "zeros"),
                                                 "B_initializer")
        if op == "dora":
            out["detach_norm"] = boolean(a.get("detach_norm", True), "detach_norm")
            eps = a.get("eps")
            if eps is not None:
                eps = number(eps, "eps", 0.0)
                if eps <= 0:
                    raise RuleError(f"eps must be > 0 or None, got {eps}",
                                    "pass eps=1e-6, or eps=None to make a zero-norm column "
                                    "an error", OptionError)
            out["eps"] = eps
        _layer_attrs(a, out)
        return out

    return check


def _shape(s: list, a: Mapping) -> tuple:
    return kind_of(a).out_shape(s, a)


def _dtype(d: list, a: Mapping) -> str:
    kind = kind_of(a)
    if kind.ids and d[0] not in ("int32", "int64"):
        raise RuleError(f"an {kind.name} adapter needs integer ids, but its input has dtype "
                        f"{d[0]}", f"pass the ids the {kind.name} layer reads", OptionError)
    return "float32"


def _init_magnitude(a: Mapping[str, Any], p: Mapping[str, Any]):
    """m_j = ||K[:, j] + s*(A@B)[:, j]|| (K, A flattened to [fan_in, .]) from the kernel
    the layer has at init (same arithmetic as the kernels: m/c == 1 at the start)."""
    return dora_column_norm(flat_kernel(base_kernel(p), a), flat_A(p["A"]), p["B"],
                            a["scale"], a["eps"])


def _params(op: str):
    def params(s: list, a: Mapping) -> list[ParamSpec]:
        out, r, base, kind = a["units"], a["rank"], a["base"], kind_of(a)
        kshape = kind.kernel_shape(s, a)
        kname = "base_weight" if base is None else "kernel"
        specs = [ParamSpec(kname, kshape, a["kernel_initializer"], False, owner=base)]
        if a["use_bias"]:
            specs.append(ParamSpec("bias", (out,), a["bias_initializer"], False, owner=base))
        a_init, b_init = a["A_initializer"] or lora_uniform, a["B_initializer"]
        if kind.init is not None and a["A_initializer"] is None:
            a_init, b_init = kind.init
        specs.append(ParamSpec("A", kind.a_shape(kshape, r, a), a_init))
        specs.append(ParamSpec("B", (r, out), b_init))
        if op == "dora":
            norm = partial(_init_magnitude, a)
            specs.append(ParamSpec("magnitude", (out,), DerivedInit(norm, "dora_magnitude")))
        if a["dropout"] > 0:
            specs.append(RNG_KEY)
        return specs

    return params


register_op(OpDef(
    "dora", _shape, params=_params("dora"), check_attrs=_check("dora"),
    infer_dtype=_dtype,
    category="adapter", extra={"merge": dora_merge},
    doc="DoRA (Liu et al. 2024): y = (m / c) * (x @ K + s * (x @ A) @ B) + b, "
        "c_j = ||K[:, j] + s * (A @ B)[:, j]|| (column norm, treated as a constant in "
        "training). K [in, out] frozen (kernel of `base`, or own base_weight), A [in, r], "
        "B [r, out], magnitude m [out]; (..., in) -> (..., units). Also on conv and "
        "embedding layers (attribute `layer`; see the module docstring).",
))

register_op(OpDef(
    "lora", _shape, params=_params("lora"), check_attrs=_check("lora"),
    infer_dtype=_dtype,
    category="adapter", extra={"merge": lora_merge},
    doc="LoRA (Hu et al. 2021): y = x @ K + b + s * (dropout(x) @ A) @ B. "
        "K [in, out] frozen (kernel of `base`, or own base_weight), A [in, r], "
        "B [r, out]; (..., in) -> (..., units). Also on conv and embedding layers.",
))
