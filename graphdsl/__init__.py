"""graphdsl: a Python mirror of Elixir's Axon.

Compose a lazy, immutable graph of layers, inspect it, and compile it to NumPy or
PyTorch::

    import graphdsl as gd
    x = gd.input("x", shape=(None, 16))
    y = gd.dense(gd.dense(x, 32, activation="relu"), 4)
    init_fn, predict_fn = gd.build(y)
"""
from __future__ import annotations

from . import (  # noqa: F401  (gd.display.as_table, as_graph, to_dot, render)
    display,
    dora,
    lora,
    mixed_precision,
    windows,
)
from . import ops as _ops  # noqa: F401  (registers the ops)
from .adapters import adapter_state, attach_adapters, merge_adapters, untie
from .backends import TORCH_FACE, torch_face
from .block import block
from .compiler import build, predict
from .custom import register_function, register_onnx_rule
from .errors import GraphDSLError
from .generate import generate
from .graph import (
    get_inputs,
    get_op_counts,
    get_options,
    get_output_shape,
    get_parameters,
    pop_node,
    properties,
    reduce_nodes,
    topo_order,
)
from .io import from_json, load, load_adapters, save, save_adapters, to_json
from .node import Node
from .nx import to_networkx
from .ops.conv import (
    batch_norm,
    conv,
    group_norm,
    instance_norm,
)
from .ops.conv_variants import conv_transpose, depthwise_conv, separable_conv2d, separable_conv3d
from .ops.core import constant, container, full_like, input, layer, optional, param
from .ops.dropouts import alpha_dropout, feature_alpha_dropout, spatial_dropout
from .ops.nn import (
    activation,
    bilinear,
    celu,
    dense,
    dropout,
    elu,
    embedding,
    exp,
    gelu,
    hard_sigmoid,
    hard_silu,
    hard_tanh,
    layer_norm,
    leaky_relu,
    linear,
    log_sigmoid,
    log_softmax,
    log_sumexp,
    mish,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    softsign,
    tanh,
)
from .ops.pool import (
    adaptive_avg_pool,
    adaptive_lp_pool,
    adaptive_max_pool,
    avg_pool,
    global_avg_pool,
    global_lp_pool,
    global_max_pool,
    lp_pool,
    max_pool,
)
from .ops.recurrent import bidirectional, conv_lstm, gru, lstm
from .ops.resize import resize
from .ops.special import blur_pool, cond, mask, nx, or_else, stack_columns
from .ops.tensor import (
    add,
    bias,
    concatenate,
    flatten,
    matmul,
    multiply,
    pad,
    reshape,
    subtract,
    transpose,
)
from .ops.transformer import (
    attention,
    cache_append,
    positions,
    rms_norm,
    rotary_embedding,
    slice,
    split,
    tied_dense,
)
from .registry import OPS
from .state import ModelState
from .transforms import freeze, map_nodes, rewrite_nodes, set_options


def to_onnx(model: Node, state: ModelState, path: str | None = None, opset: int | None = None,
            **options: object) -> object:
    """Export ``model`` and ``state`` as an ``onnx.ModelProto`` (written to ``path`` if given).

    Built with the ``onnx`` package's helpers (no torch). Graph inputs and outputs keep
    graphdsl's names; every ``None`` axis is a dynamic axis; a container output becomes
    several named outputs; adapters export merged. Checked by ``onnx.checker``. Needs the
    ``onnx`` extra (``pip install 'graphdsl[onnx]'``), imported only when called; see
    ``graphdsl.backends.onnx_backend.to_onnx``.

    Args:
        model: the output node.
        state: its values.
        path: a file to write, or None.
        opset: the ONNX opset; None for the lowest that covers every layer's rule.
        **options: ``kv_cache=True`` exports a causal LM's decode step with optimum's cache
            inputs and outputs (``past_key_values.{i}.key`` ... ``present.{i}.value``).

    Returns:
        (onnx.ModelProto): the model.

    Raises:
        GraphDSLError: onnx is not installed, or a custom layer without an ONNX rule
            (``graphdsl.register_onnx_rule``).
        OptionError: an opset below what a layer needs or newer than onnx knows.
        StateError: ``state`` does not fit ``model``.

    Examples:
        >>> model = gd.relu(gd.dense(gd.input("x", shape=(None, 4)), 2, name="fc"))
        >>> proto = gd.to_onnx(model, gd.build(model)[0](np.zeros((1, 4), np.float32)))
        >>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
        (['x'], ['relu_0'])
    """
    try:
        from .backends.onnx_backend import to_onnx as export
    except ImportError as e:
        raise GraphDSLError(f"ONNX export needs the onnx package ({e})", op="to_onnx",
                            fix="pip install 'graphdsl[onnx]'") from None
    return export(model, state, path, opset, **options)


def __getattr__(name: str) -> object:
    """``gd.to_torch``, ``gd.from_torch``, ``gd.loraplus_param_groups``: the torch
    backend's, imported on first use."""
    if name in TORCH_FACE:
        return torch_face(name)
    raise AttributeError(f"module 'graphdsl' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [  # sorted
    "activation", "adapter_state", "adaptive_avg_pool", "adaptive_lp_pool",
    "adaptive_max_pool", "add", "alpha_dropout", "attach_adapters", "attention", "avg_pool",
    "batch_norm", "bias", "bidirectional", "bilinear", "block", "blur_pool", "build",
    "cache_append", "celu", "concatenate", "cond", "constant", "container", "conv",
    "conv_lstm", "conv_transpose", "dense", "depthwise_conv", "dora", "dropout", "elu",
    "embedding", "exp", "feature_alpha_dropout", "flatten", "freeze", "from_json",
    "from_torch", "full_like", "gelu", "generate", "get_inputs", "get_op_counts",
    "get_options", "get_output_shape", "get_parameters", "global_avg_pool", "global_lp_pool",
    "global_max_pool", "GraphDSLError", "group_norm", "gru", "hard_sigmoid", "hard_silu",
    "hard_tanh", "input", "instance_norm", "layer", "layer_norm", "leaky_relu", "linear",
    "load", "load_adapters", "log_sigmoid", "log_softmax", "log_sumexp", "lora",
    "loraplus_param_groups", "lp_pool", "lstm", "map_nodes", "mask", "matmul", "max_pool",
    "merge_adapters", "mish", "mixed_precision", "ModelState", "multiply", "Node", "nx", "OPS",
    "optional", "or_else", "pad", "param", "pop_node", "positions", "predict", "properties",
    "reduce_nodes", "register_function", "register_onnx_rule", "relu", "relu6", "reshape",
    "resize", "rewrite_nodes", "rms_norm", "rotary_embedding", "save", "save_adapters", "selu",
    "separable_conv2d", "separable_conv3d", "set_options", "sigmoid", "silu", "slice",
    "softmax", "softplus", "softsign", "spatial_dropout", "split", "stack_columns", "subtract",
    "tanh", "tied_dense", "to_json", "to_networkx", "to_onnx", "to_torch", "topo_order",
    "transpose", "untie",
]
