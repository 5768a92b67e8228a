"""GPU check (issue 24.5): the bfloat16 DoRA training step of ``bench_precision`` (the
254M LLaMA written by transformers in bfloat16; DoRA r=16 on all seven projections, base
bfloat16, adapters float32; SGD, batch 1 x 128) on one CUDA device, graphdsl's
``to_torch`` module against PEFT on the same device: the loss of each of a few steps (both
start from the same weights and adapter values, so they must track each other within
bfloat16 tolerance), the median step time and the peak of allocated device memory.
Without CUDA it says so and exits 0: no test or CI run needs a GPU.

    python -m benchmarks.gpu_check [--quick] [--steps N] [--repeat N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks import bench_precision as bench

LOSS_RTOL = bench.LOSS_RTOL  # bfloat16 logits, float32 loss: see bench_precision


def _timed(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each step on the device, timed round-robin after an untimed call
    of the same step (as bench_torch_dora.settled), synchronized around each."""
    import torch

    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            f()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _peak(fn) -> int:
    """Bytes of device memory a step allocates above what is live before it (both models'
    weights stay resident, so the absolute peak would hide the difference)."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bench_precision's small model")
    ap.add_argument("--steps", type=int, default=5, help="steps whose losses are compared")
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per side")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "nothing checked. Run it on a machine with an NVIDIA GPU and a CUDA build "
              "of torch.")
        return 0
    device = "cuda"
    folder, size = bench.checkpoint(args.quick)
    cfg = bench.config(args.quick)
    ids = bench.token_ids(args.quick, cfg.vocab_size)
    fns = bench.steps(folder, ids, device)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; LLaMA "
          f"{cfg.hidden_size}x{cfg.num_hidden_layers}, checkpoint {size / 2**20:.0f} MiB "
          f"bfloat16, batch {ids.shape[0]}x{ids.shape[1] - 1}")
    print("| step | graphdsl loss | PEFT loss | relative difference |\n|---|---|---|---|")
    worst = 0.0
    for i in range(args.steps):
        loss = {k: float(f().detach()) for k, f in fns.items()}
        diff = abs(loss["ours"] - loss["peft"]) / abs(loss["peft"])
        worst = max(worst, diff)
        print(f"| {i + 1} | {loss['ours']:.4f} | {loss['peft']:.4f} | {diff:.2e} |")
    t = _timed(fns, args.repeat)
    mem = {k: _peak(f) / 2**20 for k, f in fns.items()}
    print("\n| | graphdsl | PEFT | ratio | goal |\n|---|---|---|---|---|")
    print(f"| DoRA step time | {t['ours'] * 1e3:.2f} ms | {t['peft'] * 1e3:.2f} ms | "
          f"{t['ours'] / t['peft']:.3f}x | <= 0.9x (the CPU goal) |")
    print(f"| device memory a step adds (peak) | {mem['ours']:.0f} MiB | {mem['peft']:.0f} MiB "
          f"| {mem['ours'] / mem['peft']:.3f}x | <= 1x |")
    ok = worst <= LOSS_RTOL
    print(f"\nlosses {'agree' if ok else 'DISAGREE'}: worst relative difference {worst:.2e} "
          f"(tolerance {LOSS_RTOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
