"""The docs site builds: ``mkdocs build --strict`` (every page in the nav, no broken link or
anchor, every API reference target found) into a temporary folder. CI installs mkdocs
through the ``docs`` extra, part of ``all``; without it the test skips."""
from __future__ import annotations

import os
import re
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


def test_readme_links_resolve():
    """The README is read on GitHub and PyPI, outside the site: each relative link names a
    file of the repository (and a heading of it, when it has an anchor)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text)
    targets = [a or b for a, b in links if not (a or b).startswith(("http://", "https://"))]
    assert len(targets) > 10
    for target in targets:
        path, _, anchor = target.partition("#")
        full = os.path.join(ROOT, path)
        assert os.path.exists(full), f"README.md links to {target}, which does not exist"
        if anchor:
            with open(full, encoding="utf-8") as f:
                slugs = {re.sub(r"[^\w\- ]", "", h.strip("# ").lower()).replace(" ", "-")
                         for h in f.read().splitlines() if h.startswith("#")}
            assert anchor in slugs, f"README.md links to {target}: no such heading"


def test_readme_keeps_the_two_setup_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert 'pip install -e ".[all]" -c constraints.txt && python examples/dora_finetune.py' \
        in lines
    assert 'pip install -e ".[all]" -c constraints.txt && python -m pytest -q' in lines
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the guides are in docs/"
