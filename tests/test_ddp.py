"""DistributedDataParallel: 2 processes on gloo/CPU (examples/ddp_finetune.py launched
with torchrun) end with the same parameters as full-batch training in one process."""
from __future__ import annotations

import numpy as np
import pytest
from launch import load_example, logged_losses, needs_gloo, teardown_order, torchrun_example

import graphdsl as gd

torch = pytest.importorskip("torch")

STEPS, LR = 6, 0.1


@needs_gloo
def test_two_process_ddp_matches_full_batch(tmp_path, capsys):
    """The same parameters, and the same logged loss: rank 0 prints the loss all-reduced
    over the whole batch, what one process training on the full batch prints (not rank
    0's shard loss)."""
    out = tmp_path / "ddp.npz"
    proc = torchrun_example("ddp_finetune", "--steps", str(STEPS), "--lr", str(LR),
                            "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    got = np.load(out)

    ex = load_example("ddp_finetune")
    model = ex.make_model()
    state = ex.initial_state(model)
    x, t = ex.make_data()
    capsys.readouterr()
    ref = ex.train(model, state, x, t, STEPS, LR, log=True)  # one process, the full batch
    got_loss, want_loss = logged_losses(proc.stdout), logged_losses(capsys.readouterr().out)
    assert set(got_loss) == set(want_loss) == {0, STEPS - 1}
    # printed to 6 decimals (losses ~0.9): 1e-6 of rounding; float32 sums over 2 shards
    # instead of one batch differ by ~1e-7
    for step, want in want_loss.items():
        assert got_loss[step] == pytest.approx(want, abs=2e-6), step
    half = len(x) // 2  # the check can fail: rank 0's shard alone has another loss
    shard0 = float(np.mean((gd.predict(model, state, x[:half]) - t[:half]) ** 2))
    assert abs(shard0 - want_loss[0]) > 1e-3
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


@needs_gloo
def test_ranks_wait_for_each_other_before_the_group_is_destroyed(monkeypatch, tmp_path):
    """rank 0 saves after training; destroying the group before every rank got there
    aborted rank 0 once in 15 runs: a barrier comes first."""
    calls = teardown_order("ddp_finetune", monkeypatch, "--steps", "1", "--out",
                           str(tmp_path / "ddp.npz"))
    assert calls[-2:] == ["barrier", "destroy_process_group"]
