"""Backend registry (installed as ``graphdsl.backends``).

``get_backend(name)`` imports the backend module lazily, so the NumPy backend never
pulls in torch. Third parties may add one with :func:`register_backend`.
"""
from __future__ import annotations

import importlib

from graphdsl.errors import BackendError

from .base import Backend, KernelContext  # noqa: F401

_MODULES: dict[str, str] = {
    "numpy": "graphdsl.backends.numpy_backend",
    "torch": "graphdsl.backends.torch_backend",
    "onnxruntime": "graphdsl.backends.onnxruntime_backend",
}
_LOADED: dict[str, Backend] = {}
_INSTALL_HINT = {"torch": "pip install 'graphdsl[torch]'",
                 "onnxruntime": "pip install 'graphdsl[onnx]'"}


def register_backend(name: str, module: str) -> None:
    """Make ``build(..., backend=name)`` import ``module`` and use its ``BACKEND``."""
    _MODULES[name] = module


def get_backend(name: str) -> Backend:
    """The backend object for ``name``; an unknown name lists the available ones."""
    if isinstance(name, Backend):
        return name
    if name in _LOADED:
        return _LOADED[name]
    if name not in _MODULES:
        raise BackendError(f"unknown backend {name!r}",
                           fix=f"use one of: {', '.join(available_backends())}")
    try:
        mod = importlib.import_module(_MODULES[name])
    except ImportError as e:
        raise BackendError(f"backend {name!r} is not available ({e})",
                           fix=_INSTALL_HINT.get(name, "install its dependencies")) from None
    _LOADED[name] = mod.BACKEND
    return mod.BACKEND


#: names of the torch backend's modules offered by ``graphdsl`` and ``graphdsl.lora``
TORCH_FACE = {"to_torch": "module", "from_torch": "module",
              "loraplus_param_groups": "training"}


def torch_face(name: str) -> object:
    """``graphdsl.backends.torch_backend.<module>.<name>`` for a name of
    :data:`TORCH_FACE`, imported on first use (so ``import graphdsl`` never imports
    torch); a BackendError when torch is not installed."""
    try:
        mod = importlib.import_module(f"graphdsl.backends.torch_backend.{TORCH_FACE[name]}")
    except ImportError as e:
        raise BackendError(f"PyTorch is not available ({e})",
                           fix=_INSTALL_HINT["torch"]) from None
    return getattr(mod, name)


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed."""
    out = []
    for name in _MODULES:
        try:
            get_backend(name)
        except BackendError:
            continue
        out.append(name)
    return out


def known_backends() -> list[str]:
    return list(_MODULES)


__all__ = ["Backend", "KernelContext", "TORCH_FACE", "get_backend", "register_backend",
           "torch_face",
           "available_backends", "known_backends"]

