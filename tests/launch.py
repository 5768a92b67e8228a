"""Running the examples and the command from tests: import an example as a module, launch
a distributed one with torchrun in 2 gloo/CPU processes, find the ``graphdsl`` script."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _gloo_available() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


#: skips a test where torch.distributed has no gloo backend
needs_gloo = pytest.mark.skipif(not _gloo_available(),
                                reason="torch.distributed with gloo is not available")


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torchrun_example(name: str, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 examples/<name>.py *args`` on CPU (gloo
    even on a GPU machine), outside any distributed environment the tests run in."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE",
                                                             "LOCAL_RANK", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLES / f"{name}.py"), *args], capture_output=True, text=True, timeout=240,
        env=env)


def logged_losses(stdout: str) -> dict[int, float]:
    """{step: loss} from the ``step N  loss L`` lines the distributed examples print."""
    return {int(w[1]): float(w[3]) for w in map(str.split, stdout.splitlines())
            if len(w) == 4 and w[0] == "step" and w[2] == "loss"}


def console_script() -> str:
    """The ``graphdsl`` script installed beside the running interpreter (not whatever PATH
    finds, and never a skip: a missing script is a broken install)."""
    path = os.path.join(os.path.dirname(sys.executable), "graphdsl")
    assert os.path.isfile(path), f"{path} is missing; fix: pip install -e ."
    return path


def teardown_order(name: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> list[str]:
    """Run ``examples/<name>.py *args`` as rank 0 of a 1-process gloo group and return the
    order of its ``barrier`` / ``destroy_process_group`` calls."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(key, value)
    calls: list[str] = []
    for fn in ("barrier", "destroy_process_group"):
        real = getattr(dist, fn)
        monkeypatch.setattr(dist, fn, lambda *a, _f=fn, _real=real, **k: (calls.append(_f),
                                                                          _real(*a, **k))[1])
    try:
        assert load_example(name).main(list(args)) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return calls
