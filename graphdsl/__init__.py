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
    windows,
)
from . import ops as _ops  # noqa: F401  (registers the ops)
from .adapters import adapter_state, attach_adapters, merge_adapters, untie
from .backends import TORCH_FACE, torch_face
from .compiler import build, predict
from .custom import register_function, register_onnx_rule
from .errors import GraphDSLError
from .graph import get_inputs, get_op_counts, get_output_shape, get_parameters, topo_order
from .io import from_json, load, load_adapters, save, save_adapters, to_json
from .node import Node
from .nx import to_networkx
from .ops.conv import (
    avg_pool,
    batch_norm,
    conv,
    global_avg_pool,
    global_max_pool,
    group_norm,
    max_pool,
)
from .ops.core import constant, container, full_like, input, layer, optional, param
from .ops.nn import (
    activation,
    dense,
    dropout,
    elu,
    embedding,
    gelu,
    layer_norm,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from .ops.tensor import (
    add,
    concatenate,
    flatten,
    matmul,
    multiply,
    reshape,
    subtract,
    transpose,
)
from .ops.transformer import (
    attention,
    positions,
    rms_norm,
    rotary_embedding,
    slice,
    split,
    tied_dense,
)
from .registry import OPS
from .state import ModelState
from .transforms import freeze, map_nodes, rewrite_nodes


def to_onnx(model: Node, state: ModelState, path: str | None = None, opset: int | None = None,
            **options: object) -> object:
    """Export ``model`` and ``state`` as an ``onnx.ModelProto`` (written to ``path`` if
    given); see :func:`graphdsl.backends.onnx_backend.to_onnx`. Needs the ``onnx`` extra
    (``pip install 'graphdsl[onnx]'``), imported only when called."""
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

__all__ = [
    "GraphDSLError", "ModelState", "Node", "OPS", "activation", "adapter_state", "add",
    "avg_pool", "batch_norm", "conv", "global_avg_pool", "global_max_pool", "group_norm",
    "max_pool",
    "attach_adapters", "build", "dora", "lora", "merge_adapters", "untie",
    "concatenate", "constant", "container", "dense", "dropout", "elu", "embedding",
    "flatten", "freeze", "full_like", "optional", "gelu", "get_inputs", "get_op_counts",
    "get_output_shape",
    "get_parameters", "input", "layer", "layer_norm", "leaky_relu", "log_softmax",
    "map_nodes", "matmul", "multiply", "param", "predict", "register_function", "relu",
    "reshape", "rewrite_nodes", "sigmoid", "silu", "softmax", "softplus", "subtract",
    "tanh", "to_networkx", "topo_order", "transpose",
    "from_torch", "loraplus_param_groups", "to_torch",
    "from_json", "load", "load_adapters", "save", "save_adapters", "to_json",
    "register_onnx_rule", "to_onnx",
    "attention", "positions", "rms_norm", "rotary_embedding", "slice", "split", "tied_dense",
]
