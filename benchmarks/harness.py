"""Shared timing helpers: side-by-side medians in one process, reported as ratios.

Each ``benchmarks/bench_*.py`` defines ``run(quick: bool = False) -> list[Row]`` and
prints its table when run as a script; ``benchmarks/run.py`` runs them all.
"""
from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    """One comparison: ``ours`` and ``ref`` medians in seconds, and the goal for the ratio."""

    name: str
    ours: float
    ref: float
    ref_name: str
    target: float | None = None  # ours/ref must be <= target (None: informational)
    unit: str = "s"

    @property
    def ratio(self) -> float:
        return self.ours / self.ref

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


def median_time(fn: Callable[[], object], repeat: int = 50, warmup: int = 3,
                min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeat: int = 50, warmup: int = 3
                ) -> dict[str, float]:
    """Medians of several functions timed in alternation (fair under machine noise)."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, repeat,
                                                                     warmup).items()}


def interleaved_samples(fns: dict[str, Callable[[], object]], repeat: int = 50,
                        warmup: int = 3) -> dict[str, list[float]]:
    """Every timing of several functions called in alternation, in call order: the i-th
    of each list come from the same round."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def fmt(seconds: float, unit: str = "s") -> str:
    if unit != "s":
        return f"{seconds:,.1f} {unit}"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    out = ["| benchmark | ours | reference | ratio | goal | |", "|---|---|---|---|---|---|"]
    for r in rows:
        goal = "-" if r.target is None else f"<= {r.target:g}x"
        mark = "" if r.ok is None else ("ok" if r.ok else "MISSED")
        out.append(f"| {r.name} | {fmt(r.ours, r.unit)} | {fmt(r.ref, r.unit)} "
                   f"({r.ref_name}) | {r.ratio:.3f}x | {goal} | {mark} |")
    return "\n".join(out)


def machine() -> str:
    import numpy as np

    return (f"{platform.processor() or platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, NumPy {np.__version__}")


def peak_rss_growth(fn: Callable[[], object]) -> float:
    """Bytes the resident set grows to above its level just before ``fn()`` (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so it sees every
    allocator (NumPy, torch, OpenBLAS) alike. Run it in a fresh process started with
    ``MALLOC_MMAP_THRESHOLD_`` fixed (see :func:`in_child`), so large freed blocks leave
    the resident set instead of hiding the next call's growth.
    """
    import re

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return float(status("VmHWM") - before)


def peak_pss_growth(fn: Callable[[], object], every: float = 0.01) -> float:
    """Bytes the proportional set size (Pss, /proc/self/smaps_rollup) grows to above its
    level just before ``fn()``, sampled every ``every`` seconds (Linux). Unlike the
    resident set, Pss counts a page once however many maps of it the process holds: a
    file mapped twice (a loaded state and a module's copy-on-write map of the same
    weights) costs its bytes once, as it does in physical memory."""
    import re
    import threading

    def pss() -> int:
        with open("/proc/self/smaps_rollup") as f:
            return int(re.search(r"\nPss:\s+(\d+)", f.read()).group(1)) * 1024

    gc.collect()
    before = pss()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(every):
            peak.append(max(peak[-1], pss()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
        peak.append(max(peak[-1], pss()))
    finally:
        done.set()
        t.join()
    return float(max(peak) - before)


def in_child(module: str, *args: str) -> str:
    """stdout of ``python -m module *args`` in a fresh process with a fixed mmap threshold
    (glibc then returns every block over 128 KiB to the system when it is freed)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-m", module, *args], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()
