"""A LLaMA forward, side by side in one process with 2 threads each: graphdsl's NumPy
backend and a ``to_torch`` module against transformers' eager forward (no_grad), on the
path a user takes (``hf.from_transformers``). hidden 512, 2 layers, 8 heads / 4 kv heads,
intermediate 1376, vocab 1000, batch 4 x 128 tokens. Also each forward's peak memory: how far
the resident set grows above the loaded model during one (warm) forward, each in a fresh
process."""
from __future__ import annotations

import sys

import numpy as np

from benchmarks.harness import (
    Row,
    in_child,
    interleaved,
    machine,
    median_time,
    peak_rss_growth,
    table,
)

THREADS = 2


def _setup(quick: bool):
    """The benchmark model on the user's path: transformers model -> hf.from_transformers."""
    import torch
    import transformers

    from graphdsl import hf

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, attn_implementation="eager")
    ref = transformers.LlamaForCausalLM(cfg).eval()
    model, state = hf.from_transformers(ref)
    batch, seq = (1, 32) if quick else (4, 128)
    ids = np.random.default_rng(0).integers(0, 1000, (batch, seq))
    return ref, model, state, ids


def _forwards(ref, model, state, ids) -> dict:
    import torch

    import graphdsl as gd

    _, predict = gd.build(model)
    module = gd.to_torch(model, state).eval()
    tids = torch.from_numpy(ids)

    def hf_fwd():
        with torch.no_grad():
            return ref(tids).logits

    def mod_fwd():
        with torch.no_grad():
            return module(tids)

    return {"numpy": lambda: predict(state, ids), "module": mod_fwd, "hf": hf_fwd}


def _memory(kind: str, quick: bool) -> float:
    """Peak resident-set growth of one warm forward of ``kind``; run in a fresh process."""
    from threadpoolctl import threadpool_limits

    ref, model, state, ids = _setup(quick)
    fwd = _forwards(ref, model, state, ids)[kind]
    with threadpool_limits(THREADS):
        fwd()  # warm: caches, lazy init, thread pools
        return peak_rss_growth(fwd)


def run(quick: bool = False) -> list[Row]:
    from threadpoolctl import threadpool_limits

    ref, model, state, ids = _setup(quick)
    f = _forwards(ref, model, state, ids)
    with threadpool_limits(THREADS):
        np.testing.assert_allclose(f["numpy"](), f["hf"]().numpy(), atol=1e-3)
        # torch against torch interleaved; NumPy in its own blocks: right after an OpenBLAS
        # call its spinning threads slow whatever torch runs next (and vice versa)
        reps = 3 if quick else 20
        t = interleaved({"module": f["module"], "hf": f["hf"]}, repeat=reps)
        t["numpy"] = median_time(f["numpy"], repeat=reps)
        t["hf_alone"] = median_time(f["hf"], repeat=reps)
    q = ["--quick"] if quick else []
    mem = {k: float(in_child("benchmarks.bench_llama", "--memory", k, *q)) / 2**20
           for k in ("numpy", "module", "hf")}
    batch, seq = ids.shape
    n = f"LLaMA 512x2 layers, batch {batch}x{seq}"
    return [
        Row(f"{n}: NumPy forward", t["numpy"], t["hf_alone"], "transformers eager", 1.25),
        Row(f"{n}: to_torch module forward", t["module"], t["hf"], "transformers eager",
            1.05),
        Row(f"{n}: NumPy forward peak memory", mem["numpy"], mem["module"],
            "to_torch module forward", unit="MiB"),
        Row(f"{n}: to_torch module forward peak memory", mem["module"], mem["hf"],
            "transformers eager", unit="MiB"),
    ]


if __name__ == "__main__":
    if "--memory" in sys.argv:
        print(_memory(sys.argv[sys.argv.index("--memory") + 1], "--quick" in sys.argv))
    else:
        print(machine())
        print(table(run("--quick" in sys.argv)))
