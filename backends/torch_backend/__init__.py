"""PyTorch backend: the same kernels as NumPy's, on tensors, for training and GPUs.

Two ways to run a plan:

* ``build(model, backend="torch")`` -> ``(init_fn, predict_fn)``: a flat list of kernel
  calls over numbered slots, like the NumPy backend. Parameters come from the NumPy
  ``ModelState`` (converted once per value); inputs may be NumPy arrays or tensors;
  outputs are tensors. Option: ``device=`` ("cpu", "cuda", ...).
* :func:`graphdsl.to_torch` lowers the plan to an ``nn.Module`` whose forward is
  generated straight-line code calling these kernels (:mod:`.module`, laid out in block
  calls by :mod:`.blocks`); :mod:`.training` has training helpers (LoRA+ groups).

Kernels: :mod:`.kernels` (core, transformer ops), :mod:`.conv` (conv, norms),
:mod:`.conv_variants` (conv_transpose, depthwise and separable convs), :mod:`.pool`
(pools), one module per further family (special, recurrent, ...) and :mod:`.adapters`
(dora, lora on dense, conv and embedding layers). A kernel is
``kernel(inputs, params, attrs, ctx) -> tensor`` or
:class:`~graphdsl.backends.base.Stateful` (see :mod:`graphdsl.backends.base`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graphdsl.arrays import as_numpy
from graphdsl.dtypes import dtype_name, np_dtype
from graphdsl.errors import BackendError, InputError

from ..base import Backend, plan_runner, state_fetch
from . import adapters, conv, conv_variants, kernels, pool, recurrent, special
from .adapters import dora_column_norm_sq
from .kernels import ACTIVATIONS, TorchContext, compiling, step_dtype

if TYPE_CHECKING:  # pragma: no cover
    from graphdsl.compiler import Plan

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                 "float16": torch.float16, "bfloat16": torch.bfloat16}
KERNELS: dict[str, Callable] = {**kernels.KERNELS, **conv.KERNELS, **pool.KERNELS,
                                **adapters.KERNELS, **special.KERNELS, **conv_variants.KERNELS,
                                **recurrent.KERNELS}


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
    """A NumPy array, array-like or tensor ``a`` (any shape) as a tensor of the same shape
    on ``device`` with ``dtype`` (None: unchanged); zero-copy for a writable, contiguous,
    native-order array on the CPU."""
    if isinstance(a, torch.Tensor):
        t = a
    else:
        arr = as_numpy(a)  # native order
        t = numpy_view(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
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
        def convert(arr: Any, ref: Any) -> Any:  # RNG keys stay NumPy scalars
            if ref.kind == "state" and ref.dtype == "uint64":
                return arr
            return state_tensor(arr, dev, _TORCH_DTYPES.get(ref.dtype, dtype))

        return plan_runner(
            plan, KERNELS,
            lambda step: TorchContext(plan.training, step_dtype(step, dtype), step.name,
                                      step.op, torch, where=step.node.where, device=dev),
            state_fetch(plan, convert),
            lambda a, is_int, name, node: _convert_input(a, is_int, dtype, dev, name,
                                                                 node),
            lambda t: t.clone(), _to_state)


def _to_state(v: Any) -> Any:
    """A new state value from a kernel as the ModelState holds it (NumPy)."""
    return tensor_numpy(v) if isinstance(v, torch.Tensor) else v


def state_tensor(arr: np.ndarray, device: torch.device, dtype: Any) -> torch.Tensor:
    """A tensor on ``device`` reading the immutable state array ``arr`` (any shape; no copy
    on CPU when the dtype matches: kernels never write into parameters); floats in
    ``dtype`` (None: their own)."""
    t = numpy_view(arr)
    if t.is_floating_point() and dtype is not None:
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def numpy_view(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor reading ``arr``'s memory (any shape, no copy; the caller never writes
    into it): a uint64 RNG key as int64, an ``ml_dtypes.bfloat16`` array as torch.bfloat16
    (torch.from_numpy knows no bfloat16: its bits are viewed as uint16)."""
    arr = arr.view(np.ndarray)
    bf16 = arr.dtype.kind == "V" and dtype_name(arr.dtype) == "bfloat16"
    if arr.dtype == np.uint64 or bf16:
        arr = arr.view(np.int64 if arr.dtype == np.uint64 else np.uint16)
    with warnings.catch_warnings():  # read-only memory: torch warns that writes are UB
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if bf16 else t


def tensor_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` (any shape, any device) as a NumPy array of its own dtype: bfloat16 as
    ``ml_dtypes.bfloat16`` (a GraphDSLError naming the ``half`` extra without
    ml_dtypes)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(np_dtype("bfloat16"))
    return as_numpy(t)


def _convert_input(a: Any, is_int: bool, dtype: torch.dtype, dev: torch.device, name: str,
                   node: Any) -> torch.Tensor:
    t = to_tensor(a)
    if is_int:
        t = integer_input(t, name, node)
        return t.to(dev) if t.device != dev else t
    if t.is_complex():
        raise InputError(f"input {name!r} is complex ({t.dtype})", layer=name, op="input",
                         where=node.where, fix="pass a real-valued array")
    return t.to(device=dev, dtype=dtype) if (t.device != dev or t.dtype != dtype) else t


def integer_input(t: torch.Tensor, name: str, node: Any) -> torch.Tensor:
    """The tensor ``t`` given for integer input ``name`` (token ids, a mask): integers as
    they are; bool, or floats holding whole numbers (a mask as transformers takes it), as
    int64; else an InputError."""
    if t.dtype == torch.bool or (t.is_floating_point() and bool((t % 1 == 0).all())):
        t = t.long()
    if t.is_floating_point() or t.is_complex():
        raise InputError(f"input {name!r} holds integers (token ids, a 0/1 mask), got "
                         f"dtype {t.dtype} with fractions", layer=name, op="input",
                         where=node.where, fix="pass int64 values (x.long())")
    return t


BACKEND = TorchBackend()

__all__ = ["BACKEND", "KERNELS", "ACTIVATIONS", "TorchBackend", "TorchContext",
           "compiling", "dora_column_norm_sq", "integer_input",
           "numpy_view", "register_kernel", "resolve_device", "state_tensor", "tensor_numpy",
           "to_tensor"]
