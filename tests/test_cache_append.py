"""cache_append on NumPy: a decode loop's cache grows in place (issue 23, item 1: no
per-step copy of the whole cache), values equal np.concatenate's, and no array a caller
holds ever changes."""
from __future__ import annotations

import numpy as np
import pytest

import graphdsl as gd
from graphdsl.errors import GraphDSLError

R = np.random.default_rng(3)


def _run():
    model = gd.cache_append(gd.input("past", (None, 2, None, 4)),
                            gd.input("new", (None, 2, None, 4)))
    return gd.build(model)[1]


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def test_a_decode_loop_appends_in_place_and_copies_o_n_entries():
    run = _run()
    past, bufs, held = np.zeros((1, 2, 0, 4), np.float32), set(), []
    want = past
    for step in range(300):
        new = _f(1, 2, 16 if step == 0 else 1, 4)
        out = run(gd.ModelState(), {"past": past, "new": new})
        want = np.concatenate([want, new], axis=2)
        np.testing.assert_array_equal(out, want)
        if step:  # the step extends the buffer the previous result lives in, or regrows it
            assert np.shares_memory(out, past) or out.base is not past.base
        bufs.add(id(out.base))
        held.append((out, out.copy()))
        past = out
    # capacity doubles: 16 + 299 entries need buffers of 32, 64, ..., 512 entries
    assert len(bufs) == 5
    for arr, copy in held:  # appending after a view never writes inside it
        np.testing.assert_array_equal(arr, copy)


def test_an_older_past_is_copied_not_overwritten():
    run = _run()
    a = run(gd.ModelState(), {"past": _f(1, 2, 3, 4), "new": _f(1, 2, 1, 4)})
    b1_new, b2_new = _f(1, 2, 1, 4), _f(1, 2, 1, 4)
    b1 = run(gd.ModelState(), {"past": a, "new": b1_new})  # in place, after a
    b1_copy = b1.copy()
    b2 = run(gd.ModelState(), {"past": a, "new": b2_new})  # a branch from a: must not clobber b1
    np.testing.assert_array_equal(b1, b1_copy)
    np.testing.assert_array_equal(b2, np.concatenate([a, b2_new], axis=2))
    assert not np.shares_memory(b1, b2)


def test_a_foreign_or_read_only_past_is_copied():
    run = _run()
    past = _f(2, 2, 5, 4)
    past.flags.writeable = False
    new = _f(2, 2, 1, 4)
    out = run(gd.ModelState(), {"past": past, "new": new})
    np.testing.assert_array_equal(out, np.concatenate([past, new], axis=2))
    assert not np.shares_memory(out, past)


def test_mismatched_batch_is_a_graphdsl_error_not_a_broadcast():
    """The buffer write would broadcast a batch of 1 over 2: the run's shape check stops
    it first."""
    run = _run()
    with pytest.raises(GraphDSLError, match=r"other axes(.|\n)*op cache_append"):
        run(gd.ModelState(), {"past": _f(2, 2, 3, 4), "new": _f(1, 2, 1, 4)})


def test_the_decoder_of_a_llama_extends_its_cache_in_place():
    """Two decode steps of a LLaMA on NumPy: each present lives in the buffer of the
    previous one (no copy of the cache), and its values equal the concatenation."""
    from graphdsl import models
    from graphdsl.generate import decoder

    model = models.llama({"model_type": "llama", "vocab_size": 13, "hidden_size": 8,
                             "intermediate_size": 12, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1})
    dec = decoder(model)
    init_fn, run = gd.build(dec)
    feed = {f"past_key_values_{i}_{k}": np.zeros((1, 1, 0, 4), np.float32)
            for i in range(2) for k in ("key", "value")}
    ids = np.array([[1, 2, 3]])
    feed.update(input_ids=ids, attention_mask=np.ones((1, 3), np.int64),
                position_ids=np.arange(3)[None])
    state = init_fn(feed)
    outs = []
    for t in range(3):
        out = run(state, feed)
        outs.append(out)
        feed.update({f"past_key_values_{i}_{k}": out[f"present.{i}.{k}"]
                     for i in range(2) for k in ("key", "value")})
        feed.update(input_ids=np.array([[4 + t]]), position_ids=np.array([[3 + t]]),
                    attention_mask=np.ones((1, 4 + t), np.int64))
    for i in range(2):
        for k in ("key", "value"):
            a, b, c = (o[f"present.{i}.{k}"] for o in outs)
            assert a.shape[2] == 3 and b.shape[2] == 4 and c.shape[2] == 5
            assert np.shares_memory(a, b) and np.shares_memory(b, c)
            np.testing.assert_array_equal(c[:, :, :4], b)
            np.testing.assert_array_equal(b[:, :, :3], a)
