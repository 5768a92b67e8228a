"""ONNX rules: one per registered op (``RULES``), the ONNX counterpart of a backend's
kernel table.

How a rule is written: ``RULES[op] = Rule(fn, min_opset)`` where ``fn(b, layer)`` emits
ONNX nodes through the :class:`.builder.Builder` ``b`` and returns the name of the
layer's output tensor (a list of names for a container). ``layer`` (:class:`Layer`)
gives the input tensor names, their static graphdsl shapes and dtypes, the op's
attributes, and ``layer.param(local)``: the initializer holding a parameter (created on
first use, shared by layers that share the value, e.g. a tied embedding). ``min_opset``
is the lowest ONNX opset whose operators the rule uses with the semantics it needs; a
rule may use newer operators when the export's ``b.opset`` allows (LayerNormalization
from 17, Gelu from 20) and decomposes otherwise. The export's default opset is the
highest ``min_opset`` of the model's layers, at least :data:`FLOOR`.

Example (a new element-wise op ``hardswish`` registered elsewhere)::

    RULES["hardswish"] = Rule(lambda b, layer: b.op("HardSwish", layer.ins), 14)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from onnx import TensorProto

from graphdsl.adapters.contract import adapter_ops, base_options, merged_kernel
from graphdsl.custom import onnx_rule_for
from graphdsl.dtypes import is_float
from graphdsl.errors import GraphDSLError, RuleError
from graphdsl.ops.tensor import pad_widths

from .builder import ELEM, Builder
from .conv import CONV_RULES
from .conv_variants import VARIANT_RULES
from .layer import ACTIVATIONS, FLOOR, Layer, Rule, affine, along, gather_rows, normalized
from .pool import POOL_RULES
from .recurrent import RECURRENT_RULES
from .resize import RESIZE_RULES
from .special import SPECIAL_RULES


def _activation(op: str) -> Rule:
    return Rule(lambda b, layer: ACTIVATIONS[op](b, layer.ins[0], layer.attrs))


def _dense(b: Builder, layer: Layer) -> str:
    bias = layer.param("bias") if "bias" in layer.arrays else None
    return affine(b, layer.ins[0], layer.param("kernel"), bias)


def _adapter(b: Builder, layer: Layer) -> str:
    """A dora/lora layer exported merged: the rule of the plain layer it adapts (dense:
    MatMul, conv: Conv, embedding: Gather) with its options and one kernel ``(K +
    s*A@B) * (m/c)`` (DoRA) or ``K + s*A@B`` (LoRA) computed at export time in the base
    kernel's layout, bias unchanged."""
    arrays = {k: np.asarray(v, np.float32) for k, v in layer.arrays.items()}
    try:
        W = merged_kernel(layer.op, arrays, layer.attrs)
    except RuleError as e:  # a zero-norm DoRA column
        raise GraphDSLError(e.what, layer=layer.name, op=layer.op, fix=e.fix,
                            where=layer.node.where if layer.node else None) from None
    kernel = b.weight(W, f"{layer.attrs['base'] or layer.name}.kernel")
    op, attrs = base_options(layer.attrs)
    plain = replace(layer, op=op, attrs=attrs, arrays={**layer.arrays, "kernel": W},
                    param=lambda local: kernel if local == "kernel" else layer.param(local))
    return RULES[op].fn(b, plain)


def _layer_norm(b: Builder, layer: Layer) -> str:
    x, rank = layer.ins[0], len(layer.shape)
    ax, eps = layer.attrs["axis"] % rank, layer.attrs["epsilon"]
    gamma = layer.param("gamma") if "gamma" in layer.arrays else None
    beta = layer.param("beta") if "beta" in layer.arrays else None
    if b.opset >= 17 and ax == rank - 1:
        if gamma is None:
            gamma = b.const(np.ones(layer.shape[ax], np.float32))
        return b.op("LayerNormalization", [x, gamma] + ([beta] if beta else []),
                    axis=-1, epsilon=eps)
    y = normalized(b, x, [ax], eps)
    if gamma is not None:
        y = b.op("Mul", [y, along(b, gamma, rank, ax)])
    if beta is not None:
        y = b.op("Add", [y, along(b, beta, rank, ax)])
    return y


def _rms_norm(b: Builder, layer: Layer) -> str:
    """gamma * (x * 1/sqrt(mean(x^2) + eps)), the NumPy kernel's order of operations
    (RMSNormalization needs opset 23; this form runs everywhere); in float32 in a half
    export, as transformers does (x^2 overflows float16 from |x| > 256)."""
    x, rank = b.f32(layer.ins[0]), len(layer.shape)
    ax = layer.attrs["axis"] % rank
    ms = b.op("Add", [b.reduce("ReduceMean", b.op("Mul", [x, x]), [ax]),
                      b.const(layer.attrs["epsilon"], "float32")])
    y = b.narrow(b.op("Mul", [x, b.op("Reciprocal", [b.op("Sqrt", [ms])])]))
    gamma = layer.param("gamma")
    if layer.attrs["shift"]:
        gamma = b.op("Add", [gamma, b.const(layer.attrs["shift"])])
    return b.op("Mul", [along(b, gamma, rank, ax), y])


def _variadic(op_type: str) -> Rule:
    def fn(b: Builder, layer: Layer) -> str:
        xs = [b.cast(x, t, layer.dtype) for x, t in zip(layer.ins, layer.in_dtypes)]
        y = xs[0]
        for x in xs[1:]:
            y = b.op(op_type, [y, x])
        return y
    return Rule(fn)


def _concatenate(b: Builder, layer: Layer) -> str:
    xs = [b.cast(x, t, layer.dtype) for x, t in zip(layer.ins, layer.in_dtypes)]
    return b.op("Concat", xs, axis=layer.attrs["axis"])


def _reshape(b: Builder, layer: Layer) -> str:
    # graphdsl's None keeps the input's size at that axis: ONNX's 0 (allowzero=0). A -1 is
    # given (static, else computed), as ONNX cannot infer it for an empty tensor
    target = [0 if d is None else s if d == -1 and s is not None else d
              for d, s in zip(layer.attrs["shape"], layer.shape)]
    if -1 not in target:
        return b.reshape(layer.ins[0], target)
    rest = [i for i in range(len(layer.in_shapes[0])) if i >= len(target) or target[i] != 0]
    size = b.reduce("ReduceProd", b.op("Gather", [b.op("Shape", [layer.ins[0]]),
                                                  b.ints(rest)]), [0])
    known = int(np.prod([d for d in target if d not in (0, -1)]))
    inferred = b.op("Div", [size, b.ints([known])])
    return b.reshape(layer.ins[0], [inferred if d == -1 else d for d in target])


def _transpose(b: Builder, layer: Layer) -> str:
    rank = len(layer.in_shapes[0])
    axes = layer.attrs["axes"]
    perm = list(reversed(range(rank))) if axes is None else [a % rank for a in axes]
    return b.op("Transpose", [layer.ins[0]], perm=perm)


def _pad(b: Builder, layer: Layer) -> str:
    widths = pad_widths(len(layer.in_shapes[0]), layer.attrs)  # ONNX: all lows, then highs
    pads = b.ints([lo for lo, _ in widths] + [hi for _, hi in widths])
    dtype = "int64" if layer.in_dtypes[0].startswith("int") else "float32"
    x = b.cast(layer.ins[0], layer.in_dtypes[0], dtype)
    value = b.const(layer.attrs["value"], "int64" if dtype == "int64" else None)
    return b.cast(b.op("Pad", [x, pads, value], mode="constant"), dtype, layer.dtype)


def _bias(b: Builder, layer: Layer) -> str:
    x = b.cast(layer.ins[0], layer.in_dtypes[0], layer.dtype)
    return b.op("Add", [x, layer.param("bias")])


def _matmul(b: Builder, layer: Layer) -> str:
    xs = [b.cast(x, t, "float32") for x, t in zip(layer.ins, layer.in_dtypes)]
    return b.op("MatMul", xs)


def _scalar(b: Builder, v: str) -> str:
    return b.op("Reshape", [v, b.const(np.zeros(0, np.int64), "int64")])


# -- transformer ops -----------------------------------------------------------------------------
def _attention(b: Builder, layer: Layer) -> str:
    """softmax(q k^T * scale, masked) v. Grouped-query k/v heads are never repeated: the
    queries are viewed as [b, kv, heads/kv, n, d] against k/v [b, kv, 1, m, d]."""
    q, k, v = layer.ins[:3]
    qs, ks = layer.in_shapes[0], layer.in_shapes[1]
    sizes = (qs[1], ks[1], qs[2], ks[2], qs[3])  # heads, kv heads, n, m, head_dim
    h, kvh, n, m, d = (b.dim(t, i, s) for t, i, s in zip((q, k, q, k, q), (1, 1, 2, 2, 3), sizes))
    # the sizes the reshapes need, static where known; never -1 (an empty batch has none)
    H, KV, N, M, D = (t if s is None else s for t, s in zip((h, kvh, n, m, d), sizes))
    grouped = qs[1] is None or ks[1] is None or qs[1] != ks[1]
    if grouped:
        rep = qs[1] // ks[1] if qs[1] and ks[1] else b.op("Div", [h, kvh])
        q = b.reshape(q, [0, KV, rep, N, D])
        k, v = b.unsqueeze(k, [2]), b.unsqueeze(v, [2])
    perm = [0, 1, 2, 4, 3] if grouped else [0, 1, 3, 2]
    s = b.op("MatMul", [q, b.op("Transpose", [k], perm=perm)])
    scale = layer.attrs["scale"]
    if scale is None and qs[3] is not None:
        scale = qs[3] ** -0.5
    sc = b.const(scale) if scale is not None else b.op("Reciprocal", [b.op(
        "Sqrt", [b.op("Cast", [_scalar(b, d)], to=b.elem("float32"))])])
    s = b.f32(b.op("Mul", [s, sc]))  # masked softmax in float32, as transformers does
    if grouped:
        s = b.reshape(s, [0, H, N, M])
    keep = _keep_mask(b, layer, n, m)
    if keep is not None:
        low = b.const(np.finfo(np.float32).min, "float32")
        s = b.op("Where", [keep, s, low])
    p = b.narrow(b.op("Softmax", [s], axis=-1))
    if grouped:
        p = b.reshape(p, [0, KV, rep, N, M])
    y = b.op("MatMul", [p, v])
    if grouped:
        y = b.reshape(y, [0, H, N, D])
    return y


def _keep_mask(b: Builder, layer: Layer, n: str, m: str) -> str | None:
    """The boolean keep-mask (None: keep all) as the NumPy kernel's attention_keep, for
    ``n`` queries and ``m`` keys (1-D int64 sizes)."""
    keep = None
    if len(layer.ins) > 3:
        mask, t = layer.ins[3], layer.in_dtypes[3]
        zero = b.const(0, "int64") if t.startswith("int") else b.const(0.0)
        mask = b.cast(mask, t, "int64" if t.startswith("int") else "float32")
        keep = b.op("Not", [b.op("Equal", [mask, zero])])
    if layer.attrs["causal"]:
        n, ms = _scalar(b, n), _scalar(b, m)
        zero, one = b.const(0, "int64"), b.const(1, "int64")
        i = b.op("Add", [b.op("Range", [zero, n, one]), b.op("Sub", [ms, n])])
        i = b.unsqueeze(i, [1])
        j = b.unsqueeze(b.op("Range", [zero, ms, one]), [0])
        vis = b.op("LessOrEqual", [j, i])
        if layer.attrs["window"] is not None:
            near = b.op("Less", [b.op("Sub", [i, j]), b.const(layer.attrs["window"], "int64")])
            vis = b.op("And", [vis, near])
        keep = vis if keep is None else b.op("And", [keep, vis])
    return keep


def _rotary(b: Builder, layer: Layer) -> str:
    x, pos = layer.ins
    d_static = layer.in_shapes[0][3]
    if d_static is not None:  # the NumPy kernel's float32 inverse frequencies, exactly
        d = d_static
        inv = b.const(1.0 / (layer.attrs["theta"] ** (np.arange(0, d, 2, dtype=np.float32)
                                                      / d)), "float32")
        half = b.ints([d // 2])
    else:
        d = b.dim(x, 3)
        df = b.op("Cast", [_scalar(b, d)], to=TensorProto.FLOAT)
        idx = b.op("Cast", [b.op("Range", [b.const(0, "int64"), _scalar(b, d),
                                           b.const(2, "int64")])], to=TensorProto.FLOAT)
        inv = b.op("Reciprocal", [b.op("Pow", [b.const(layer.attrs["theta"], "float32"),
                                               b.op("Div", [idx, df])])])
        half = b.op("Div", [d, b.ints([2])])
    posf = b.op("Cast", [pos], to=TensorProto.FLOAT)
    ang = b.op("Mul", [b.unsqueeze(posf, [-1]), inv])  # [batch, seq, d/2]

    def full(t: str) -> str:  # [batch, 1, seq, d]
        return b.unsqueeze(b.op("Concat", [t, t], axis=-1), [1])

    # angles in float32, cos/sin in the export's dtype (transformers' rotary embedding)
    cos, sin = (full(b.narrow(b.op(f, [ang]))) for f in ("Cos", "Sin"))
    lo, hi = b.slice(x, 0, half, -1), b.slice(x, half, None, -1)
    rot = b.op("Concat", [b.op("Neg", [hi]), lo], axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rot, sin])])


def _positions(b: Builder, layer: Layer) -> str:
    x = layer.ins[0]
    rank = len(layer.in_shapes[0])
    ax = layer.attrs["axis"] % rank
    n = _scalar(b, b.dim(x, ax, layer.in_shapes[0][ax]))
    off = layer.attrs["offset"]
    r = b.op("Range", [b.const(off, "int64"), b.op("Add", [n, b.const(off, "int64")]),
                       b.const(1, "int64")])
    lead = b.slice(b.op("Shape", [x]), 0, ax + 1, 0)
    return b.op("Expand", [r, lead])


def _tied_dense(b: Builder, layer: Layer) -> str:
    bias = layer.param("bias") if "bias" in layer.arrays else None
    kt = b.op("Transpose", [layer.param("kernel")], perm=[1, 0])
    return affine(b, layer.ins[0], kt, bias)


# -- sources and plumbing ---------------------------------------------------------------------
def _full_like(b: Builder, layer: Layer) -> str:
    # float64 is computed in the export's float dtype, as every float
    return b.full(b.op("Shape", [layer.ins[0]]), layer.attrs["value"],
                  None if is_float(layer.dtype) else layer.dtype)


def _custom(b: Builder, layer: Layer) -> str:
    a = layer.attrs
    found = onnx_rule_for(a["fn"])
    fn_name = a["fn_name"] or getattr(a["fn"], "__name__", "fn")
    if found is None:
        raise GraphDSLError(
            f"custom layer {layer.name!r} (function {fn_name!r}) has no ONNX rule, so it "
            "cannot be exported", layer=layer.name, op="custom",
            where=layer.node.where if layer.node else None,
            fix=f"register one before exporting: @gd.register_onnx_rule({fn_name}) on "
                f"def rule(b, *inputs, **opts) returning b.op('OnnxOp', [...]) (see "
                "gd.register_onnx_rule)")
    out = found[0](b, *layer.ins, **a["opts"])
    if not isinstance(out, str):
        raise GraphDSLError(f"the ONNX rule of custom layer {layer.name!r} returned "
                            f"{type(out).__name__}, not a tensor name", layer=layer.name,
                            op="custom", fix="return the name b.op(...) gives")
    return out


def custom_min_opset(fn: Any) -> int:
    """The ``min_opset`` a custom layer's registered rule declares (FLOOR if none)."""
    found = onnx_rule_for(fn)
    return FLOOR if found is None else found[1]


def _cast(b: Builder, layer: Layer) -> str:
    """graphdsl.mixed_precision's cast: the value rounded to the cast's dtype by a Cast
    there and back, as the export keeps one float dtype (a policy's half-precision
    results come out in it, holding the rounded values)."""
    have, want = layer.in_dtypes[0], layer.attrs["dtype"]
    t = b.elem(have)
    if not is_float(have) or ELEM[want] == t:
        return layer.ins[0]
    return b.op("Cast", [b.op("Cast", [layer.ins[0]], to=ELEM[want])], to=t)


RULES: dict[str, Rule] = {
    # a graph input as declared: a float64 one is declared float32 (ELEM), the dtype its
    # values are computed in
    "input": Rule(lambda b, layer: layer.ins[0]),
    "constant": Rule(lambda b, layer: b.weight(layer.attrs["value"], layer.name)),
    "param": Rule(lambda b, layer: layer.param("value")),
    "custom": Rule(_custom),
    "container": Rule(lambda b, layer: list(layer.ins)),
    "optional": Rule(lambda b, layer: layer.ins[0] if layer.ins[0] is not None
                     else layer.ins[1]),
    "full_like": Rule(_full_like),
    "dense": Rule(_dense),
    "dropout": Rule(lambda b, layer: layer.ins[0]),  # inference: the identity
    "layer_norm": Rule(_layer_norm),
    "embedding": Rule(lambda b, layer: gather_rows(
        b, layer.param("kernel"), layer.ins[0], layer.arrays["kernel"].shape[0],
        layer.in_dtypes[0])),
    "add": _variadic("Add"),
    "subtract": _variadic("Sub"),
    "multiply": _variadic("Mul"),
    "concatenate": Rule(_concatenate),
    "cache_append": Rule(_concatenate),
    "reshape": Rule(_reshape),
    "cast": Rule(_cast),
    "flatten": Rule(lambda b, layer: b.op("Flatten", [layer.ins[0]], axis=1)),
    "transpose": Rule(_transpose),
    "pad": Rule(_pad),
    "bias": Rule(_bias),
    "matmul": Rule(_matmul),
    "attention": Rule(_attention, 14),  # Reshape allowzero: an empty sequence stays empty
    "rms_norm": Rule(_rms_norm),
    "rotary_embedding": Rule(_rotary),
    "slice": Rule(lambda b, layer: b.slice(layer.ins[0], layer.attrs["start"],
                                           layer.attrs["stop"], layer.attrs["axis"])),
    "positions": Rule(_positions),
    "tied_dense": Rule(_tied_dense),
    **CONV_RULES,  # conv, batch_norm, instance_norm, group_norm
    **POOL_RULES,  # max/avg/lp pools, adaptive and global pools
    **SPECIAL_RULES,  # blur_pool, mask, cond
    **VARIANT_RULES,  # conv_transpose, depthwise_conv, separable_conv2d/3d
    **RECURRENT_RULES,  # lstm, gru, conv_lstm, reverse
    **RESIZE_RULES,  # resize, bilinear, spatial/alpha/feature_alpha dropout (identity)
    **{op: _activation(op) for op in ACTIVATIONS},
    **{op: Rule(_adapter) for op in adapter_ops()},  # dora, lora: exported merged
}


__all__ = ["ACTIVATIONS", "FLOOR", "Layer", "RULES", "Rule", "affine", "custom_min_opset"]
