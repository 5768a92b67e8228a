"""Where the DoRA training step of ``bench_llama_dora`` spends its time beyond LoRA: the
same step with parts of graphdsl's DoRA node taken away, timed interleaved with PEFT.
An analysis, not a benchmark row (the stripped variants compute a stale norm):

    python -m benchmarks.decompose_llama_dora [--repeat N] [--quick]

Variants, each as a ratio to PEFT's DoRA step (median over steps of the per-step ratio):
the shipped node; the column norm taken from a cache (no pass over K, no norm
arithmetic); that plus a frozen magnitude (no magnitude gradient, which reads the saved
[n, out] activation); graphdsl's LoRA; PEFT's LoRA. If the second is above PEFT's LoRA
step, no way of computing the norm reaches the goal of ``bench_llama_dora`` (DoRA step
<= 1.0x PEFT's LoRA step, issue 24)."""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks import bench_llama_dora as bench
from benchmarks.harness import interleaved_samples, machine


def _cached_norm_node():
    """graphdsl's DoRA node with ``c`` computed once per layer and reused: the shipped
    backward, a forward without the norm's pass over K and its arithmetic."""
    import torch
    from graphdsl.backends.torch_backend import adapters

    norms: dict[int, torch.Tensor] = {}

    class CachedNorm(adapters._DoRAFactored):
        @staticmethod
        def forward(fctx, x2, K, b, A, B, m, s, finish, ac):  # noqa: ANN001
            assert b is None and ac is None  # LLaMA's projections have no bias; no autocast
            c = norms.get(id(K))
            if c is None:
                c = norms[id(K)] = finish(*adapters.dora_column_norm_sq(
                    A, B, s, A.t() @ K, adapters._colsum_squares(K)))
            scale = m / c
            xA = x2 @ A
            h = torch.addmm(x2 @ K, xA, B, alpha=s)
            fctx.save_for_backward(x2, K, A, B, xA, h, scale, c)
            fctx.s, fctx.has_bias, fctx.ac, fctx.x_dtype = s, False, None, x2.dtype
            return h * scale

    return CachedNorm


def run(repeat: int, quick: bool = False) -> list[tuple[str, float, float]]:
    """``[(variant, median step seconds, median ratio to PEFT's DoRA step)]``."""
    import torch
    from graphdsl.backends.torch_backend import adapters
    from threadpoolctl import threadpool_limits

    import graphdsl as gd
    from graphdsl import lora

    torch.set_num_threads(bench.THREADS)
    cfg = bench._config(quick)
    ids = torch.from_numpy(np.random.default_rng(0).integers(
        0, cfg.vocab_size, (2, 33) if quick else (4, 129)))
    peft_dora, (model, state) = bench._peft(cfg, True)
    peft_lora = bench._peft(cfg, False)[0]
    ours = bench._ours(peft_dora, model, state)
    adapted = lora.adapt(model, targets=bench.TARGETS, rank=bench.RANK, alpha=bench.ALPHA)
    ours_lora = gd.to_torch(adapted, gd.build(adapted)[0](None, state))
    magnitudes = [p for n, p in ours.named_parameters() if n.endswith(".magnitude")]
    step = bench._step(ours, ours.parameters(), ids)
    shipped, cached = adapters._DoRAFactored, _cached_norm_node()

    def variant(node, train_magnitude: bool):
        def f():
            adapters._DoRAFactored = node
            for p in magnitudes:
                p.requires_grad_(train_magnitude)
            return step()
        return f

    def logits(node):
        adapters._DoRAFactored = node
        with torch.no_grad():
            return ours(ids[:, :-1])

    steps = {
        "graphdsl DoRA (shipped)": variant(shipped, True),
        "graphdsl DoRA, norm cached": variant(cached, True),
        "graphdsl DoRA, norm cached, magnitude frozen": variant(cached, False),
        "graphdsl LoRA": bench._step(ours_lora, ours_lora.parameters(), ids),
        "PEFT LoRA": bench._step(lambda x: peft_lora(input_ids=x).logits,
                                 peft_lora.parameters(), ids),
        "PEFT DoRA": bench._step(lambda x: peft_dora(input_ids=x).logits,
                                 peft_dora.parameters(), ids),
    }
    try:
        with threadpool_limits(bench.THREADS):
            # before any step the cached norm is the true one: the same logits
            assert torch.allclose(logits(shipped), logits(cached), atol=1e-5)
            times = interleaved_samples(steps, repeat, warmup=2)
    finally:
        adapters._DoRAFactored = shipped
    ref = times["PEFT DoRA"]
    return [(k, statistics.median(v), statistics.median(a / b for a, b in zip(v, ref)))
            for k, v in times.items()]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="the small model (a smoke run)")
    args = ap.parse_args()
    print(machine())
    print("| step | median | vs PEFT DoRA |\n|---|---|---|")
    for name, t, r in run(args.repeat, args.quick):
        print(f"| {name} | {t * 1e3:.1f} ms | {r:.3f}x |")
