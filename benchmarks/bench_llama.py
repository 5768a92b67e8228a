"""A LLaMA forward, side by side in one process with 2 threads each: graphdsl's NumPy
backend and a ``to_torch`` module against transformers' eager forward (no_grad), on the
path a user takes (``hf.from_transformers``). hidden 512, 2 layers, 8 heads / 4 kv heads,
intermediate 1376, vocab 1000, batch 4 x 128 tokens. Also the NumPy forward's peak
traced memory (tracemalloc) against the float32 weights it reads."""
from __future__ import annotations

import tracemalloc

import numpy as np

from benchmarks.harness import Row, interleaved, machine, median_time, table

THREADS = 2


def run(quick: bool = False) -> list[Row]:
    import torch
    import transformers
    from threadpoolctl import threadpool_limits

    import graphdsl as gd
    from graphdsl import hf

    torch.set_num_threads(THREADS)
    cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, attn_implementation="eager")
    ref = transformers.LlamaForCausalLM(cfg).eval()
    model, state = hf.from_transformers(ref)
    batch, seq = (1, 32) if quick else (4, 128)
    ids = np.random.default_rng(0).integers(0, 1000, (batch, seq))
    tids = torch.from_numpy(ids)
    _, predict = gd.build(model)
    module = gd.to_torch(model, state).eval()

    def hf_fwd():
        with torch.no_grad():
            return ref(tids).logits

    def mod_fwd():
        with torch.no_grad():
            return module(tids)

    with threadpool_limits(THREADS):
        np.testing.assert_allclose(predict(state, ids), hf_fwd().numpy(), atol=1e-3)
        # torch against torch interleaved; NumPy in its own blocks: right after an OpenBLAS
        # call its spinning threads slow whatever torch runs next (and vice versa)
        reps = 3 if quick else 20
        t = interleaved({"module": mod_fwd, "hf": hf_fwd}, repeat=reps)
        t["numpy"] = median_time(lambda: predict(state, ids), repeat=reps)
        t["hf_alone"] = median_time(hf_fwd, repeat=reps)
        tracemalloc.start()
        predict(state, ids)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    weights = state.parameter_bytes()
    n = f"LLaMA 512x2 layers, batch {batch}x{seq}"
    return [
        Row(f"{n}: NumPy forward", t["numpy"], t["hf_alone"], "transformers eager", 1.25),
        Row(f"{n}: to_torch module forward", t["module"], t["hf"], "transformers eager",
            1.05),
        Row(f"{n}: NumPy forward peak traced memory", peak / 2**20, weights / 2**20,
            "the float32 weights", unit="MiB"),
    ]


if __name__ == "__main__":
    print(machine())
    print(table(run()))
