"""PyTorch backend: the same kernels as NumPy's, on tensors, for training and GPUs.

Two ways to run a plan:

* ``build(model, backend="torch")`` -> ``(init_fn, predict_fn)``: a flat list of kernel
  calls over numbered slots, like the NumPy backend. Parameters come from the NumPy
  ``ModelState`` (zero-copy where possible); inputs may be NumPy arrays or tensors;
  outputs are tensors. Option: ``device=`` ("cpu", "cuda", ...).
* :func:`graphdsl.to_torch` lowers the plan to an ``nn.Module`` whose forward is
  generated straight-line code calling these kernels (see ``graphdsl/torch_interop.py``).

A kernel is ``kernel(inputs, params, attrs, ctx) -> tensor``. In a module
(``ctx.module``) stochastic kernels use torch's RNG and return only the tensor; in
``build(..., mode="train")`` dropout draws from the layer's ``key`` state entry and
returns ``(tensor, {"key": new_key})`` like the NumPy backend.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graphdsl.arrays import as_numpy
from graphdsl.compiler import Plan
from graphdsl.errors import BackendError, GraphDSLError, InputError
from graphdsl.registry import OPS
from graphdsl.shapes import reshape_target

from .base import Backend, KernelContext, plan_runner

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TorchContext(KernelContext):
    """KernelContext plus what torch kernels need: where the layer was defined (for
    errors), the device (functional path), and whether it runs inside an nn.Module."""

    where: str | None = None
    device: Any = None
    module: bool = False


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _fail(ctx: KernelContext, what: str, fix: str, cls: type[GraphDSLError] = GraphDSLError,
          shapes: Any = None) -> GraphDSLError:
    return cls(what, layer=ctx.name, op=ctx.op, where=getattr(ctx, "where", None),
               shapes=shapes, fix=fix)


# -- activations ---------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]] = {
    "relu": lambda x, a: F.relu(x),
    "gelu": lambda x, a: F.gelu(x, approximate="tanh" if a.get("approximate") else "none"),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "softmax": lambda x, a: torch.softmax(x, dim=a.get("axis", -1)),
    "log_softmax": lambda x, a: torch.log_softmax(x, dim=a.get("axis", -1)),
    "silu": lambda x, a: F.silu(x),
    "elu": lambda x, a: F.elu(x, alpha=a.get("alpha", 1.0)),
    "leaky_relu": lambda x, a: F.leaky_relu(x, negative_slope=a.get("alpha", 0.01)),
    "softplus": lambda x, a: F.softplus(x),
}
_NO_OPTS: Mapping[str, Any] = {}


def apply_activation(y: torch.Tensor, name: str | None) -> torch.Tensor:
    """A fused activation (dense, adapters); None is the identity."""
    if name is None:
        return y
    return ACTIVATIONS[name](y, _NO_OPTS)


def _as_float(y: torch.Tensor, ctx: KernelContext) -> torch.Tensor:
    return y.to(ctx.dtype) if y.is_floating_point() and y.dtype != ctx.dtype else y


def _linear(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ K + b`` for x (..., in), K [in, out]: one BLAS call (addmm) for 2-D x."""
    if x.dim() == 2:
        return torch.addmm(b, x, K) if b is not None else x @ K
    return F.linear(x, K.t(), b)


# -- core kernels ----------------------------------------------------------------------------
def _dense(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    return apply_activation(_linear(ins[0], p["kernel"], p.get("bias")), a["activation"])


def _seeded_mask(shape: tuple, rate: float, key: Any, device: Any
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """Keep-mask drawn from the layer's uint64 key (functional path), and the next key."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(key) & (2**63 - 1))
    keep = torch.rand(shape, generator=g) >= rate
    new = np.asarray(int(torch.randint(0, 2**62, (), generator=g)), dtype=np.uint64)
    return keep.to(device), new


def _drop(x: torch.Tensor, rate: float, p: Mapping, ctx: KernelContext
          ) -> tuple[torch.Tensor, dict]:
    """Inverted dropout: torch's RNG in a module, the layer's key state entry otherwise
    (returns the updates for the state)."""
    if ctx.module or "key" not in p:
        return F.dropout(x, rate, True), {}
    keep, new = _seeded_mask(tuple(x.shape), rate, p["key"], x.device)
    return torch.where(keep, x / (1.0 - rate), torch.zeros((), dtype=x.dtype,
                                                             device=x.device)), {"key": new}


def _dropout(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    x = ins[0]
    if not ctx.training:
        return x
    if a["rate"] == 0.0:
        return x if ctx.module else (x, {})
    y, new = _drop(x, a["rate"], p, ctx)
    return y if ctx.module else (y, new)


def _layer_norm(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    ax = a["axis"] % x.dim()
    y = F.layer_norm(x.movedim(ax, -1), (x.shape[ax],), p.get("gamma"), p.get("beta"),
                     a["epsilon"])
    return y.movedim(-1, ax)


def _embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    ids = ins[0]
    if not _compiling() and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= a["vocab_size"]:
            raise _fail(ctx, f"token ids must lie in [0, {a['vocab_size']}), got values in "
                        f"[{lo}, {hi}]", "check the tokenizer, or raise vocab_size",
                        InputError, shapes=[tuple(ids.shape)])
    return F.embedding(ids, p["kernel"])


def _reshape(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    return x.reshape(reshape_target(tuple(x.shape), a["shape"]))


def _transpose(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    x = ins[0]
    axes = a["axes"] if a["axes"] is not None else tuple(range(x.dim() - 1, -1, -1))
    return x.permute(*axes)


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
        v = a["value"]
        t = torch.tensor(v, device=dev)
        hit = ctx.cache["value"] = t.to(ctx.dtype) if t.is_floating_point() else t
    return hit


def _custom(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> torch.Tensor:
    y = a["fn"](*ins, xp=torch, **a["opts"])
    if not isinstance(y, torch.Tensor):
        dev = ins[0].device if ins else getattr(ctx, "device", None)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, (int, float)) else y,
                            device=dev)
    return _as_float(y, ctx)


def _container(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    return dict(zip(a["keys"], ins)) if a["keys"] is not None else tuple(ins)


def _act_kernel(op: str) -> Callable:
    fn = ACTIVATIONS[op]
    return lambda ins, p, a, ctx: fn(ins[0], a)


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


# -- adapters (DoRA, LoRA) -------------------------------------------------------------------
def _scale(a: Mapping) -> float:
    if a.get("scale") is not None:
        return float(a["scale"])
    r = a["rank"]
    return a["alpha"] / (math.sqrt(r) if a.get("rslora") else r)


def _colsum_sq(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(colsum(K*K), 16*eps*colsum(K*K))`` [out] for K [in, out]: the second is the
    zero-norm threshold. Computed every call: next to a training step it is cheap, and a
    cache could not see every way a module's weight changes (``param.data.copy_``)."""
    tiny = 16 * torch.finfo(K.dtype).eps
    if K.requires_grad and torch.is_grad_enabled():
        kk = _colsum_squares(K)
    else:
        with torch.no_grad():
            kk = _colsum_squares(K)
    return kk, kk.detach() * tiny


def _colsum_squares(K: torch.Tensor) -> torch.Tensor:
    """``colsum(K*K) [out]`` for K [in, out], in 8 row blocks: the transient is in*out/8,
    and it runs at the speed of ``(K*K).sum(0)`` (``vector_norm(K, dim=0)`` reduces across
    rows, strided, ~13x slower on a CPU)."""
    blocks = K.split(max(1, -(-K.shape[0] // 8)))
    kk = blocks[0].square().sum(0)
    for blk in blocks[1:]:
        kk = kk + blk.square().sum(0)
    return kk


def dora_column_norm_sq(A: torch.Tensor, B: torch.Tensor, s: float, AtK: torch.Tensor,
                        kk: torch.Tensor) -> torch.Tensor:
    """``c^2 [out]`` with ``c_j = ||K[:, j] + s*(A@B)[:, j]||`` in factored form (no
    [in, out] temporary): ``c^2 = colsum(K*K) + 2s*colsum((A.T@K)*B) +
    s^2*colsum(B*((A.T@A)@B)) = kk + colsum(B * (2s*A.T@K + s^2*(A.T@A)@B))``.
    A [in,r], B [r,out], AtK = A.T@K [r,out], kk = colsum(K*K) [out]."""
    U = torch.addmm(AtK, A.t() @ A, B, beta=2.0 * s, alpha=s * s)
    return kk + (B * U).sum(0)


def _finish_norm(c2: torch.Tensor, thr: torch.Tensor, eps: float | None,
                 ctx: KernelContext) -> torch.Tensor:
    """``c = sqrt(max(c2, 0))``, clamped to ``eps`` when given (``c = max(c, eps)``, as
    the NumPy kernels); otherwise a zero (``c2 <= thr``, round-off level relative to
    colsum(K*K)) or non-finite column is a GraphDSLError (checked eagerly, skipped
    inside torch.compile)."""
    c = torch.sqrt(c2.clamp_min(0.0))
    if eps is not None:
        return c.clamp_min(eps)
    if not _compiling() and not bool((c2 > thr).all()):
        bad = ~torch.isfinite(c2)
        if bool(bad.any()):
            cols = torch.nonzero(bad).flatten()[:10].tolist()
            raise _fail(ctx, f"the DoRA column norm ||K + s*A@B|| is not finite for "
                        f"output unit(s) {cols}: the weights hold NaN or infinity",
                        "check the kernel, A, B and magnitude for NaN/inf (e.g. a "
                        "diverged update; lower the learning rate)")
        cols = torch.nonzero(c2 <= thr).flatten()[:10].tolist()
        raise _fail(ctx, f"output unit(s) {cols} have a zero-norm column "
                    f"||K[:, j] + s*(A@B)[:, j]||; DoRA divides by this norm, so the "
                    "output would be NaN",
                    "pass eps=1e-6 to dora_layer / wrap / adapt to clamp the norm "
                    "(c = max(c, eps)), or give those units a nonzero kernel column")
    return c


def _adapter_params(p: Mapping) -> tuple:
    K = p["kernel"] if "kernel" in p else p["base_weight"]
    return K, p.get("bias"), p["A"], p["B"]


def _ret(y: torch.Tensor, ctx: KernelContext, updates: dict) -> Any:
    if ctx.training and not ctx.module and OPS[ctx.op].stochastic:
        return y, updates
    return y


def _dora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """DoRA: ``y = (m/c) * (x@K + s*(x@A)@B) + b``, c the column norm of K + s*A@B
    (detached unless ``detach_norm=False``); with dropout in training, PEFT's form
    ``y = x@K + b + (m/c - 1)*(xd@K) + (m/c)*s*(xd@A)@B``. x (..., in) -> (..., out)."""
    x = ins[0]
    K, b, A, B = _adapter_params(p)
    m = p["magnitude"]
    s = _scale(a)
    n_in = K.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n_in)
    n = x2.shape[0]
    detach = a.get("detach_norm", True)
    rate = a.get("dropout", 0.0) or 0.0
    updates: dict = {}
    dropping = ctx.training and rate > 0.0
    if dropping:
        xd, updates = _drop(x2, rate, p, ctx)
        rows = [x2, xd]
    else:
        xd, rows = x2, [x2]
    At = A.detach().t() if detach else A.t()
    needs_graph = torch.is_grad_enabled() and (
        K.requires_grad or x2.requires_grad or (not detach and A.requires_grad))
    # one BLAS call for x@K (and xd@K) and A.T@K: the thin A.T@K alone runs at half speed
    if needs_graph:
        big = torch.cat(rows + [At]) @ K
    else:
        with torch.no_grad():
            big = torch.cat(rows + [At]) @ K
    xK, AtK = big[:n], big[-At.shape[0]:]
    xdK = big[n:2 * n] if dropping else xK
    kk, thr = _colsum_sq(K)
    if detach:
        with torch.no_grad():
            c2 = dora_column_norm_sq(A.detach(), B.detach(), s, AtK, kk)
    else:
        c2 = dora_column_norm_sq(A, B, s, AtK, kk)
    c = _finish_norm(c2, thr, a.get("eps"), ctx)
    scale = m / c
    h = torch.addmm(xdK, xd @ A, B, alpha=s)
    if dropping:
        y = torch.addcmul(xK - xdK, h, scale)
        if b is not None:
            y = y + b
    elif b is not None:
        y = torch.addcmul(b, h, scale)
    else:
        y = h * scale
    y = apply_activation(y.reshape(*lead, K.shape[1]), a.get("activation"))
    return _ret(y, ctx, updates)


def _lora(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """LoRA: ``y = x@K + b + s*(dropout(x)@A)@B``; x (..., in) -> (..., out)."""
    x = ins[0]
    K, b, A, B = _adapter_params(p)
    s = _scale(a)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K.shape[0])
    rate = a.get("dropout", 0.0) or 0.0
    updates: dict = {}
    xd = x2
    if ctx.training and rate > 0.0:
        xd, updates = _drop(x2, rate, p, ctx)
    y = torch.addmm(_linear(x2, K, b), xd @ A, B, alpha=s)
    y = apply_activation(y.reshape(*lead, K.shape[1]), a.get("activation"))
    return _ret(y, ctx, updates)


KERNELS: dict[str, Callable] = {
    "constant": _constant,
    "param": lambda ins, p, a, ctx: p["value"],
    "layer": _custom,
    "container": _container,
    "dense": _dense,
    "dropout": _dropout,
    "layer_norm": _layer_norm,
    "embedding": _embedding,
    "add": _variadic(torch.add),
    "subtract": _variadic(torch.sub),
    "multiply": _variadic(torch.mul),
    "concatenate": _concatenate,
    "reshape": _reshape,
    "flatten": lambda ins, p, a, ctx: ins[0].reshape(ins[0].shape[0],
                                                     math.prod(ins[0].shape[1:])),
    "transpose": _transpose,
    "matmul": _matmul,
    "dora": _dora,
    "lora": _lora,
    **{op: _act_kernel(op) for op in ACTIVATIONS},
}


def register_kernel(op: str, kernel: Callable) -> None:
    """Add the torch kernel of an op defined outside the core."""
    KERNELS[op] = kernel


# -- conversions -------------------------------------------------------------------------------
def resolve_device(device: Any) -> torch.device:
    """``torch.device`` for ``device`` (None = cpu); unknown or unavailable -> BackendError."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise BackendError(f"unknown torch device {device!r} ({e})",
                           fix="use 'cpu', 'cuda', 'cuda:0', ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested but CUDA is not available",
                           fix="use device='cpu', or install a CUDA build of torch")
    try:
        torch.empty(0, device=dev)
    except Exception as e:  # e.g. cuda:7 on a 1-GPU machine, mps without support
        raise BackendError(f"torch device {device!r} is not usable here "
                           f"({type(e).__name__}: {e})",
                           fix="pick an available device (torch.cuda.device_count())") from None
    return dev


def to_tensor(a: Any, device: torch.device | None = None, dtype: Any = None) -> torch.Tensor:
    """NumPy array (zero-copy when writeable and on CPU) or tensor -> tensor."""
    if isinstance(a, torch.Tensor):
        t = a
    else:
        arr = as_numpy(a)
        if arr.dtype == np.uint64:
            arr = arr.view(np.int64)
        if arr.flags.writeable and arr.flags.c_contiguous and arr.dtype.isnative:
            t = torch.from_numpy(arr)
        else:
            t = torch.tensor(arr)
    if (device is not None and t.device != device) or (dtype is not None and t.dtype != dtype):
        t = t.to(device=device, dtype=dtype)
    return t


class TorchBackend(Backend):
    name = "torch"
    kernels = KERNELS

    def compile(self, plan: Plan, device: Any = None, **options: Any) -> Callable:
        if options:
            raise BackendError(f"the torch backend takes only device=, got {sorted(options)}",
                               fix="build(model, backend='torch', device='cuda')")
        dev = resolve_device(device)
        dtype = _TORCH_DTYPES[plan.dtype]
        # per parameter: (state value, its tensor). State values are immutable
        # (graphdsl.state): a value seen before is converted once, not on every call.
        memo: dict[int, list[tuple[Any, Any]]] = {
            step.out: [(None, None)] * len(step.params) for step in plan.steps}

        def fetch(step: Any, data: Mapping) -> dict[str, Any]:
            p = {}
            seen = memo[step.out]
            for i, ref in enumerate(step.params):
                try:
                    arr = data[ref.owner][ref.name]
                except (KeyError, TypeError):
                    raise plan.missing_param(step, ref, data) from None
                hit = seen[i]
                if hit[0] is not arr:
                    if tuple(arr.shape) != tuple(ref.shape):
                        raise plan.bad_param(step, ref, arr)
                    # RNG keys stay NumPy scalars
                    conv = arr if ref.kind == "state" else state_tensor(
                        arr, dev, _TORCH_DTYPES.get(ref.dtype, dtype))
                    hit = seen[i] = (arr, conv)
                p[ref.local] = hit[1]
            return p

        return plan_runner(
            plan, KERNELS,
            lambda step: TorchContext(plan.training, dtype, step.name, step.op, torch,
                                      where=step.node.where, device=dev),
            fetch, lambda a, is_int, name, node: _convert_input(a, is_int, dtype, dev, name,
                                                                 node),
            lambda t: t.clone())


def state_tensor(arr: np.ndarray, device: torch.device, dtype: Any) -> torch.Tensor:
    """A tensor on ``device`` reading the immutable state array ``arr`` (any shape; no copy
    on CPU when the dtype matches: kernels never write into parameters)."""
    arr = arr.view(np.ndarray)
    if arr.dtype == np.uint64:
        arr = arr.view(np.int64)
    with warnings.catch_warnings():  # read-only memory: torch warns that writes are UB
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def _convert_input(a: Any, is_int: bool, dtype: torch.dtype, dev: torch.device, name: str,
                   node: Any) -> torch.Tensor:
    t = to_tensor(a)
    if is_int:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"input {name!r} holds token ids and needs an integer array, "
                             f"got dtype {t.dtype}", layer=name, op="input", where=node.where,
                             fix="pass ids as int64 (e.g. ids.long())")
        return t.to(dev) if t.device != dev else t
    if t.is_complex():
        raise InputError(f"input {name!r} is complex ({t.dtype})", layer=name, op="input",
                         where=node.where, fix="pass a real-valued array")
    return t.to(device=dev, dtype=dtype) if (t.device != dev or t.dtype != dtype) else t


BACKEND = TorchBackend()

__all__ = ["BACKEND", "KERNELS", "ACTIVATIONS", "TorchBackend", "TorchContext",
           "apply_activation", "dora_column_norm_sq", "register_kernel", "resolve_device",
           "to_tensor"]
