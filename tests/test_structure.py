"""The library's structure checks (tools/check_structure.py) run with the suite too."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_circle_no_private_imports_and_within_the_line_budget():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_structure.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "structure: ok" in r.stdout
