"""The docs site builds: ``mkdocs build --strict`` (every page in the nav, no broken link or
anchor, every API reference target found) into a temporary folder. CI installs mkdocs
through the ``docs`` extra, part of ``all``; without it the test skips."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site),
         "--config-file", os.path.join(ROOT, "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    for page in ("index.html", "guides/dora_lora/index.html", "axon/index.html",
                 "benchmarks/index.html", "api/index.html"):
        assert (site / page).is_file(), f"the site has no {page}"
    # the benchmarks page is RESULTS.md itself, included (one source of every figure)
    bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "bench_llama_dora" in bench and "--8&lt;--" not in bench
