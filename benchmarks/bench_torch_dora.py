"""DoRA/LoRA training step in graphdsl's torch module vs Hugging Face PEFT (run as a
script, it also prints bench_torch_module's rows: module forward vs a hand-written one).

A training step is forward + backward + SGD on a DoRA-wrapped 1024x1024 dense layer
(frozen kernel and bias), r=16, batch 64, float32; all timed interleaved in one process
(medians), torch.set_num_threads(1) unless GRAPHDSL_BENCH_THREADS says otherwise. Peak
memory of one step: the peak of live tensor bytes (parameters included) during the
step (CUDA: torch.cuda.max_memory_allocated; CPU: the profiler's memory events).

    python benchmarks/bench_torch_dora.py
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Row, table  # noqa: E402

IN = OUT = 1024
RANK, ALPHA, BATCH = 16, 32.0, 64
THREADS = int(os.environ.get("GRAPHDSL_BENCH_THREADS", "1"))  # 0: torch default


def _setup_threads(torch) -> None:
    if THREADS:
        torch.set_num_threads(THREADS)


def _ours(kind: str, device: str):
    import torch

    import graphdsl as gd
    from graphdsl import dora, lora

    x = gd.input("x", (None, IN))
    base = gd.dense(x, OUT, name="fc")
    mod = dora if kind == "dora" else lora
    y = mod.wrap(x, base, rank=RANK, alpha=ALPHA, name="fc_ad")
    init, _ = gd.build(y)
    st = init({"x": np.zeros((1, IN), np.float32)})
    st.data["fc_ad"]["B"] = (np.random.default_rng(1).standard_normal((RANK, OUT)) * 0.01
                             ).astype(np.float32)
    m = gd.to_torch(y, st, device=device)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    return m, opt


def _peft(use_dora: bool, device: str):
    import torch
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(IN, OUT)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    net = get_peft_model(Net(), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["fc"],
                                           use_dora=use_dora)).to(device)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    return net, opt


def _step_fn(model, opt, x, target):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - target).square().mean()
        loss.backward()
        opt.step()
        return loss

    return step


def settled(steps: dict, sync, repeat: int, warmup: int) -> dict[str, float]:
    """Median seconds of each step, timed round-robin; each timed call follows an untimed
    call of the same step, as in a training loop. Timed straight after another step, a
    step pays for the allocator state that one left: after PEFT's DoRA (whose [in, out]
    temporaries are freed back to the OS) the next step re-faults its memory, ~0.7 ms of
    a 2-3 ms step here, which made the order of the steps decide the ratios."""
    for f in steps.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeat):
        for k, f in steps.items():
            f()
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn, device: str) -> int:
    """Peak bytes of live tensors (parameters included) during ``fn()``: CUDA's allocator
    statistics, or on CPU the profiler's memory timeline (a private torch API)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
    return int(np.asarray(sizes).sum(axis=1).max())


def run(quick: bool = False, device: str | None = None) -> list[Row]:
    import torch

    _setup_threads(torch)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(BATCH, IN, device=device)
    target = torch.randn(BATCH, OUT, device=device)
    try:
        import peft  # noqa: F401
    except ImportError:
        print("peft is not installed: no DoRA/LoRA rows (pip install peft)")
        return []
    steps = {
        "graphdsl DoRA": _step_fn(*_ours("dora", device), x, target),
        "graphdsl LoRA": _step_fn(*_ours("lora", device), x, target),
        "PEFT DoRA": _step_fn(*_peft(True, device), x, target),
        "PEFT LoRA": _step_fn(*_peft(False, device), x, target),
    }
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t = settled(steps, sync, repeat=15 if quick else 200, warmup=5)
    mem = {k: peak_bytes(steps[k], device) for k in ("graphdsl DoRA", "PEFT DoRA")}
    rows = [
        Row(f"DoRA train step 1024x1024 r=16 b=64 ({device})", t["graphdsl DoRA"],
            t["PEFT DoRA"], "PEFT DoRA", 0.35),
        Row(f"DoRA train step vs LoRA ({device})", t["graphdsl DoRA"], t["PEFT LoRA"],
            "PEFT LoRA", 1.25),
        Row(f"LoRA train step ({device})", t["graphdsl LoRA"], t["PEFT LoRA"], "PEFT LoRA",
            None),
        Row(f"DoRA train step peak memory ({device})", mem["graphdsl DoRA"] / 2**20,
            mem["PEFT DoRA"] / 2**20, "PEFT DoRA", 1.0, unit="MiB"),
    ]
    return rows


if __name__ == "__main__":
    from benchmarks.bench_torch_module import run as run_module

    quick = "--quick" in sys.argv
    print(table(run(quick) + run_module(quick)))
