"""DoRA/LoRA on the NumPy backend: inference cost against a plain dense layer, and the
transient memory of the factored column norm against PEFT-style materialization.

- A DoRA-wrapped 1024x1024 dense at batch 64, inference: the merged kernel is cached on
  the identity of the state arrays, so the goal is <= 1.05x the plain dense layer.
- Peak extra memory (tracemalloc) of ``c = ||K + s*A@B||_col``: factored form
  (O(r*out)) against materializing ``K + s*A@B`` (O(in*out)).
- Informational: the unmerged train-mode forward, and a cache miss (new weights).
"""
from __future__ import annotations

import tracemalloc

import numpy as np

import graphdsl as gd
from benchmarks.harness import Row, interleaved, machine, table
from graphdsl import dora, lora
from graphdsl.adapters._math import dora_column_norm

N, BATCH, RANK, ALPHA = 1024, 64, 8, 16.0


def _models(n: int):
    x = gd.input("x", (None, n))
    orig = gd.dense(x, n, name="fc")
    return orig, dora.wrap(x, orig, rank=RANK, alpha=ALPHA), lora.wrap(x, orig, rank=RANK,
                                                                      alpha=ALPHA)


def _trained_state(init_fn, x, rng, name):
    """A state with random (non-trivial) adapter values."""
    st = init_fn(x)
    ad = st.data[name]
    ad["A"] = rng.standard_normal(ad["A"].shape).astype(np.float32) * 0.03
    ad["B"] = rng.standard_normal(ad["B"].shape).astype(np.float32) * 0.03
    if "magnitude" in ad:
        ad["magnitude"] = ad["magnitude"] * rng.uniform(0.9, 1.1, ad["magnitude"].shape
                                                        ).astype(np.float32)
    return st


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()  # warm (first-call allocations of BLAS / einsum paths)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        del out
    finally:
        tracemalloc.stop()
    return peak


def run(quick: bool = False) -> list[Row]:
    n = 256 if quick else N
    repeat = 10 if quick else 400
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, n)).astype(np.float32)
    orig, dmodel, lmodel = _models(n)
    i0, p0 = gd.build(orig)
    s0 = i0(x)
    idora, pdora = gd.build(dmodel)
    sdora = _trained_state(idora, x, rng, "fc_dora")
    ilora, plora = gd.build(lmodel)
    slora = _trained_state(ilora, x, rng, "fc_lora")
    _, tdora = gd.build(dmodel, mode="train")
    t = interleaved({
        "dense": lambda: p0(s0, x),
        "dora": lambda: pdora(sdora, x),
        "lora": lambda: plora(slora, x),
        "dora_train": lambda: tdora(sdora, x),
    }, repeat=repeat)
    rows = [
        Row(f"DoRA-wrapped {n}x{n} dense, batch {BATCH}, inference", t["dora"], t["dense"],
            "plain dense", 1.05),
        Row(f"LoRA-wrapped {n}x{n} dense, batch {BATCH}, inference", t["lora"], t["dense"],
            "plain dense", 1.05),
        Row(f"DoRA {n}x{n} train-mode forward (unmerged, factored norm)", t["dora_train"],
            t["dense"], "plain dense"),
    ]

    def miss():  # replaced weights: the merged kernel is rebuilt once
        sdora.data["fc_dora"]["magnitude"] = sdora.data["fc_dora"]["magnitude"].copy()
        return pdora(sdora, x)

    tm = interleaved({"miss": miss, "dense": lambda: p0(s0, x)}, repeat=max(5, repeat // 10))
    rows.append(Row(f"DoRA {n}x{n} inference after a weight change (cache miss)", tm["miss"],
                    tm["dense"], "plain dense"))

    K = s0.data["fc"]["kernel"]
    ad = sdora.data["fc_dora"]
    s = ALPHA / RANK
    ours = _peak_bytes(lambda: dora_column_norm(K, ad["A"], ad["B"], s))
    ref = _peak_bytes(lambda: np.linalg.norm(K + s * (ad["A"] @ ad["B"]), axis=0))
    rows.append(Row(f"DoRA column norm {n}x{n} r={RANK}: peak extra memory", ours / 1024,
                    ref / 1024, "materialized K + s*A@B", 0.05, unit="KiB"))
    return rows


if __name__ == "__main__":
    print(machine())
    print(table(run()))
