"""Every registered op has a kernel in every installed backend (DESIGN section 2)."""
from __future__ import annotations

import pytest
from graphdsl.backends import available_backends, get_backend, known_backends

import graphdsl as gd

# ops that never reach a backend: inputs are bound by the compiler, not run as kernels
NOT_KERNELS = {"input"}


def test_numpy_and_torch_are_known():
    assert {"numpy", "torch"} <= set(known_backends())
    assert "numpy" in available_backends()


@pytest.mark.parametrize("backend", known_backends())
def test_every_op_has_a_kernel(backend):
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} is not installed (optional dependency)")
    kernels = get_backend(backend).kernels
    missing = sorted(set(gd.OPS) - NOT_KERNELS - set(kernels))
    assert not missing, f"backend {backend!r} has no kernel for {missing}"
    unknown = sorted(set(kernels) - set(gd.OPS))
    assert not unknown, f"backend {backend!r} has kernels for unregistered ops {unknown}"
