"""PyTorch kernels of Axon's special layers: blur_pool (``F.conv2d`` with the fixed filter,
one group per channel), and the shared ones (:mod:`..special`)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from graphdsl.ops.special import BLUR_FILTER, BLUR_WINDOW

from .. import special
from ..base import KernelContext
from .conv import conv_first, from_first, to_first

_FILTER = BLUR_FILTER.tolist()


def _blur_pool(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = to_first(ins[0], a["channels"])
    if not x.is_floating_point():
        x = x.to(ctx.dtype)
    c = x.shape[1]
    w = x.new_tensor(_FILTER).expand(c, 1, 3, 3)
    y = conv_first(x, w, None, {**BLUR_WINDOW, "feature_group_size": c})
    return from_first(y, a["channels"])


KERNELS: dict[str, Callable] = {**special.KERNELS, "blur_pool": _blur_pool}
