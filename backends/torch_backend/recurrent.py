"""PyTorch kernels of Axon's recurrent layers: the shared loops (:mod:`..recurrent`) with
torch's activations (autograd runs through the loop), conv_lstm's convs by
:func:`.conv.conv_first`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from graphdsl.ops.nn import ACTIVATIONS as OPTIONS

from .. import recurrent
from .conv import conv_first
from .kernels import ACTIVATIONS

_ACTS = {name: (lambda f, o: lambda y: f(y, o))(fn, OPTIONS[name])
         for name, fn in ACTIVATIONS.items()}


def _zeros(shape: tuple, like: torch.Tensor) -> torch.Tensor:
    dt = like.dtype if like.is_floating_point() else torch.float32
    return torch.zeros(shape, dtype=dt, device=like.device)


KERNELS: dict[str, Callable[..., Any]] = {
    "lstm": recurrent.rnn_kernel("lstm", _ACTS, _zeros),
    "gru": recurrent.rnn_kernel("gru", _ACTS, _zeros),
    "conv_lstm": recurrent.conv_lstm_kernel(conv_first, _ACTS["sigmoid"], _ACTS["tanh"], _zeros),
    "reverse": recurrent.reverse,
    "recurrent_state": recurrent.state_kernel(
        lambda y, x, ctx: torch.as_tensor(y, dtype=ctx.dtype, device=x.device)),
}
