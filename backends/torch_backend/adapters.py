"""PyTorch kernels of the adapter ops ``dora`` and ``lora`` (PEFT's math in Axon's
layout: K [in, out], A [in, r], B [r, out], magnitude [out]); x (..., in) -> (..., out).
On conv and embedding layers (:func:`_conv`, :func:`_embedding`, one row each of
:data:`_FORWARD`): PEFT's Conv/Embedding LoRA and DoRA, the norm taken on the flat kernel
``[fan_in, out]``. Dtypes as PEFT's: over a base in another dtype than the adapter's (a
bfloat16 base, float32 A, B, magnitude) the adapter computes in its own dtype and the
result comes back in the base's; under ``torch.autocast`` the products run in its dtype.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from graphdsl.adapters._math import ZERO_NORM_ULPS, exact_norm_tau
from graphdsl.adapters.contract import BASE_PARAMS, base_kernel, flat_A, flat_kernel, layer_of

from ..base import KernelContext, Stateful, with_updates
from .conv import conv_first, from_first, to_first, torch_weight
from .kernels import compiling, drop, fail, linear, lookup


def _colsum_sq(K: torch.Tensor) -> torch.Tensor:
    """``colsum(K*K) [out]`` for K [in, out]. Computed every call: next to a training step
    it is cheap, and a cache could not see every way a module's weight changes
    (``param.data.copy_`` bypasses torch's version counter)."""
    if K.requires_grad and torch.is_grad_enabled():
        return _colsum_squares(K)
    with torch.no_grad():
        return _colsum_squares(K)


#: the transient of colsum(K*K) stays under this many elements (512 KiB in float32), or
#: under in*out/8: a fresh multi-MiB buffer costs more in page faults than the squares
_COLSUM_BLOCK = 1 << 17
#: below this many rows x@K and A.T@K run as one GEMM of cat([x, A.T]); above it as two
#: (measured, 2 threads: 1024x1024 at 64 rows 10% faster fused; the LLaMA step's
#: 512-row x 512..1376 projections 5% faster as two)
_FUSE_ROWS = 256


def _colsum_squares(K: torch.Tensor, lhs: torch.Tensor | None = None) -> Any:
    """``colsum(K*K) [out]`` for K [in, out], in row blocks whose ``K*K`` transient is at
    most max(2^17 elements, in*out/8): at most 8 blocks (each costs a few kernel
    launches). It runs at the speed of ``(K*K).sum(0)``
    (``vector_norm(K, dim=0)`` reduces across rows, strided, ~13x slower on a CPU).
    With ``lhs [k, in]``: ``(lhs @ K [k, out], colsum(K*K))``, the product accumulated
    over the same blocks, so each block of K is squared while the GEMM left it in cache
    (1024x1024, lhs of 80 rows, 1 thread: 1.50 ms against 1.75 ms for the two apart);
    on a GPU or in half precision (a rounding per block) the product is one GEMM."""
    if lhs is not None and (K.device.type != "cpu" or K.dtype.itemsize < 4):
        return lhs @ K, _colsum_squares(K)
    n_blocks = min(8, -(-K.numel() // _COLSUM_BLOCK))
    rows = max(1, -(-K.shape[0] // max(1, n_blocks)))
    blocks = K.split(rows)
    kk = blocks[0].square().sum(0)
    prod = None if lhs is None else lhs[:, :rows] @ blocks[0]
    for i, blk in enumerate(blocks[1:], 1):
        if prod is not None:
            prod.addmm_(lhs[:, i * rows:i * rows + blk.shape[0]], blk)
        kk = kk + blk.square().sum(0)
    return kk if lhs is None else (prod, kk)


def dora_column_norm_sq(A: torch.Tensor, B: torch.Tensor, s: float, AtK: torch.Tensor,
                        kk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c^2, noise)`` [out] with ``c_j = ||K[:, j] + s*(A@B)[:, j]||`` in factored form
    (no [in, out] temporary): ``c^2 = colsum(K*K) + 2s*colsum((A.T@K)*B) +
    s^2*colsum(B*((A.T@A)@B))``; ``noise = colsum(K*K) + s^2*colsum(B*((A.T@A)@B))`` is
    the scale of the summed terms (the zero-norm rule, graphdsl.adapters._math).
    A [in,r], B [r,out], AtK = A.T@K [r,out], kk = colsum(K*K) [out]; where it cancels,
    :func:`exact_columns` corrects it."""
    bb = (B * ((A.t() @ A) @ B)).sum(0)
    c2 = kk + (2.0 * s) * (B * AtK).sum(0) + (s * s) * bb
    return c2, (kk + (s * s) * bb).detach()


def exact_columns(c2: torch.Tensor, noise: torch.Tensor, K: torch.Tensor, A: torch.Tensor,
                  B: torch.Tensor, s: float) -> tuple:
    """``(c2, noise, cols, W)``: ``c2 [out]`` with the columns where the factored value
    cancelled (graphdsl.adapters._math.exact_norm_tau) taken from their materialized
    kernel ``W = K[:, cols] + s*(A@B)[:, cols] [in, n]`` (float64: the sum cancels, so its
    own rounding would show; differentiable), ``noise`` there scaled by eps (the zero rule
    at the rounding of the weights), and W for the caller to take those columns' output
    from it too; ``cols`` and ``W`` None when none cancels. Inside torch.compile (no
    data-dependent shapes) only c2 is corrected, by a torch.cond that materializes
    ``K + s*A@B`` only when some column needs it."""
    eps = torch.finfo(c2.dtype).eps
    low = c2.detach() < exact_norm_tau(eps) * noise
    if compiling():
        def exact(c2, low, K, A, B):  # noqa: ANN001, ANN202
            return torch.where(low, torch.addmm(K, A, B, alpha=s).square().sum(0), c2)
        return torch.cond(low.any(), exact, lambda c2, *_: c2.clone(),
                          (c2, low, K, A, B)), noise, None, None
    cols = torch.nonzero(low).flatten()
    if cols.numel() == 0:
        return c2, noise, None, None
    wide = torch.float32 if K.device.type == "mps" else torch.float64  # MPS has no float64
    W = torch.addmm(K[:, cols].to(wide), A.to(wide), B[:, cols].to(wide), alpha=s)
    return (c2.index_put((cols,), W.square().sum(0).to(c2.dtype)),
            noise.index_put((cols,), noise[cols] * eps), cols, W)


def _finish_norm(c2: torch.Tensor, noise: torch.Tensor, eps: float | None,
                 ctx: KernelContext) -> torch.Tensor:
    """``c [out] = sqrt(max(c2, 0))``, clamped to ``eps`` when given (``c = max(c, eps)``,
    as the NumPy kernels); otherwise a zero column (the rule of ZERO_NORM_ULPS: ``c2 <=
    16*eps(dtype)*noise``) or a non-finite one is a GraphDSLError (checked eagerly,
    skipped inside torch.compile)."""
    thr = noise * (ZERO_NORM_ULPS * torch.finfo(c2.dtype).eps)
    c = torch.sqrt(c2.clamp_min(0.0))
    if eps is not None:
        return c.clamp_min(eps)
    if not compiling() and not bool((c2 > thr).all()):
        bad = ~torch.isfinite(c2)
        if bool(bad.any()):
            cols = torch.nonzero(bad).flatten()[:10].tolist()
            raise fail(ctx, f"the DoRA column norm ||K + s*A@B|| is not finite for "
                        f"output unit(s) {cols}: the weights hold NaN or infinity",
                        "check the kernel, A, B and magnitude for NaN/inf (e.g. a "
                        "diverged update; lower the learning rate)")
        cols = torch.nonzero(c2 <= thr).flatten()[:10].tolist()
        raise fail(ctx, f"output unit(s) {cols} have a zero-norm column "
                    f"||K[:, j] + s*(A@B)[:, j]||; DoRA divides by this norm, so the "
                    "output would be NaN",
                    "pass eps=1e-6 to dora_layer / wrap / adapt to clamp the norm "
                    "(c = max(c, eps)), or give those units a nonzero kernel column")
    return c


def _adapter_params(p: Mapping) -> tuple:
    return base_kernel(p), p.get("bias"), p["A"], p["B"]


def _lora_dropout(x: torch.Tensor, p: Mapping, a: Mapping, ctx: KernelContext) -> tuple:
    """``(xd, updates)``: ``x`` through the adapter's dropout in training (:func:`drop`),
    else ``(x, {})`` (``xd is x``: nothing dropped)."""
    rate = a.get("dropout", 0.0) or 0.0
    if ctx.training and rate > 0.0:
        return drop(x, rate, p, ctx)
    return x, {}


def _dora_ratio(K: torch.Tensor, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor,
                a: Mapping, ctx: KernelContext, AtK: torch.Tensor | None = None) -> tuple:
    """``(m / c [out], cols, W)`` with c the column norm of ``K + s*A@B`` (K [in, out], A
    [in, r], B [r, out]; factored: no [in, out] temporary), detached unless
    ``detach_norm`` is False; ``AtK = A.T@K`` when the caller has it; ``cols`` and ``W``
    as :func:`exact_columns` gives them."""
    detach = a.get("detach_norm", True)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        if AtK is None:
            AtK = A.t() @ K
        c2, noise = dora_column_norm_sq(A, B, a["scale"], AtK, _colsum_sq(K))
    c2, noise, cols, W = exact_columns(c2, noise, K, A, B, a["scale"])  # W keeps its graph
    return m / _finish_norm(c2.detach() if detach else c2, noise, a.get("eps"), ctx), cols, W


def _autocast(x: torch.Tensor) -> torch.dtype | None:
    """The dtype of the ``torch.autocast`` region running on ``x``'s device, or None
    (also for float64 ``x``: autocast leaves float64 alone)."""
    dev = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _no_autocast(x: torch.Tensor, ac: torch.dtype | None) -> Any:
    """A region without autocast on ``x``'s device when ``ac`` (the casts are explicit)."""
    return torch.autocast(x.device.type, enabled=False) if ac else nullcontext()


class _DoRAFactored(torch.autograd.Function):
    """DoRA with a detached norm as one autograd node: ``y = (m/c) * (x@K + s*(x@A)@B) + b``
    and its hand-written backward, c treated as a constant (PEFT's and the paper's
    sec. 4.3 choice). Against the same ops recorded one by one it saves the autograd
    bookkeeping of ~15 small nodes. ``x@K`` and ``A.T@K`` are one GEMM of
    ``cat([x, A.T])`` for few rows, two BLAS calls for many (``_FUSE_ROWS``).
    x2 [n, in], K [in, out], b [out] or None, A [in, r], B [r, out], m [out] -> y [n, out];
    ``finish(c2, noise) -> c`` applies the eps/zero-norm rule.

    Dtypes, as PEFT's: ``x@K`` runs in the base's dtype (x2's), the adapter (x@A, @B, the
    norm, the combination) in A's, y comes back in the base's: a bfloat16 base with float32
    adapters (PEFT's autocast_adapter_dtype) casts x and K up for the adapter's part. Under
    ``torch.autocast`` (``ac``, its dtype) the products run in ``ac`` as torch's autocast
    runs linear, forward and backward, the norm and the combination in A's dtype (float32
    accumulation, as PEFT's DoRA under autocast) and y in ``ac``."""

    @staticmethod
    def forward(fctx, x2, K, b, A, B, m, s: float, finish: Callable, ac):  # noqa: ANN001
        nd = A.dtype  # the adapter's dtype: the norm and the combination
        cd, md = ac or x2.dtype, ac or nd  # the base's products, the adapter's
        with _no_autocast(x2, ac):
            n, Kc, Kn = x2.shape[0], K.to(cd), K.to(nd)
            if n < _FUSE_ROWS and cd == nd == K.dtype == x2.dtype:  # few rows: one GEMM
                big, kk = _colsum_squares(K, torch.cat([x2, A.t()]))
                h, AtK = big[:n], big[n:]
            else:
                h, AtK, kk = x2.to(cd) @ Kc, A.t() @ Kn, _colsum_squares(Kn)
            c2, noise = dora_column_norm_sq(A, B, s, AtK, kk)
            c2, noise, cols, W = exact_columns(c2, noise, Kn, A, B, s)
            c = finish(c2, noise)
            scale = m / c
            xm = x2.to(md)
            xA = xm @ A.to(md)
            h = h.to(nd)  # h = x@K + s*(x@A)@B, in a buffer we own
            if md == nd:
                h.addmm_(xA, B, alpha=s)
            else:
                h.add_(xA @ B.to(md), alpha=s)
            if cols is not None:  # columns whose h cancels too: from their own kernel
                h[:, cols] = (xm.to(W.dtype) @ W).to(h.dtype)
            y = h.new_empty(h.shape, dtype=cd)  # computed in nd, written in cd
            if b is not None:
                torch.addcmul(b.to(nd), h, scale, out=y)
            else:
                torch.mul(h, scale, out=y)
        fctx.save_for_backward(xm, Kc, A, B, xA, h, scale, c)  # xm: x2 for the adapter
        fctx.s, fctx.has_bias, fctx.ac, fctx.x_dtype = s, b is not None, ac, x2.dtype
        return y

    @staticmethod
    def backward(fctx, gy):  # noqa: ANN001
        xm, Kc, A, B, xA, h, scale, c = fctx.saved_tensors
        s, ac, need = fctx.s, fctx.ac, fctx.needs_input_grad
        nd, cd = A.dtype, Kc.dtype
        md = ac or nd
        with _no_autocast(xm, ac):
            # one [n, out] buffer for gy*h (the magnitude's gradient) and then gh: every
            # fresh buffer of that size costs page faults comparable to the small ops around
            # it; gy (cd) promotes to nd in the products
            gh = torch.mul(gy, h)
            gm = gh.sum(0).div_(c) if need[5] else None
            torch.mul(gy, scale, out=gh)
            ghm = gh.to(md)
            g_xA = (ghm @ B.to(md).t()).mul_(s) if need[0] or need[3] else None
            gx = None
            if need[0]:  # x@K's part in cd, the adapter's added in (bf16 += fp32: one rounding)
                gx = gh.to(cd) @ Kc.t()
                if gx.dtype == md:
                    gx.addmm_(g_xA, A.to(md).t())
                else:
                    gx.add_(g_xA @ A.to(md).t())
                gx = gx.to(fctx.x_dtype)
            gK = xm.to(cd).t() @ gh.to(cd) if need[1] else None
            gb = gy.sum(0, dtype=nd) if need[2] and fctx.has_bias else None
            gA = xm.t() @ g_xA if need[3] else None
            gB = (xA.t() @ ghm).mul_(s) if need[4] else None
        return gx, gK, gb, gA, gB, gm, None, None, None  # autograd casts to each input's dtype


def _dense_dora(x2: torch.Tensor, xd: torch.Tensor, p: Mapping, a: Mapping,
                ctx: KernelContext, m: torch.Tensor) -> torch.Tensor:
    """DoRA on rows x2 [n, in] -> [n, out]: ``y = (m/c) * (x@K + s*(x@A)@B) + b``, c the
    column norm of K + s*A@B (detached unless ``detach_norm=False``); with dropout in
    training (``xd``, the dropped-out rows, not ``x2`` itself), PEFT's form ``y = x@K + b
    + (m/c - 1)*(xd@K) + (m/c)*s*(xd@A)@B``."""
    K, b, A, B = _adapter_params(p)
    s = a["scale"]
    detach = a.get("detach_norm", True)
    dropping = xd is not x2
    if detach and not dropping:
        return _DoRAFactored.apply(
            x2, K, b, A, B, m, s, lambda c2, noise: _finish_norm(c2, noise, a.get("eps"), ctx),
            _autocast(x2))
    x2, xd, K, b = _in_dtype(A.dtype, x2, xd, K, b)  # PEFT's form computes in A's dtype
    n = x2.shape[0]
    At = A.detach().t() if detach else A.t()
    big = torch.cat(([x2, xd] if dropping else [x2]) + [At]) @ K
    xK, AtK = big[:n], big[-At.shape[0]:]
    xdK = big[n:2 * n] if dropping else xK
    scale, cols, W = _dora_ratio(K, A, B, m, a, ctx, AtK)  # W keeps its graph, for h
    h = torch.addmm(xdK, xd @ A, B, alpha=s)
    if cols is not None:
        h = h.index_copy(1, cols, (xd.to(W.dtype) @ W).to(h.dtype))
    if dropping:
        y = torch.addcmul(xK - xdK, h, scale)
        if b is not None:
            y = y + b
    elif b is not None:
        y = torch.addcmul(b, h, scale)
    else:
        y = h * scale
    return y


def _dense(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
           m: torch.Tensor | None) -> Any:
    """LoRA (``m`` None): ``y = x@K + b + s*(dropout(x)@A)@B``, or DoRA
    (:func:`_dense_dora`); x (..., in) -> (..., out)."""
    x = ins[0]
    K, b, A, B = _adapter_params(p)
    x2 = x.reshape(-1, K.shape[0])
    xd, updates = _lora_dropout(x2, p, a, ctx)
    if m is not None:
        y = _dense_dora(x2, xd, p, a, ctx, m).to(_autocast(x) or x.dtype)  # the base's
    else:  # PEFT: the base in its dtype, the adapter in A's (x cast), the sum back
        base = linear(x2, K, b)
        if base.dtype == A.dtype:
            y = torch.addmm(base, xd @ A, B, alpha=a["scale"])
        else:  # bf16 += fp32: the sum in fp32, rounded once (a fresh output: in place is safe)
            y = base.add_((xd.to(A.dtype) @ A) @ B, alpha=a["scale"])
    return with_updates(y.reshape(*x.shape[:-1], K.shape[1]), updates)


def _norm_ratio(p: Mapping, m: torch.Tensor | None, a: Mapping, ctx: KernelContext
                ) -> tuple:
    """``(m / c [out], cols, W)`` with c the column norm of the flat ``K + s*A@B``
    (factored: no kernel-sized temporary beyond the flat view of K), detached unless
    ``detach_norm`` is False; ``cols`` and ``W`` as :func:`exact_columns` gives them. All
    None for LoRA (``m`` None)."""
    if m is None:
        return None, None, None
    K, _, A, B = _adapter_params(p)
    return _dora_ratio(flat_kernel(K, a), flat_A(A), B, m, a, ctx)


def _embedding(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
               m: torch.Tensor | None) -> Any:
    """PEFT's embedding LoRA (``m`` None) or DoRA: ``y = r * (K[x] + s * A[x] @ B)`` with
    ``r = m/c`` (DoRA, the norm over the vocab axis) or 1; the columns where the norm
    cancels are looked up in their merged kernel (it cancels there too)."""
    x = ins[0]
    K, _, A, B = _adapter_params(p)
    r, cols, W = _norm_ratio(p, m, a, ctx)
    y = lookup(x, K) + a["scale"] * (F.embedding(x, A) @ B)
    if cols is not None:
        y = y.index_copy(-1, cols, F.embedding(x, W).to(y.dtype))
    return y if r is None else y * r


def _conv(ins: list, p: Mapping, a: Mapping, ctx: KernelContext,
          m: torch.Tensor | None) -> Any:
    """PEFT's conv LoRA (``m`` None) or DoRA: ``y = r * (base(x) + s * B(A(x))) + b``
    with ``r = m/c`` (DoRA) or 1; with dropout in training ``base(x) + b + (r - 1) *
    base(xd) + r * s * B(A(xd))``. The columns where the norm cancels take ``base(xd) + s
    * B(A(xd))`` from their merged kernel (it cancels there too)."""
    x = ins[0]
    K, b, A, B = _adapter_params(p)
    s = a["scale"]
    r, cols, W = _norm_ratio(p, m, a, ctx)
    ch = a["channels"]
    xf = to_first(x, ch)
    xd, updates = _lora_dropout(xf, p, a, ctx)
    base = conv_first(xf, torch_weight(K, ch), None, a)
    h = conv_first(xd, torch_weight(A, "last"), None, a)  # A: a conv with the base window
    low = s * (h.movedim(1, -1) @ B).movedim(-1, 1)  # B: a 1x1 conv
    if r is None:
        y = base + low
    else:
        base_d = base if xd is xf else conv_first(xd, torch_weight(K, ch), None, a)
        h = base_d + low
        if cols is not None:
            Wk = torch_weight(W.reshape(*A.shape[:-1], W.shape[-1]), "last")
            h = h.index_copy(1, cols, conv_first(xd.to(Wk.dtype), Wk, None, a).to(h.dtype))
        y = h * r.reshape(-1, *([1] * (base.dim() - 2)))
        if xd is not xf:
            y = y + (base - base_d)
    if b is not None:
        y = y + b.reshape(-1, *([1] * (y.dim() - 2)))
    return with_updates(from_first(y, ch), updates)


#: the forward of each adaptable kind (graphdsl.adapters.kinds): ``(ins, p, a, ctx, m)
#: -> y``, ``m`` DoRA's magnitude or None (LoRA)
_FORWARD: dict[str, Callable] = {"dense": _dense, "conv": _conv, "embedding": _embedding}


def _in_dtype(dt: torch.dtype, *ts: Any) -> list:
    """The float tensors among ``ts`` in ``dt`` (None and integer ids as they are)."""
    return [t.to(dt) if t is not None and t.is_floating_point() else t for t in ts]


def _adapter(ins: list, p: Mapping, a: Mapping, ctx: KernelContext) -> Any:
    """The kernel of dora and lora: the adapted kind's forward (:data:`_FORWARD`), with
    DoRA's magnitude (LoRA has none). Conv and embedding adapters over a base in another
    dtype than A's (a bfloat16 base, float32 adapters) compute in A's dtype, as PEFT's
    (x and the weight cast up), and return the base's dtype (dense: :func:`_dense`)."""
    kind, m, A, K, x = layer_of(a), p.get("magnitude"), p["A"], base_kernel(p), ins[0]
    same = K.dtype == A.dtype and (x.dtype == A.dtype or not x.is_floating_point())
    if kind == "dense" or same:
        return _FORWARD[kind](ins, p, a, ctx, m)
    p = {k: _in_dtype(A.dtype, v)[0] if k in BASE_PARAMS else v for k, v in p.items()}
    y = _FORWARD[kind](_in_dtype(A.dtype, *ins), p, a, ctx, m)
    if isinstance(y, Stateful):
        return y._replace(output=y.output.to(K.dtype))
    return y.to(K.dtype)


KERNELS: dict[str, Callable] = {"dora": _adapter, "lora": _adapter}
