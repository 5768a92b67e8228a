"""Constructors shared by ``graphdsl.dora`` and ``graphdsl.lora``: a standalone adapter
layer, ``build``, and ``wrap`` around an existing dense layer."""
from __future__ import annotations

from typing import Any

from ..errors import GraphDSLError, OptionError, ShapeError, fmt_shape
from ..node import Node, make_node
from ..ops.core import input as _input
from ..ops.nn import with_activation
from ..registry import OPS
from ..shapes import is_int
from .contract import ADAPTABLE, is_adapter, wrap_options
from .kinds import KINDS, listed

DEFAULTS = {"rank": 8, "alpha": 16.0}


def options(op: str, rank: Any, alpha: Any, dropout: Any, rslora: Any,
            detach_norm: Any = True, eps: Any = None, A_initializer: Any = None,
            B_initializer: Any = "zeros") -> dict[str, Any]:
    """The adapter attributes common to every constructor (checked by the op)."""
    a = {"rank": rank, "alpha": alpha, "dropout": dropout, "rslora": rslora,
         "A_initializer": A_initializer, "B_initializer": B_initializer}
    if op == "dora":
        a["detach_norm"] = detach_norm
        a["eps"] = eps
    return a


def _node_arg(x: Any, what: str, op: str, name: str | None, where: str) -> Node:
    if not isinstance(x, Node):
        raise GraphDSLError(f"{what} must be a graph node, got {type(x).__name__}",
                            layer=name, op=op, where=where,
                            fix="pass a node such as gd.input('x', (None, 16)) or a layer "
                                "output")
    return x


def _check_size(value: Any, what: str, op: str, name: str | None, where: str) -> int:
    if not is_int(value) or int(value) <= 0:
        raise OptionError(f"{what} must be a positive integer, got {value!r}",
                              layer=name, op=op, where=where, fix=f"pass {what}=<int >= 1>")
    return int(value)


def adapter_layer(op: str, x: Any, input_size: Any, output_size: Any, name: str | None,
                  opts: dict[str, Any], where: str, use_bias: bool = False,
                  activation: str | None = None,
                  kernel_initializer: Any = "glorot_uniform") -> Node:
    """A standalone adapter owning its frozen ``base_weight [in, out]`` (``activation``:
    an activation node after it)."""
    x = _node_arg(x, "input", op, name, where)
    n_in = _check_size(input_size, "input_size", op, name, where)
    n_out = _check_size(output_size, "output_size", op, name, where)
    if x.shape is not None and len(x.shape) >= 1 and x.shape[-1] not in (None, n_in):
        raise ShapeError(
            f"input_size={n_in} but the input's last axis has size {x.shape[-1]}",
            layer=name, op=op, where=where, shapes={"input": x.shape},
            fix=f"pass input_size={x.shape[-1]}, or feed an input of shape (..., {n_in})")
    attrs = dict(opts, units=n_out, base=None, use_bias=use_bias,
                 kernel_initializer=kernel_initializer)
    return with_activation(make_node(op, [x], attrs, name, where=where), activation, where)


def build(op: str, input_size: Any, output_size: Any, name: str, opts: dict[str, Any],
          where: str, use_bias: bool = False) -> Node:
    """Input ``"input"`` of shape ``(None, input_size)`` -> the adapter layer."""
    n_in = _check_size(input_size, "input_size", op, name, where)
    x = _input("input", (None, n_in))
    return adapter_layer(op, x, n_in, output_size, name, opts, where, use_bias=use_bias)


def wrap(op: str, x: Any, original: Any, name: str | None, output_size: Any,
         opts: dict[str, Any], where: str) -> Node:
    """``op`` applied to ``x`` with the frozen kernel/bias of the dense, conv or embedding
    layer ``original`` (shared through the ParamSpec owner, so ``state.data[original.name]``
    holds them). An activation node after such a layer (``gd.dense(x, 8, activation="relu",
    name="fc")``) wraps the layer and applies the same activation after the adapter."""
    x = _node_arg(x, "input", op, name, where)
    if not isinstance(original, Node):
        raise GraphDSLError(
            f"original must be the layer to wrap, got {type(original).__name__}",
            layer=name, op=op, where=where,
            fix="pass the node returned by gd.dense(x, units, name='...')")
    if OPS[original.op].category == "activation" and original.inputs[0].op in ADAPTABLE:
        inner = wrap(op, x, original.inputs[0], name, output_size, opts, where)
        return make_node(original.op, [inner], dict(original.attrs), None, where=where)
    if original.op not in ADAPTABLE:
        extra = (" (it is already an adapter; wrap the layer it came from)"
                 if is_adapter(original) else "")
        raise GraphDSLError(
            f"{op}.wrap needs a {listed('or')} layer, got a {original.op} layer "
            f"{original.label!r} defined at {original.where}{extra}",
            layer=name, op=op, where=where,
            fix="pass the node returned by gd.dense(...) itself; to adapt a standalone "
                "projection use "
                f"{op}.{op}_layer(x, input_size, output_size)")
    if original.name is None:
        raise GraphDSLError(
            f"the layer to wrap (defined at {original.where}) has no explicit name; "
            f"the adapter reads its kernel from state.data[<its name>], so the name must "
            "be stable", layer=name, op=op, where=where,
            fix="name it: gd.dense(x, units, name='attn'), or use "
                f"{op}.adapt(model, targets=...) which names layers for you")
    attrs = wrap_options(original, opts)
    units = attrs["units"]
    if output_size is not None:
        out = _check_size(output_size, "output_size", op, name, where)
        if out != units:
            raise ShapeError(
                f"output_size={out} but the wrapped {original.op} {original.name!r} has "
                f"{units} outputs", layer=name, op=op, where=where,
                shapes={"original": original.shape},
                fix=f"pass output_size={units}, or leave it out (it is inferred)")
    kernel = original.params[0].shape
    axis = KINDS[original.op].input_axis
    if axis is not None and (x.shape is None or len(x.shape) < 1
                             or x.shape[axis] not in (None, kernel[0])):
        raise _mismatch(op, name, where, x, original)
    node = make_node(op, [x], attrs, name if name is not None else f"{original.name}_{op}",
                     where=where)
    if node.params[0].shape != kernel:
        raise _mismatch(op, name, where, x, original)
    return node


def _mismatch(op: str, name: str | None, where: str, x: Node, original: Node) -> ShapeError:
    kernel = original.params[0].shape
    return ShapeError(
        f"the input has shape {fmt_shape(x.shape)} but the wrapped {original.op} "
        f"{original.name!r} has a kernel of shape {fmt_shape(kernel)}",
        layer=name, op=op, where=where, shapes={"input": x.shape, "kernel": kernel},
        fix=f"pass the input the {original.op} layer was applied to")


def output_size(op: str, value: Any, where: str) -> int:
    """Edifice's ``output_size(opts)``: the ``output_size`` option, checked."""
    if value is None:
        raise OptionError(f"{op}.output_size needs output_size=", op=op, where=where,
                              fix=f"call {op}.output_size(output_size=768)")
    return _check_size(value, "output_size", op, None, where)
