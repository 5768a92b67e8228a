"""Memory of half-precision state on NumPy (issue 24; a study beside bench_precision,
whose rows RESULTS.md carries, so benchmarks.run leaves it out): a LLaMA (hidden 512, 8 layers, 8
heads / 4 kv heads, intermediate 1376, vocab 32000: 56M parameters; ``--large``: the
issue's size, hidden 1024, 16 layers, 16 heads, intermediate 2560: 258M) saved by
transformers in bfloat16 and its float32 twin; each figure is the peak RSS growth of a fresh process
(benchmarks.harness.peak_rss_growth, 2 threads):

- loading (``hf.from_pretrained``, values mapped from the file, then every page read
  once) against the checkpoint's bytes (goal <= 1.15x), and ``gd.load`` of the same state
  saved with ``gd.save``;
- NumPy inference (load + one forward of batch 1 x 128) of the bfloat16 model against
  the float32 twin (goal <= 0.55x), and the logits' difference;
- the same with DoRA r=16 on all seven projections (unmerged over bfloat16, merged and
  cached over float32).

``python -m benchmarks.half_memory [--large]``."""
from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.harness import in_child, peak_rss_growth

THREADS = 2
IDS = np.arange(128).reshape(1, 128) * 7 % 32000


def _touch(st) -> float:
    """Read every page of every value once (a strided sum of a view, no copy)."""
    return sum(float(a.ravel(order="K")[::512].astype(np.float32).sum())
               for v in st.data.values() for a in v.values())


def _child(what: str, folder: str) -> None:
    import graphdsl as gd
    from graphdsl import hf

    out: dict = {}
    if what == "load":
        fn = lambda: _touch(hf.from_pretrained(folder)[1])  # noqa: E731
    elif what == "gdload":
        fn = lambda: _touch(gd.load(os.path.join(folder, "m.gdsl"))[1])  # noqa: E731
    else:
        def fn():
            model, st = hf.from_pretrained(folder)
            if what == "dora":
                from graphdsl import dora
                model = dora.adapt(model, ["q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj"], rank=16)
                st = gd.build(model)[0](initial_state=st)
            out["y"] = gd.predict(model, st, {"input_ids": IDS})
    t0 = time.perf_counter()
    grown = peak_rss_growth(fn)
    secs = time.perf_counter() - t0
    if "y" in out:
        np.save(os.path.join(folder, "logits.npy"), out["y"])
    print(grown, secs)


def main() -> None:
    import torch
    import transformers

    import graphdsl as gd
    from graphdsl import hf

    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the children's BLAS
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    size = (dict(hidden_size=1024, intermediate_size=2560, num_hidden_layers=16,
                 num_attention_heads=16, num_key_value_heads=16) if "--large" in sys.argv
            else dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4))
    cfg = transformers.LlamaConfig(vocab_size=32000, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=None, **size)
    ref = transformers.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: os.path.join(tmp, k) for k in ("bfloat16", "float32")}
        ref.save_pretrained(dirs["bfloat16"])
        ref.float().save_pretrained(dirs["float32"])  # the same (widened) weights
        for d in dirs.values():
            gd.save(os.path.join(d, "m.gdsl"), *hf.from_pretrained(d))
        res = {(w, k): [float(x) for x in in_child("benchmarks.half_memory", w, d).split()]
               for w in ("load", "gdload", "forward", "dora") for k, d in dirs.items()}
        logits = {k: np.load(os.path.join(d, "logits.npy")) for k, d in dirs.items()}
        for k, d in dirs.items():
            size = os.path.getsize(os.path.join(d, "model.safetensors"))
            print(f"{k}: checkpoint {size / 2**20:.0f} MiB; from_pretrained + read all "
                  f"{res[('load', k)][0] / size:.2f}x its bytes ({res[('load', k)][1]:.2f} s); "
                  f"gd.load + read all {res[('gdload', k)][0] / size:.2f}x; NumPy load + "
                  f"forward peak {res[('forward', k)][0] / 2**20:.0f} MiB "
                  f"({res[('forward', k)][1]:.2f} s); with DoRA "
                  f"{res[('dora', k)][0] / 2**20:.0f} MiB ({res[('dora', k)][1]:.2f} s)")
    ratio = res[("forward", "bfloat16")][0] / res[("forward", "float32")][0]
    diff = float(np.abs(logits["bfloat16"] - logits["float32"]).max())
    print(f"NumPy inference memory bfloat16 / float32: {ratio:.2f}x (goal <= 0.55x); "
          f"logits max |diff| {diff:.2e} (same weights, both computed in float32)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] != "--large":
        _child(sys.argv[1], sys.argv[2])
    else:
        main()
