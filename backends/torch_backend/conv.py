"""PyTorch kernels of the convolutional ops: ``torch.nn.functional`` conv / batch_norm /
instance_norm / group_norm on channels-first views of the graph's tensors (the pools are
:mod:`.pool`).

Axon's options torch lacks are done around the call: input dilation (zeros between
elements), asymmetric padding (``F.pad``), see :func:`prepare`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from graphdsl.windows import Window, kernel_from_hwio, window

from .. import shared
from ..base import KernelContext, Stateful

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def to_first(x: torch.Tensor, channels: str) -> torch.Tensor:
    return x.movedim(-1, 1) if channels == "last" else x


def from_first(y: torch.Tensor, channels: str) -> torch.Tensor:
    return y.movedim(1, -1) if channels == "last" else y


def prepare(x: torch.Tensor, w: Window, fill: float, defer: bool = False
            ) -> tuple[torch.Tensor, Any]:
    """Channels-first ``x`` dilated and padded as ``w`` says; returns it and the padding
    left for the torch op to do: with ``defer``, symmetric zero padding is left to it."""
    if any(d > 1 for d in w.input_dilation):
        sizes = [(n - 1) * d + 1 for n, d in zip(x.shape[2:], w.input_dilation)]
        z = x.new_zeros((*x.shape[:2], *sizes))
        z[(slice(None), slice(None), *(slice(None, None, d) for d in w.input_dilation))] = x
        x = z
    if defer and all(lo == hi for lo, hi in w.pads):
        return x, tuple(lo for lo, _ in w.pads)
    flat = [v for lo, hi in reversed(w.pads) for v in (lo, hi)]
    if any(flat):
        x = F.pad(x, flat, value=fill)
    return x, 0


def conv_first(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, a: Mapping
               ) -> torch.Tensor:
    """Axon's conv of channels-first ``x`` with torch-layout ``W [F, C/groups, *k]``."""
    w = window(tuple(x.shape[2:]), tuple(W.shape[2:]), a)
    xp, pad = prepare(x, w, 0.0, defer=True)
    return _CONV[len(w.kernel)](xp, W, b, stride=w.strides, padding=pad,
                                dilation=w.kernel_dilation, groups=a["feature_group_size"])


def torch_weight(K: torch.Tensor, channels: str) -> torch.Tensor:
    """The stored conv kernel in torch's ``[F, C/groups, *k]`` layout (a view)."""
    return K if channels == "first" else kernel_from_hwio(K, "first")


def _conv(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    ch = a["channels"]
    y = conv_first(to_first(ins[0], ch), torch_weight(p["kernel"], ch), p.get("bias"), a)
    return from_first(y, ch)


def _batch_norm(ins: list, p: Mapping, a: Mapping, ctx: Any) -> Any:
    """In training, the batch statistics and the new running ``mean``/``var`` as
    ``nn.BatchNorm`` computes them, returned as state updates (a module writes them to
    its buffers); the given running values are never written."""
    x = ins[0]
    ax = a["axis"] % x.dim()
    xf = x.movedim(ax, 1)
    rm, rv = p["mean"], p["var"]
    if ctx.training:  # F.batch_norm updates the running values in place: on copies
        rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(xf, rm, rv, p["gamma"], p["beta"], ctx.training, a["momentum"],
                     a["epsilon"]).movedim(1, ax)
    return Stateful(y, {"mean": rm, "var": rv}) if ctx.training else y


def _instance_norm(ins: list, p: Mapping, a: Mapping, ctx: Any) -> Any:
    """Train: ``F.instance_norm`` with the instance statistics, on copies of the running
    values (returned as state updates). Inference: batch_norm's, on the running values."""
    if not ctx.training:
        return _batch_norm(ins, p, a, ctx)
    x = ins[0]
    ax = a["axis"] % x.dim()
    shared.instance_values(tuple(x.shape), a["axis"])
    rm, rv = p["mean"].clone(), p["var"].clone()
    y = F.instance_norm(x.movedim(ax, 1), rm, rv, p["gamma"], p["beta"], True,
                        a["momentum"], a["epsilon"]).movedim(1, ax)
    return Stateful(y, {"mean": rm, "var": rv})


def _group_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    ax = a["axis"] % x.dim()
    # contiguous: torch's CPU group_norm backward crashes (segfault, torch 2.13) on the
    # strided view movedim gives for a channels-last input
    y = F.group_norm(x.movedim(ax, 1).contiguous(), a["num_groups"], p["gamma"], p["beta"],
                     a["epsilon"])
    return y.movedim(1, ax)


KERNELS: dict[str, Callable] = {
    "conv": _conv,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "group_norm": _group_norm,
}
