"""MkDocs hook (mkdocs.yml ``hooks:``): lays out the package as it is installed, for the API
reference. pyproject maps ``graphdsl.backends`` to the top-level ``backends/`` folder
(``package-dir``), which griffe (mkdocstrings' reader) cannot follow by searching paths, so
before the build this writes ``build/api_src/graphdsl/``: a link to every entry of
``graphdsl/`` plus ``backends`` -> ``backends/``. mkdocstrings reads the source there
(``paths: [build/api_src]``), statically: nothing of graphdsl is imported or run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "api_src" / "graphdsl"


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
    except OSError:  # no symlinks (Windows without the privilege): copy
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


@event_priority(100)  # before mkdocstrings reads its paths (which must exist then)
def on_config(config: Any, **kwargs: Any) -> Any:
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    for entry in (ROOT / "graphdsl").iterdir():
        if entry.name != "__pycache__":
            _link(entry, STAGE / entry.name)
    _link(ROOT / "backends", STAGE / "backends")
    return config
