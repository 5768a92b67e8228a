"""DistributedDataParallel: 2 processes on gloo/CPU (examples/ddp_finetune.py launched
with torchrun) end with the same parameters as full-batch training in one process."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_finetune.py"
STEPS, LR = 6, 0.1


def _example():
    spec = importlib.util.spec_from_file_location("ddp_finetune", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_ddp_matches_full_batch(tmp_path):
    out = tmp_path / "ddp.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE",
                                                             "LOCAL_RANK", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLE), "--steps", str(STEPS), "--lr", str(LR), "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    got = np.load(out)

    ex = _example()
    model = ex.make_model()
    state = ex.initial_state(model)
    x, t = ex.make_data()
    ref = ex.train(model, state, x, t, STEPS, LR)  # one process, the full batch
    assert set(got.files) == {f"{layer}.{p}" for layer, ps in ref.data.items() for p in ps}
    moved = 0
    for layer, ps in ref.data.items():
        for p, v in ps.items():
            np.testing.assert_allclose(got[f"{layer}.{p}"], v, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{layer}.{p}")
            moved += not np.array_equal(v, state.data[layer][p])
    trainable = ref.trainable_parameters()
    assert set(trainable) == {"fc1_dora", "out_dora"}  # A, B, magnitude of both adapters
    assert moved == sum(len(v) for v in trainable.values())
    for layer, p in [("fc1", "kernel"), ("out", "bias")]:  # frozen base stays put
        np.testing.assert_array_equal(got[f"{layer}.{p}"], state.data[layer][p])
