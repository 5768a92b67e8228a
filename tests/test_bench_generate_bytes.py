"""The physical limit of bench_generate counts the bytes a decode step reads: checked by
hand on a tiny LLaMA (untied head, embedding read one row) and GPT-2 (head tied to the
token table, learned positions read one row). No timing here."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import graphdsl as gd  # noqa: E402
from benchmarks.bench_generate import step_bytes  # noqa: E402
from graphdsl import models  # noqa: E402


def _state(model):
    return gd.build(model)[0]({"input_ids": np.zeros((1, 4), np.int64)})


def test_llama_step_bytes_by_hand():
    v, h, f, layers, heads, kv = 50, 16, 24, 2, 4, 2
    model = models.llama({"model_type": "llama", "vocab_size": v, "hidden_size": h,
                          "intermediate_size": f, "num_hidden_layers": layers,
                          "num_attention_heads": heads, "num_key_value_heads": kv})
    hd = h // heads
    per_layer = (h * h + 2 * h * kv * hd + h * h + 3 * h * f + 2 * h)  # q,k,v,o, mlp, 2 norms
    weights = 4 * (h + layers * per_layer + h + h * v)  # one embedding row, final norm, head
    cache = 4 * layers * 2 * kv * 10 * hd
    assert step_bytes(model, _state(model), past=10) == weights + cache


def test_gpt2_tied_head_reads_the_whole_table():
    v, h, layers, heads, npos = 40, 8, 1, 2, 32
    model = models.gpt2({"model_type": "gpt2", "vocab_size": v, "n_embd": h,
                         "n_layer": layers, "n_head": heads, "n_positions": npos})
    st = _state(model)
    every = sum(np.asarray(a).nbytes for vals in st.data.values() for a in vals.values())
    # wte: the tied head reads it whole; wpe: one row of its npos
    expected = every - 4 * npos * h + 4 * h + 4 * layers * 2 * heads * 7 * (h // heads)
    assert step_bytes(model, st, past=7) == expected
