"""The PyTorch kernels of the core and transformer ops (``KERNELS``), on tensors, plus
what the conv and adapter kernels share with them: the context, activations, dropout.

Dropout draws from the layer's ``key`` state entry and returns the new key as a state
update (:class:`~graphdsl.backends.base.Stateful`), like the NumPy backend; in a
``to_torch`` module (``ctx.torch_rng``) it draws from torch's RNG, as ``nn.Dropout``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graphdsl.errors import GraphDSLError
from graphdsl.ops.tensor import pad_widths

from .. import dropouts, resize, shared
from ..base import KernelContext, with_updates


@dataclass
class TorchContext(KernelContext):
    """KernelContext plus what torch kernels need: where the layer was defined (for
    errors), the device (functional path), and where dropout draws its randomness:
    torch's global RNG (``torch_rng``, in a ``to_torch`` module, as ``nn.Dropout``) or the
    layer's ``key`` state entry (reproducible, and equal to the NumPy backend's)."""

    where: str | None = None
    device: Any = None
    torch_rng: bool = False


def compiling() -> bool:
    """Whether torch.compile (dynamo) is tracing the current call."""
    return torch.compiler.is_compiling()


def fail(ctx: KernelContext, what: str, fix: str, cls: type[GraphDSLError] = GraphDSLError,
          shapes: Any = None) -> GraphDSLError:
    return cls(what, layer=ctx.name, op=ctx.op, where=getattr(ctx, "where", None),
               shapes=shapes, fix=fix)


# -- activations ---------------------------------------------------------------------------
def _hard_sigmoid(x: torch.Tensor, a: Mapping[str, Any]) -> torch.Tensor:
    return torch.clamp(x * a["alpha"] + a["beta"], 0, 1)  # F.hardsigmoid fixes 1/6, 1/2


ACTIVATIONS: dict[str, Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]] = {
    "relu": lambda x, a: F.relu(x),
    "gelu": lambda x, a: F.gelu(x, approximate="tanh" if a["approximate"] else "none"),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "softmax": lambda x, a: torch.softmax(x, dim=a["axis"]),
    "log_softmax": lambda x, a: torch.log_softmax(x, dim=a["axis"]),
    "silu": lambda x, a: F.silu(x),
    "elu": lambda x, a: F.elu(x, alpha=a["alpha"]),
    "leaky_relu": lambda x, a: F.leaky_relu(x, negative_slope=a["alpha"]),
    "softplus": lambda x, a: F.softplus(x),
    "celu": lambda x, a: F.celu(x, alpha=a["alpha"]),
    "exp": lambda x, a: torch.exp(x),
    "hard_sigmoid": lambda x, a: _hard_sigmoid(x, a),
    "hard_silu": lambda x, a: x * _hard_sigmoid(x, a),
    "hard_tanh": lambda x, a: F.hardtanh(x),
    "linear": lambda x, a: x,
    "log_sigmoid": lambda x, a: F.logsigmoid(x),
    "log_sumexp": lambda x, a: torch.logsumexp(x, dim=a["axis"], keepdim=True),
    "mish": lambda x, a: F.mish(x),
    "relu6": lambda x, a: F.relu6(x),
    "selu": lambda x, a: a["gamma"] * F.elu(x, alpha=a["alpha"]),
    "softsign": lambda x, a: F.softsign(x),
}


def _as_float(y: torch.Tensor, ctx: KernelContext) -> torch.Tensor:
    return y.to(ctx.dtype) if y.is_floating_point() and y.dtype != ctx.dtype else y


def linear(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ K + b`` for x (..., in), K [in, out]: one BLAS call (addmm) for 2-D x."""
    if x.dim() == 2:
        return torch.addmm(b, x, K) if b is not None else x @ K
    return F.linear(x, K.t(), b)


# -- core kernels ----------------------------------------------------------------------------
def _dense(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    return linear(ins[0], p["kernel"], p.get("bias"))


def drop(x: torch.Tensor, rate: float, p: Mapping, ctx: KernelContext
          ) -> tuple[torch.Tensor, dict]:
    """Inverted dropout of ``x`` (any shape; same shape back): torch's RNG
    (``ctx.torch_rng``), the layer's key state entry otherwise; returns
    ``(y, {state entry: new value})``."""
    if ctx.torch_rng or "key" not in p:
        return F.dropout(x, rate, True), {}
    keep, updates = keep_mask(tuple(x.shape), rate, p, ctx, x)
    return torch.where(keep, x / (1.0 - rate), torch.zeros((), dtype=x.dtype,
                                                             device=x.device)), updates


def keep_mask(shape: tuple, rate: float, p: Mapping, ctx: KernelContext, x: torch.Tensor
              ) -> tuple[torch.Tensor, dict]:
    """``(keep, {state entry: new value})``: a boolean tensor of ``shape`` on x's device,
    True with probability ``1 - rate``, from torch's RNG (``ctx.torch_rng``) or the
    layer's key state entry."""
    if ctx.torch_rng or "key" not in p:
        return torch.rand(shape, device=x.device) >= rate, {}
    g = torch.Generator(device="cpu")  # the mask drawn from the layer's uint64 key
    g.manual_seed(int(p["key"]) & (2**63 - 1))
    keep = (torch.rand(shape, generator=g) >= rate).to(x.device)
    new = np.asarray(int(torch.randint(0, 2**62, (), generator=g)), dtype=np.uint64)
    return keep, {"key": new}


def _dropout(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    x = ins[0]
    if not ctx.training or a["rate"] == 0.0:
        return x
    return with_updates(*drop(x, a["rate"], p, ctx))


def _layer_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    ax = a["axis"] % x.dim()
    y = F.layer_norm(x.movedim(ax, -1), (x.shape[ax],), p.get("gamma"), p.get("beta"),
                     a["epsilon"])
    return y.movedim(-1, ax)


def _embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    return lookup(ins[0], p["kernel"])


def lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows of ``table [vocab, d]`` at integer ``ids (...)`` -> ``(..., d)``; an id outside
    ``[0, vocab)`` is an InputError (:func:`..shared.check_ids`; not checked while
    torch.compile traces: the check reads the ids' values)."""
    if not compiling():
        shared.check_ids(ids, table.shape[0])
    return F.embedding(ids, table)


def _transpose(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    axes = a["axes"] if a["axes"] is not None else tuple(range(x.dim() - 1, -1, -1))
    return x.permute(*axes)


def _pad(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]  # F.pad lists (low, high) from the last axis backwards
    widths = [w for pair in reversed(pad_widths(x.dim(), a)) for w in pair]
    return F.pad(x, widths, value=a["value"])


def _matmul(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x, y = ins
    if x.dtype != y.dtype:
        x, y = x.to(ctx.dtype), y.to(ctx.dtype)
    return torch.matmul(x, y)


def _constant(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    if "value" in p:  # a module registers the constant as a (non-persistent) buffer
        return p["value"]
    dev = getattr(ctx, "device", None)
    hit = ctx.cache.get("value")
    if hit is None or hit.device != torch.device(dev or "cpu"):
        t = torch.tensor(a["value"], device=dev)
        hit = ctx.cache["value"] = t.to(ctx.dtype) if t.is_floating_point() else t
    return hit


def _custom(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    y = a["fn"](*ins, xp=torch, **a["opts"])
    if not isinstance(y, torch.Tensor):
        dev = ins[0].device if ins else getattr(ctx, "device", None)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, (int, float)) else y,
                            device=dev)
    return _as_float(y, ctx)


def _variadic(fn: Callable) -> Callable:
    def kernel(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
        y = ins[0]
        for t in ins[1:]:
            y = fn(y, t)
        return _as_float(y, ctx)

    return kernel


def _concatenate(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    if any(t.is_floating_point() for t in ins):
        ins = [t.to(ctx.dtype) for t in ins]
    return torch.cat(ins, dim=a["axis"])


# -- transformer ops ----------------------------------------------------------------------------
def _attention(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """softmax(q k^T * scale + mask) @ v; in training with ``dropout`` the probabilities
    go through :func:`drop`."""
    dropping = ctx.training and a.get("dropout", 0.0) > 0
    q, k, v = ins[:3]
    b, h, n, d = q.shape
    kv, m = k.shape[1], k.shape[2]
    if len(ins) > 3 and not compiling() and bool((ins[3] != 0).all()):
        ins = ins[:3]  # a mask that keeps everything (transformers' default one): no mask
    sees_all = n == 1 and (a["window"] or m) >= m  # one query after the cache: no causal cut
    if not dropping and len(ins) == 3 and (not a["causal"] or sees_all or (
            n == m and (a["window"] or m) >= m)):
        # no mask and a plain causal mask (or none): torch's fused kernel (flash attention
        # on CPU and CUDA), with its GQA (query head i uses k/v head i // (h/kv), as
        # transformers' repeat_kv); less time and memory than the scores matrix
        return F.scaled_dot_product_attention(q, k, v, is_causal=a["causal"] and not sees_all,
                                              scale=a["scale"], enable_gqa=kv != h)
    s = torch.matmul(shared.grouped_queries(q, kv), k.transpose(-1, -2))  # [b, kv, rep*n, m]
    s = (s * (a["scale"] if a["scale"] is not None else d ** -0.5)).reshape(b, h, n, m)
    keep = shared.attention_keep(ins, a, lambda size: torch.arange(size, device=q.device))
    if keep is not None:
        s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
    w = torch.softmax(s, -1, dtype=torch.promote_types(s.dtype, torch.float32)).to(q.dtype)
    updates: dict = {}
    if dropping:  # dropout on the probabilities [b, h, n, m], as transformers does
        w, updates = drop(w, a["dropout"], p, ctx)
    y = torch.matmul(w.reshape(b, kv, (h // kv) * n, m), v).reshape(b, h, n, d)
    return with_updates(y, updates)


def _rms_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    ax = a["axis"] % x.dim()
    g = shared.shifted(p["gamma"], a)
    if ax == x.dim() - 1 and x.dtype in (torch.float32, torch.float64) and g.dtype == x.dtype \
            and not torch.is_autocast_enabled(x.device.type):
        # one fused call, the same rounding as transformers' float32 formula below
        return F.rms_norm(x, (x.shape[-1],), g, a["epsilon"])
    xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # as transformers'
    y = (xf * torch.rsqrt(xf.pow(2).mean(ax, keepdim=True) + a["epsilon"])).to(x.dtype)
    return shared.along(g, x, ax) * y


def _rotary_embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x, pos = ins
    d = x.shape[-1]

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(0, d, 2, dtype=torch.float32, device=x.device)
        inv = 1.0 / (a["theta"] ** (steps / d))  # transformers' default rope init, in float32
        ang = pos[..., None].float() * inv
        ang = torch.cat((ang, ang), -1)[:, None]  # [b, 1, s, d]
        return ang.cos().to(x.dtype), ang.sin().to(x.dtype)

    if compiling():
        cos, sin = make()
    else:
        cos, sin = shared.rotary_tables(("torch", d, a["theta"], x.dtype, x.device,
                                         torch.is_inference_mode_enabled()), pos,
                                        make, _same_positions, torch.clone)
    return shared.rotate(x, cos, sin, torch.cat)


def _same_positions(kept: torch.Tensor, pos: torch.Tensor) -> bool:
    return kept.shape == pos.shape and kept.device == pos.device and torch.equal(kept, pos)


def _positions(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    ax = a["axis"] % x.dim()
    r = torch.arange(a["offset"], a["offset"] + x.shape[ax], device=x.device)
    return r.expand(x.shape[:ax + 1]).contiguous()  # writable, like the NumPy kernel's


def _cast(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]  # integers are never cast (Axon's rule)
    return x.to(getattr(torch, a["dtype"])) if x.is_floating_point() else x


def step_dtype(step: Any, dtype: Any) -> Any:
    """The dtype a step's kernel computes in: its policy's compute dtype, else ``dtype``."""
    policy = step.node.policy
    return getattr(torch, policy.compute) if policy and policy.compute else dtype


KERNELS: dict[str, Callable] = {
    "constant": _constant,
    "custom": _custom,
    "dense": _dense,
    "dropout": _dropout,
    "layer_norm": _layer_norm,
    "embedding": _embedding,
    "add": _variadic(torch.add),
    "subtract": _variadic(torch.sub),
    "multiply": _variadic(torch.mul),
    "concatenate": _concatenate,
    "cache_append": _concatenate,
    "transpose": _transpose,
    "pad": _pad,
    "bias": lambda ins, p, a, ctx: _as_float(ins[0] + p["bias"], ctx),
    "matmul": _matmul,
    "attention": _attention,
    "rms_norm": _rms_norm,
    "rotary_embedding": _rotary_embedding,
    "positions": _positions,
    "tied_dense": lambda ins, p, a, ctx: F.linear(ins[0], p["kernel"], p.get("bias")),
    "cast": _cast,
    **shared.KERNELS,
    **resize.KERNELS,
    **dropouts.kernels(keep_mask),
    **shared.activation_kernels(ACTIVATIONS),
}
