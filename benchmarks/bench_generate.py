"""Greedy generation with a key/value cache, side by side in one process with 2 threads:
``gd.generate`` on NumPy, torch and ONNX Runtime against transformers' ``generate`` (its
dynamic cache, default attention) on the same weights, on the user's path
(save_pretrained, then ``hf.from_pretrained``). LLaMA hidden 512, 4 layers, 8 heads / 4
kv heads, intermediate 1376, vocab 32000, and a GPT-2 of the same size (512, 4 layers, 8
heads, vocab 32000); batch 1, prompt 16, 256 new tokens (``--quick``: 32). Rows: time
per token (the goal: tokens/s >= 1.5x transformers' on NumPy, >= 1.2x on torch, >= 2x on
onnxruntime), the cost of the 256th token against the 16th (flat: <= 1.3x), and batch 8
left-padded against batch 1 (tokens/s >= 5x: time per token of the batch <= 0.2x), and
the physical limit beside them: the bytes one step must read (every parameter once, an
embedding's one row, the cache at the last token) over the memory bandwidth a 1-row
float32 product reaches here on 2 threads over 512 MiB (well past the last-level cache),
with each backend's time per token against it."""
from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.harness import Row, machine, table

THREADS = 2


#: the two families of the issue at the same size: hidden 512, 4 layers, 8 heads, vocab 32000
FAMILIES = {
    "LLaMA 512x4 layers, vocab 32000, prompt 16": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4)),
    "GPT-2 512x4 layers, vocab 32000, prompt 16": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=32000, n_embd=512, n_layer=4, n_head=8, n_positions=1024)),
}


def bandwidth(mib: int = 512, reps: int = 7) -> float:
    """Bytes per second a 1-row float32 product ``x @ W`` reads from memory here (the
    kernel a decode step's dense layers run), W of ``mib`` MiB; median of ``reps``."""
    w = np.ones((1024, mib * 256), np.float32)
    x = np.ones((1, 1024), np.float32)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - t0)
    return w.nbytes / statistics.median(times)


def step_bytes(model, state, past: int) -> int:
    """Bytes one decode step of batch 1 must read: every state value once, except that an
    embedding reads one row (its whole table where a tied output layer reads it as the
    head), plus each layer's cached keys and values at ``past`` positions (float32)."""
    import graphdsl as gd
    from graphdsl.generate import decoder
    from graphdsl.node import topo_order

    nodes = topo_order(model)
    tables = {n.name for n in nodes if n.op == "embedding"}
    tied = {n.attrs["embedding"] for n in nodes if n.op == "tied_dense"}
    total = 0
    for layer, values in state.data.items():
        for v in values.values():
            a = np.asarray(v)
            one_row = layer in tables and layer not in tied
            total += a.nbytes // a.shape[0] if one_row else a.nbytes
    cache = sum(2 * shape[1] * past * shape[3] * 4
                for name, shape in gd.get_inputs(decoder(model)).items()
                if name.startswith("past_key_values_") and name.endswith("_key"))
    return total + cache


def _setup(path: str, family: str):
    import torch
    import transformers

    from graphdsl import hf

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    cfg_name, cls_name, kw = FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**kw, bos_token_id=None, eos_token_id=None,
                                          pad_token_id=None)
    ref = getattr(transformers, cls_name)(cfg).eval()
    ref.save_pretrained(path)
    model, state = hf.from_pretrained(path)
    return ref, model, state


def _timed(fn, ids, mask, n: int) -> tuple[float, list[float], np.ndarray]:
    """(total seconds, per-token step times, tokens) of one generation."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = fn(ids, mask, n, lambda tok: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return total, list(np.diff([t0, *stamps])), out


def _runners(ref, model, state) -> dict:
    import torch

    import graphdsl as gd

    class Streamer:  # transformers calls put() with the prompt first, then each token
        def __init__(self, cb):
            self.cb, self.first = cb, True

        def put(self, value):
            if not self.first:
                self.cb(value)
            self.first = False

        def end(self):
            pass

    def hf_gen(ids, mask, n, cb):
        with torch.no_grad():
            return ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                streamer=Streamer(cb)).numpy()

    def ours(backend):
        return lambda ids, mask, n, cb: gd.generate(model, state, ids, n, attention_mask=mask,
                                                    backend=backend, stream=cb)

    return {"numpy": ours("numpy"), "torch": ours("torch"),
            "onnxruntime": ours("onnxruntime"), "hf": hf_gen}


def run(quick: bool = False, families: tuple[str, ...] | None = None) -> list[Row]:
    rows: list[Row] = []
    for name in families or tuple(FAMILIES):
        rows += _family_rows(name, quick)
    return rows


def _family_rows(name: str, quick: bool) -> list[Row]:
    from threadpoolctl import threadpool_limits

    n, reps = (32, 1) if quick else (256, 3)
    with tempfile.TemporaryDirectory() as path:
        ref, model, state = _setup(path, name)
    f = _runners(ref, model, state)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 32000, (1, 16))
    ones = np.ones_like(ids)
    big = rng.integers(0, 32000, (8, 16))
    big_mask = np.ones_like(big)
    for r in range(8):  # left padding: row r has r padding tokens
        big_mask[r, :r] = 0
    per: dict[str, list] = {k: [] for k in f}
    with threadpool_limits(THREADS):
        outs = {k: fn(ids, ones, 8, lambda t: None) for k, fn in f.items()}  # warm
        for k in ("numpy", "torch", "onnxruntime"):
            np.testing.assert_array_equal(outs[k], outs["hf"])
        for _ in range(reps):
            for k, fn in f.items():
                per[k].append(_timed(fn, ids, ones, n))
        batch = {k: [_timed(f[k], big, big_mask, n)[0] for _ in range(reps)]
                 for k in ("numpy", "torch", "onnxruntime")}
    tok = {k: statistics.median(t[0] for t in v) / n for k, v in per.items()}

    def cost(k: str, i: int) -> float:  # median over runs of the median of 5 steps
        return statistics.median(statistics.median(t[1][i - 3:i + 2]) for t in per[k])

    goals = {"numpy": round(1 / 1.5, 3), "torch": round(1 / 1.2, 3), "onnxruntime": 0.5}
    rows = [Row(f"{name}: {k} gd.generate, time per token ({n} new)", tok[k], tok["hf"],
                "transformers generate", goal) for k, goal in goals.items()]
    for k in ("numpy", "torch", "onnxruntime", "hf"):
        rows.append(Row(f"{name}: {k} token {n} vs token 16", cost(k, n), cost(k, 16),
                        "the 16th token", 1.3 if k != "hf" else None))
    for k in goals:
        t8 = statistics.median(batch[k]) / (8 * n)
        rows.append(Row(f"{name}: {k} batch 8 (left-padded) time per token", t8, tok[k],
                        "batch 1", 0.2))
    with threadpool_limits(THREADS):
        bw = bandwidth()
    nbytes = step_bytes(model, state, ids.shape[1] + n - 1)
    limit = nbytes / bw
    label = f"{nbytes / 1e6:.1f} MB / {bw / 1e9:.1f} GB/s"
    for k in (*goals, "hf"):  # the step of token n, whose cache the limit counts
        rows.append(Row(f"{name}: {k} token {n} vs the physical limit ({label})",
                        cost(k, n), limit, "bytes read / bandwidth"))
    return rows


if __name__ == "__main__":
    print(machine())
    print(table(run("--quick" in sys.argv)))
