"""Every registered op has a kernel in every installed backend (DESIGN section 2), and a
row in tests/op_cases.py for every per-op suite; the rows' NumPy references hold."""
from __future__ import annotations

import numpy as np
import pytest
from graphdsl.backends import available_backends, get_backend, known_backends
from op_cases import CASES, SUITES, cases_for

import graphdsl as gd
from graphdsl.registry import OPS

# ops that never reach a backend: inputs are bound by the compiler, not run as kernels, and
# block calls are inlined by it (graphdsl.block.expand_blocks) into their bodies' layers,
# a call's block_output nodes into the body's output they pick
NOT_KERNELS = {"input", "block", "block_output"}


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


def test_every_op_has_a_case_in_every_suite():
    unknown = sorted({c.op for c in CASES.values()} - set(OPS))
    assert not unknown, f"tests/op_cases.py has rows for unregistered ops {unknown}"
    missing = {suite: sorted(set(OPS) - {c.op for c in CASES.values() if suite not in c.skip})
               for suite in SUITES}
    missing = {suite: ops for suite, ops in missing.items() if ops}
    assert not missing, f"ops without a case (add a row to tests/op_cases.py): {missing}"


@pytest.mark.parametrize("case", cases_for(where=lambda c: c.reference is not None))
def test_numpy_matches_the_reference(case):
    model, inputs, st = case.setup()
    arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    np.testing.assert_allclose(gd.predict(model, st, arg), case.reference(inputs, st),
                               **case.tol)
