"""PyTorch kernels of Axon's conv variants: conv_transpose (``F.conv_transpose{1,2,3}d``),
depthwise_conv and separable_conv2d/3d (``F.conv{1,2,3}d`` with ``groups``).

Axon's conv_transpose is a stride-1 conv of the stride-dilated input with the kernel as
stored; torch's ``conv_transpose`` with the kernel flipped spatially, as ``[C, F, *k]``,
computes it padded ``(k'-1, k'-1)`` (``k' = (k-1)*dilation + 1``); the output is then cropped
or zero-extended (``F.pad``, negative pads crop) to Axon's pads before the bias is added,
so the zeros of a pad wider than ``k'-1`` hold the bias as Axon's do.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from graphdsl.ops.conv_variants import conv_stages, transpose_window

from ..base import KernelContext
from .conv import conv_first, from_first, to_first, torch_weight

_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def transpose_first(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor | None, a: Mapping
                    ) -> torch.Tensor:
    """Axon's conv_transpose of channels-first ``x`` with torch-layout ``K [F, C, *k]``."""
    w = transpose_window(tuple(x.shape[2:]), a)
    n = len(w.kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(w.kernel, w.kernel_dilation)]
    # torch pads k'-1-p on both sides: the least that leaves no side short of Axon's pad
    # (below it, the positions are products, not zeros); the rest is cropped
    p = [max(0, s - 1 - max(lo, hi)) for s, (lo, hi) in zip(spans, w.pads)]
    W = K.flip(list(range(2, n + 2))).transpose(0, 1)
    y = _TRANSPOSE[n](x, W, None, stride=w.input_dilation, padding=p,
                      dilation=w.kernel_dilation)
    extra = [(lo - (s - 1 - q), hi - (s - 1 - q)) for s, q, (lo, hi) in zip(spans, p, w.pads)]
    if any(lo or hi for lo, hi in extra):
        y = F.pad(y, [v for lo, hi in reversed(extra) for v in (lo, hi)])
    return y if b is None else y + b.reshape(-1, *(1,) * n)


def _conv_transpose(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    ch = a["channels"]
    return from_first(transpose_first(to_first(ins[0], ch), torch_weight(p["kernel"], ch),
                                      p.get("bias"), a), ch)


def _depthwise(op: str) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
        ch = a["channels"]
        stages = conv_stages(op, tuple(ins[0].shape), a)
        y = to_first(ins[0], ch)
        for st, k_name, b_name in stages:
            y = conv_first(y, torch_weight(p[k_name], ch), p.get(b_name), st)
        return from_first(y, ch)

    return kernel


KERNELS: dict[str, Callable] = {
    "conv_transpose": _conv_transpose,
    "depthwise_conv": _depthwise("depthwise_conv"),
    "separable_conv2d": _depthwise("separable_conv2d"),
    "separable_conv3d": _depthwise("separable_conv3d"),
}
